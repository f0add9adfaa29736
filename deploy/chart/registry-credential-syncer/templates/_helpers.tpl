{{/* Names. */}}
{{- define "rcs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rcs.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "rcs.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "rcs.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rcs.serviceAccountName" -}}
{{- default (include "rcs.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Selector labels: immutable on a Deployment, so only what never changes between upgrades
     (no version, no chart, no image tag). */}}
{{- define "rcs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rcs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rcs.labels" -}}
{{ include "rcs.selectorLabels" . }}
app.kubernetes.io/component: syncer
app.kubernetes.io/part-of: registry-credential-syncer
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rcs.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* TOML. Helm's toToml writes every number as a float (kv_version = 2.0), which the syncer's
     strict validation refuses, so the config is rendered here: strings through toJson (JSON
     escapes are valid TOML basic-string escapes), integral numbers as integers, scalars before
     sub-tables, arrays of tables as [[...]], nulls dropped (so --set key=null removes a key). */}}
{{- define "rcs.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "rcs.toml.value" -}}
{{- if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "bool" . -}}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (floor .) (float64 .) -}}{{ printf "%d" (int64 .) }}{{- else -}}{{ printf "%v" . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) -}}{{ printf "%d" . }}
{{- else if kindIs "slice" . -}}
[{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "rcs.toml.value" $v }}{{ end -}}]
{{- else -}}{{ fail (printf "config: cannot write %v (%s) as TOML" . (kindOf .)) }}
{{- end -}}
{{- end -}}

{{- define "rcs.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) (kindIs "map" (first .)) -}}true{{- end -}}
{{- end -}}

{{/* dict "path" "a.b" "table" MAP */}}
{{- define "rcs.toml.table" -}}
{{- $path := .path -}}
{{- range $k, $v := .table }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "rcs.toml.isTableArray" $v)) }}
{{ include "rcs.toml.key" $k }} = {{ include "rcs.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- $sub := ternary (include "rcs.toml.key" $k) (printf "%s.%s" $path (include "rcs.toml.key" $k)) (eq $path "") }}
{{- if kindIs "map" $v }}

[{{ $sub }}]
{{- include "rcs.toml.table" (dict "path" $sub "table" $v) }}
{{- else if include "rcs.toml.isTableArray" $v }}
{{- range $v }}

[[{{ $sub }}]]
{{- include "rcs.toml.table" (dict "path" $sub "table" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The config the chart owns: vault.auth, metrics.listen, leader_election. */}}
{{- define "rcs.configData" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $auth := dict "method" .Values.vaultAuth.method -}}
{{- if .Values.vaultAuth.mount }}{{ $_ := set $auth "mount" .Values.vaultAuth.mount }}{{ end -}}
{{- $va := .Values.vaultAuth -}}
{{- if eq $va.method "token" -}}
{{- $_ := set $auth "token_file" "/var/run/secrets/vault/token" -}}
{{- else if eq $va.method "approle" -}}
{{- $_ := set $auth "role_id" (required "vaultAuth.roleId is required for method approle" $va.roleId) -}}
{{- $_ := set $auth "secret_id_file" "/var/run/secrets/vault/secret-id" -}}
{{- else if eq $va.method "cert" -}}
{{- if $va.role }}{{ $_ := set $auth "role" $va.role }}{{ end -}}
{{- $_ := set $auth "client_cert" "/var/run/secrets/vault/client.crt" -}}
{{- $_ := set $auth "client_key" "/var/run/secrets/vault/client.key" -}}
{{- else -}}
{{- $_ := set $auth "role" $va.role -}}
{{- $_ := set $auth "jwt_file" "/var/run/secrets/vault/token" -}}
{{- end -}}
{{- $vault := default (dict) (get $cfg "vault") -}}
{{- $_ := set $vault "auth" $auth -}}
{{- if include "rcs.vaultCA" . }}{{ $_ := set $vault "ca_cert" "/var/run/secrets/vault-ca/ca.crt" }}{{ end -}}
{{- $_ := set $cfg "vault" $vault -}}
{{- if eq .Values.mode "deployment" -}}
{{- $_ := set $cfg "metrics" (merge (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) (default (dict) (get $cfg "metrics"))) -}}
{{- $le := dict "enabled" .Values.leaderElection.enabled -}}
{{- if .Values.leaderElection.enabled -}}
{{- $le = dict "enabled" true "namespace" .Release.Namespace "name" (include "rcs.fullname" .) "lease_duration" .Values.leaderElection.leaseDuration "renew_period" .Values.leaderElection.renewPeriod -}}
{{- end -}}
{{- $_ := set $cfg "leader_election" $le -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* The effective config as a map: parsed from configToml, or the structured values. */}}
{{- define "rcs.config" -}}
{{- if .Values.configToml -}}
{{- $parsed := fromToml .Values.configToml -}}
{{- /* fromToml reports a parse error as {"Error": "..."} instead of failing. */ -}}
{{- if hasKey $parsed "Error" }}{{ fail (printf "configToml: not valid TOML: %v" $parsed.Error) }}{{ end -}}
{{- toJson $parsed -}}
{{- else -}}{{ include "rcs.configData" . }}{{- end -}}
{{- end -}}

{{- define "rcs.configToml" -}}
{{- if .Values.configToml -}}
{{ .Values.configToml }}
{{- else -}}
# Rendered by the registry-credential-syncer chart from .Values.config (every key: config.example.toml).
{{ include "rcs.toml.table" (dict "path" "" "table" (include "rcs.configData" . | fromJson)) }}
{{- end -}}
{{- end -}}

{{/* Whether a CA bundle for Vault's certificate is mounted (vaultCA.secretName/configMapName). */}}
{{- define "rcs.vaultCA" -}}
{{- if and .Values.vaultCA.secretName .Values.vaultCA.configMapName -}}
{{- fail "vaultCA: set secretName or configMapName, not both" -}}
{{- end -}}
{{- if or .Values.vaultCA.secretName .Values.vaultCA.configMapName }}true{{ end -}}
{{- end -}}

{{/* Vault auth methods whose credential comes from vaultAuth.existingSecret. */}}
{{- define "rcs.vaultSecretAuth" -}}
{{- if has .Values.vaultAuth.method (list "token" "approle" "cert") }}true{{ end -}}
{{- end -}}
