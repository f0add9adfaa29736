{{/* The pod, shared by the Deployment and the CronJob (the CronJob's has no ports/probes). */}}
{{- define "rcs.pod" -}}
metadata:
  labels:
    {{- include "rcs.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}{{ toYaml . | nindent 4 }}{{ end }}
  annotations:
    # A config change rolls the pods (the ConfigMap's name is stable for helm upgrade).
    checksum/config: {{ include "rcs.configToml" . | sha256sum }}
    {{- with .Values.podAnnotations }}{{ toYaml . | nindent 4 }}{{ end }}
spec:
  {{- if eq .Values.mode "cronjob" }}
  restartPolicy: Never
  {{- end }}
  serviceAccountName: {{ include "rcs.serviceAccountName" . }}
  # Tokens are projected explicitly below (API access + a Vault-audience token).
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- if eq .Values.mode "deployment" }}
  terminationGracePeriodSeconds: 30
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets: {{ toYaml . | nindent 4 }}
  {{- end }}
  securityContext: {{ toYaml .Values.podSecurityContext | nindent 4 }}
  {{- with .Values.nodeSelector }}
  nodeSelector: {{ toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations: {{ toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity: {{ toYaml . | nindent 4 }}
  {{- end }}
  {{- if and (eq .Values.mode "deployment") (gt (int .Values.replicas) 1) }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels: {{ include "rcs.selectorLabels" . | nindent 10 }}
  {{- end }}
  containers:
    - name: syncer
      image: {{ include "rcs.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["--config", "/etc/syncer/config.toml"{{ if eq .Values.mode "cronjob" }}, "--once"{{ end }}, "--log-format", "json"]
      env:
        - name: SYNCER_CONFIG
          value: /etc/syncer/config.toml
        # Leader-election identity ([leader_election] identity defaults to $POD_NAME).
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- with .Values.extraEnv }}{{ toYaml . | nindent 8 }}{{ end }}
      {{- if eq .Values.mode "deployment" }}
      ports:
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        initialDelaySeconds: 10
        periodSeconds: 20
        timeoutSeconds: 5
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        initialDelaySeconds: 5
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 3
      {{- end }}
      resources: {{ toYaml .Values.resources | nindent 8 }}
      securityContext: {{ toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/syncer
          readOnly: true
        - name: vault-token
          mountPath: /var/run/secrets/vault
          readOnly: true
        {{- if include "rcs.vaultCA" . }}
        - name: vault-ca
          mountPath: /var/run/secrets/vault-ca
          readOnly: true
        {{- end }}
        - name: kube-api-access
          mountPath: /var/run/secrets/kubernetes.io/serviceaccount
          readOnly: true
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "rcs.fullname" . }}-config
    {{- $va := .Values.vaultAuth }}
    {{- if include "rcs.vaultSecretAuth" . }}
    {{- $secret := required (printf "vaultAuth.existingSecret.name is required for method %s" $va.method) $va.existingSecret.name }}
    # The Vault credential from an existing Secret, as read-only files (never environment
    # variables): a token (token), a secret ID (approle) or a TLS client cert and key (cert).
    - name: vault-token
      secret:
        secretName: {{ $secret }}
        defaultMode: 0400
        items:
          {{- if eq $va.method "cert" }}
          - key: {{ $va.existingSecret.certKey }}
            path: client.crt
          - key: {{ $va.existingSecret.keyKey }}
            path: client.key
          {{- else }}
          - key: {{ $va.existingSecret.key }}
            path: {{ ternary "token" "secret-id" (eq $va.method "token") }}
          {{- end }}
    {{- else }}
    # Short-lived token for Vault's kubernetes/jwt auth, with the role's audience; kubelet
    # rotates it before expiry and the syncer re-reads it at every login.
    - name: vault-token
      projected:
        sources:
          - serviceAccountToken:
              audience: {{ $va.audience }}
              expirationSeconds: {{ $va.tokenExpirationSeconds }}
              path: token
    {{- end }}
    {{- if include "rcs.vaultCA" . }}
    # The CA bundle that verifies Vault's certificate ([vault] ca_cert).
    - name: vault-ca
      {{- if .Values.vaultCA.secretName }}
      secret:
        secretName: {{ .Values.vaultCA.secretName }}
        items:
          - key: {{ .Values.vaultCA.key }}
            path: ca.crt
      {{- else }}
      configMap:
        name: {{ .Values.vaultCA.configMapName }}
        items:
          - key: {{ .Values.vaultCA.key }}
            path: ca.crt
      {{- end }}
    {{- end }}
    # What automountServiceAccountToken would mount, made explicit: API token, CA, namespace.
    - name: kube-api-access
      projected:
        sources:
          - serviceAccountToken:
              expirationSeconds: 3607
              path: token
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
          - downwardAPI:
              items:
                - path: namespace
                  fieldRef:
                    fieldPath: metadata.namespace
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: 16Mi
{{- end -}}
