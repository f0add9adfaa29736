"""Registry credential syncer: Vault -> merged, login-verified dockerconfigjson secrets."""

__version__ = "0.1.0"
