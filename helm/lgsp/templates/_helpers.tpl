{{/* Names. Truncated to leave room for the "-control" / "-migrate" suffixes within 63 characters. */}}
{{- define "lgsp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "lgsp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lgsp.dataName" -}}
{{- printf "%s-data" (include "lgsp.fullname" .) -}}
{{- end -}}

{{- define "lgsp.controlName" -}}
{{- printf "%s-control" (include "lgsp.fullname" .) -}}
{{- end -}}

{{- define "lgsp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels. Call with (dict "ctx" $ "component" "data"). */}}
{{- define "lgsp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lgsp.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lgsp.labels" -}}
helm.sh/chart: {{ include "lgsp.chart" .ctx }}
{{ include "lgsp.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: lgsp
{{- end -}}

{{- define "lgsp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The external base URL shared by both planes (token issuer). */}}
{{- define "lgsp.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- trimSuffix "/" .Values.publicUrl -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.ingress.tls))) (first .Values.ingress.hosts) -}}
{{- else -}}
{{- $port := .Values.dataPlane.service.port | int -}}
{{- printf "http://%s.%s.svc" (include "lgsp.dataName" .) .Release.Namespace -}}
{{- if ne $port 80 }}:{{ $port }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* Where LGSP_SECRET_KEY and LGSP_DATABASE_URL come from. */}}
{{- define "lgsp.secretKeyRef" -}}
name: {{ .Values.secrets.existingSecret | default (include "lgsp.fullname" .) }}
key: {{ ternary .Values.secrets.existingSecretKey "secret-key" (not (empty .Values.secrets.existingSecret)) }}
{{- end -}}

{{- define "lgsp.databaseUrlRef" -}}
name: {{ .Values.database.existingSecret | default (include "lgsp.fullname" .) }}
key: {{ ternary .Values.database.existingSecretKey "database-url" (not (empty .Values.database.existingSecret)) }}
{{- end -}}

{{/* Refuse configurations that cannot work on Kubernetes. */}}
{{- define "lgsp.validate" -}}
{{- if and (not .Values.database.url) (not .Values.database.existingSecret) -}}
{{- fail "lgsp: set database.url (postgresql://user:pass@host:5432/db) or database.existingSecret. SQLite, the embedded default, is not supported on Kubernetes: pods do not share a disk." -}}
{{- end -}}
{{- if and .Values.database.url .Values.database.existingSecret -}}
{{- fail "lgsp: set only one of database.url and database.existingSecret." -}}
{{- end -}}
{{- if hasPrefix "sqlite" (lower .Values.database.url) -}}
{{- fail "lgsp: database.url is SQLite, which is not supported on Kubernetes; use PostgreSQL." -}}
{{- end -}}
{{- if and .Values.secrets.create .Values.secrets.existingSecret -}}
{{- fail "lgsp: set only one of secrets.existingSecret and secrets.create." -}}
{{- end -}}
{{- if not (or .Values.secrets.create .Values.secrets.existingSecret) -}}
{{- fail "lgsp: the master secret is required: set secrets.existingSecret (recommended) or, for development, secrets.create=true with secrets.secretKey." -}}
{{- end -}}
{{- if and .Values.secrets.create (not .Values.secrets.secretKey) -}}
{{- fail "lgsp: secrets.create=true needs secrets.secretKey (e.g. --set secrets.secretKey=$(openssl rand -base64 48))." -}}
{{- end -}}
{{- end -}}

{{/* Environment of every LGSP container. Integers pass through int64: Helm reads
     numbers from values files as float64, which print as 1e+06 when large. */}}
{{- define "lgsp.env" -}}
- name: LGSP_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "lgsp.databaseUrlRef" . | nindent 6 }}
- name: LGSP_SECRET_KEY
  valueFrom:
    secretKeyRef:
      {{- include "lgsp.secretKeyRef" . | nindent 6 }}
- name: LGSP_PUBLIC_URL
  value: {{ include "lgsp.publicUrl" . | quote }}
- name: LGSP_TOKEN_TTL
  value: {{ .Values.config.tokenTtl | int64 | quote }}
- name: LGSP_CONFIG_POLL_SECONDS
  value: {{ .Values.config.configPollSeconds | quote }}
- name: LGSP_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: LGSP_MAX_BODY_BYTES
  value: {{ .Values.config.maxBodyBytes | int64 | quote }}
- name: LGSP_TOKEN_MAX_LIFETIME
  value: {{ .Values.config.tokenMaxLifetime | int64 | quote }}
- name: LGSP_EGRESS_ALLOW
  value: {{ .Values.config.egressAllow | quote }}
- name: LGSP_HOME
  value: /tmp/lgsp
- name: LGSP_TRUSTED_PROXIES
  value: {{ .Values.clientCertificates.trustedProxies | quote }}
- name: LGSP_CLIENT_CERT_HEADER
  value: {{ .Values.clientCertificates.header | quote }}
{{- if .Values.clientCertificates.caSecret }}
- name: LGSP_TLS_CLIENT_CA_FILE
  value: /etc/lgsp/client-ca/ca.crt
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by the Deployments and the migration Job. */}}
{{- define "lgsp.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "lgsp.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end -}}

{{/* The client CA Secret (clientCertificates.caSecret), for the Deployments. */}}
{{- define "lgsp.clientCaVolume" -}}
{{- if .Values.clientCertificates.caSecret }}
- name: client-ca
  secret:
    secretName: {{ .Values.clientCertificates.caSecret }}
{{- end }}
{{- end -}}

{{/* Where the client CA Secret is mounted: LGSP_TLS_CLIENT_CA_FILE. */}}
{{- define "lgsp.clientCaMount" -}}
{{- if .Values.clientCertificates.caSecret }}
- name: client-ca
  mountPath: /etc/lgsp/client-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Restarts pods when the chart-made Secret changes. */}}
{{- define "lgsp.checksumAnnotation" -}}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}
