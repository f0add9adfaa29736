# Vault policy for registry-credential-syncer: read registry logins, nothing else.
#
#   vault policy write registry-syncer deploy/vault/policy.hcl
#
# KV v2 mounted at "secret/": `vault kv put secret/registries/ngc ...` stores the data at
# secret/data/registries/ngc, which is what the syncer reads (the current version, whose number
# it reports as syncer_credential_version). It never lists, writes or deletes. With KV v1 the
# path is "secret/registries/*" (and no metadata rule is needed).
#
# Vault change detection ([vault] poll_interval, on by default) reads each credential's
# metadata (its current version, never the data) at secret/metadata/registries/*; without
# that rule rotations wait for the next full cycle.
#
# Renewing, looking up and revoking its own token are granted by Vault's built-in "default"
# policy, which Kubernetes and AppRole logins attach unless the role sets
# token_no_default_policy=true.
path "secret/data/registries/*" {
  capabilities = ["read"]
}

path "secret/metadata/registries/*" {
  capabilities = ["read"]
}
