"""One login request per Vault auth method, as a table the token session looks up.

Each function sends exactly one login and returns Vault's answer; the session
turns it into a token. ``secret(path, what)`` reads a credential file (regular
file, bounded size) and registers its content for scrubbing, so nothing read here
can reach a message.
"""

from __future__ import annotations

from collections.abc import Callable

import hvac

from syncer.config import VaultAuthSettings

ReadSecret = Callable[[str, str], str]
"""``secret(path, what)``: the content of a credential file; raises ``VaultError`` if unusable."""

Login = Callable[[hvac.Client, VaultAuthSettings, ReadSecret], object]


def _approle(client: hvac.Client, auth: VaultAuthSettings, secret: ReadSecret) -> object:
    return client.auth.approle.login(
        role_id=auth.role_id, secret_id=secret(auth.secret_id_file, "secret ID"),
        use_token=False, mount_point=auth.mount_path,
    )


def _kubernetes(client: hvac.Client, auth: VaultAuthSettings, secret: ReadSecret) -> object:
    return client.auth.kubernetes.login(
        role=auth.role, jwt=secret(auth.jwt_file, "ServiceAccount token"),
        use_token=False, mount_point=auth.mount_path,
    )


def _jwt(client: hvac.Client, auth: VaultAuthSettings, secret: ReadSecret) -> object:
    # Vault validates the JWT itself (jwt_validation_pubkeys, JWKS or OIDC discovery):
    # no call back to the cluster's TokenReview API, which a Vault outside it cannot reach.
    return client.auth.jwt.jwt_login(
        role=auth.role, jwt=secret(auth.jwt_file, "JWT"), use_token=False, path=auth.mount_path,
    )


def _cert(client: hvac.Client, auth: VaultAuthSettings, secret: ReadSecret) -> object:
    # The proof is the TLS handshake: make_client gives the adapter the pair, so every
    # request (renew-self too, which Vault checks against the login certificate) carries
    # it. hvac's own cert.login insists on a CA argument and guesses at PEM-or-path; this
    # is the same POST without the guessing. Both files are checked first (regular,
    # bounded) because OpenSSL would block on a FIFO.
    secret(auth.client_cert, "client certificate")
    secret(auth.client_key, "client key")
    body = {"name": auth.role} if auth.role else {}
    return client.adapter.post(f"/v1/auth/{auth.mount_path}/login", json=body)


LOGINS: dict[str, Login] = {
    "approle": _approle,
    "kubernetes": _kubernetes,
    "jwt": _jwt,
    "cert": _cert,
}
"""Auth method -> its login request. ``token`` has none: the token is supplied."""
