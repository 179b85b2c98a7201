{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "nextbest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already contains it. */}}
{{- define "nextbest.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nextbest.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on everything. */}}
{{- define "nextbest.labels" -}}
helm.sh/chart: {{ include "nextbest.chart" . }}
{{ include "nextbest.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "nextbest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nextbest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per component: include "nextbest.componentSelector" (list . "worker") */}}
{{- define "nextbest.componentSelector" -}}
{{ include "nextbest.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "nextbest.componentLabels" -}}
{{ include "nextbest.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "nextbest.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nextbest.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is given (immutable), else repository:tag */}}
{{- define "nextbest.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/*
The settings of one component: include "nextbest.env" (list . "worker"|"api").
Secrets never become environment variables: each existing Secret is mounted
read-only under /etc/nextbest and named by a NEXTBEST_*_FILE setting, read at
start-up (README: Security). The API gets no Kafka settings at all.
*/}}
{{- define "nextbest.env" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $v := $root.Values }}
{{- if eq $component "worker" }}
- name: NEXTBEST_KAFKA_BOOTSTRAP
  value: {{ $v.kafka.bootstrap | quote }}
- name: NEXTBEST_KAFKA_SECURITY_PROTOCOL
  value: {{ $v.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
{{- $_ := required "kafka.sasl.existingSecret is required for SASL" $v.kafka.sasl.existingSecret }}
- name: NEXTBEST_KAFKA_SASL_MECHANISM
  value: {{ $v.kafka.sasl.mechanism | quote }}
- name: NEXTBEST_KAFKA_SASL_USERNAME
  value: {{ required "kafka.sasl.username is required for SASL" $v.kafka.sasl.username | quote }}
- name: NEXTBEST_KAFKA_SASL_PASSWORD_FILE
  value: /etc/nextbest/secrets/kafka-sasl/password
{{- end }}
{{- if $v.kafka.tls.existingSecret }}
{{- if not (has $v.kafka.securityProtocol (list "SSL" "SASL_SSL")) }}
{{- fail "kafka.tls.existingSecret needs kafka.securityProtocol SSL or SASL_SSL" }}
{{- end }}
- name: NEXTBEST_KAFKA_SSL_CAFILE
  value: /etc/nextbest/kafka-tls/{{ $v.kafka.tls.caKey }}
{{- if $v.kafka.tls.certKey }}
- name: NEXTBEST_KAFKA_SSL_CERTFILE
  value: /etc/nextbest/kafka-tls/{{ $v.kafka.tls.certKey }}
- name: NEXTBEST_KAFKA_SSL_KEYFILE
  value: /etc/nextbest/kafka-tls/{{ required "kafka.tls.keyKey is required with kafka.tls.certKey" $v.kafka.tls.keyKey }}
{{- if $v.kafka.tls.keyPasswordKey }}
- name: NEXTBEST_KAFKA_SSL_KEY_PASSWORD_FILE
  value: /etc/nextbest/kafka-tls/{{ $v.kafka.tls.keyPasswordKey }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.erasure.existingSecret }}
- name: NEXTBEST_ERASURE_SECRET_FILE
  value: /etc/nextbest/secrets/erasure/secret
{{- end }}
{{- end }}
{{- if $v.redis.existingSecret }}
- name: NEXTBEST_REDIS_URL_FILE
  value: /etc/nextbest/secrets/redis-url/url
{{- else }}
- name: NEXTBEST_REDIS_URL
  value: {{ $v.redis.url | quote }}
{{- end }}
{{- if $v.redis.tls.existingSecret }}
{{- if and (not $v.redis.existingSecret) (not (hasPrefix "rediss://" $v.redis.url)) }}
{{- fail "redis.tls.existingSecret needs a rediss:// redis.url" }}
{{- end }}
- name: NEXTBEST_REDIS_SSL_CA_CERTS
  value: /etc/nextbest/redis-tls/{{ $v.redis.tls.caKey }}
{{- end }}
{{- $user := index $v.redis $component }}
{{- if $user.username }}
- name: NEXTBEST_REDIS_USERNAME
  value: {{ $user.username | quote }}
{{- end }}
{{- if $user.existingSecret }}
- name: NEXTBEST_REDIS_PASSWORD_FILE
  value: /etc/nextbest/secrets/redis-password/password
{{- end }}
{{- if eq $component "api" }}
{{- if $v.api.tokens.existingSecret }}
- name: NEXTBEST_API_TOKENS_FILE
  value: /etc/nextbest/secrets/api-tokens/tokens
{{- end }}
{{- if or $v.api.widgetTokens.publicKeys $v.api.widgetTokens.existingSecret }}
- name: NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE
  value: /etc/nextbest/widget-tokens/public-keys.pem
- name: NEXTBEST_WIDGET_TOKEN_AUDIENCE
  value: {{ $v.api.widgetTokens.audience | quote }}
- name: NEXTBEST_WIDGET_TOKEN_MAX_TTL
  value: {{ $v.api.widgetTokens.maxTtl | quote }}
{{- end }}
{{- end }}
- name: NEXTBEST_TOPIC_PARTITIONS
  value: {{ $v.topicPartitions | quote }}
{{- if and $v.rules (eq $component "worker") }}
- name: NEXTBEST_RULES
  value: /etc/nextbest/rules/rules.toml
{{- end }}
{{- range $name, $value := $v.settings }}
- name: NEXTBEST_{{ $name | upper }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Read-only mounts of one component: include "nextbest.configMounts" (list . "worker"|"api") */}}
{{- define "nextbest.configMounts" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $v := $root.Values }}
- name: tmp
  mountPath: /tmp
{{- if and $v.rules (eq $component "worker") }}
- name: rules
  mountPath: /etc/nextbest/rules
  readOnly: true
{{- end }}
{{- if eq $component "worker" }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
- name: kafka-sasl
  mountPath: /etc/nextbest/secrets/kafka-sasl
  readOnly: true
{{- end }}
{{- if $v.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/nextbest/kafka-tls
  readOnly: true
{{- end }}
{{- if $v.erasure.existingSecret }}
- name: erasure
  mountPath: /etc/nextbest/secrets/erasure
  readOnly: true
{{- end }}
{{- end }}
{{- if $v.redis.existingSecret }}
- name: redis-url
  mountPath: /etc/nextbest/secrets/redis-url
  readOnly: true
{{- end }}
{{- if $v.redis.tls.existingSecret }}
- name: redis-tls
  mountPath: /etc/nextbest/redis-tls
  readOnly: true
{{- end }}
{{- if (index $v.redis $component).existingSecret }}
- name: redis-password
  mountPath: /etc/nextbest/secrets/redis-password
  readOnly: true
{{- end }}
{{- if eq $component "api" }}
{{- if $v.api.tokens.existingSecret }}
- name: api-tokens
  mountPath: /etc/nextbest/secrets/api-tokens
  readOnly: true
{{- end }}
{{- if or $v.api.widgetTokens.publicKeys $v.api.widgetTokens.existingSecret }}
- name: widget-tokens
  mountPath: /etc/nextbest/widget-tokens
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* A Secret's one key as a file, readable by the pod's group only. */}}
{{- define "nextbest.secretVolume" -}}
{{- $name := index . 0 }}
{{- $secret := index . 1 }}
{{- $key := index . 2 }}
{{- $path := index . 3 }}
- name: {{ $name }}
  secret:
    secretName: {{ $secret }}
    defaultMode: 0440
    items:
      - key: {{ $key }}
        path: {{ $path }}
{{- end }}

{{- define "nextbest.configVolumes" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $v := $root.Values }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and $v.rules (eq $component "worker") }}
- name: rules
  configMap:
    name: {{ include "nextbest.fullname" $root }}-rules
{{- end }}
{{- if eq $component "worker" }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
{{ include "nextbest.secretVolume" (list "kafka-sasl" $v.kafka.sasl.existingSecret $v.kafka.sasl.passwordKey "password") }}
{{- end }}
{{- if $v.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ $v.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if $v.erasure.existingSecret }}
{{ include "nextbest.secretVolume" (list "erasure" $v.erasure.existingSecret $v.erasure.secretKey "secret") }}
{{- end }}
{{- end }}
{{- if $v.redis.existingSecret }}
{{ include "nextbest.secretVolume" (list "redis-url" $v.redis.existingSecret $v.redis.urlKey "url") }}
{{- end }}
{{- if $v.redis.tls.existingSecret }}
{{ include "nextbest.secretVolume" (list "redis-tls" $v.redis.tls.existingSecret $v.redis.tls.caKey $v.redis.tls.caKey) }}
{{- end }}
{{- $user := index $v.redis $component }}
{{- if $user.existingSecret }}
{{ include "nextbest.secretVolume" (list "redis-password" $user.existingSecret $user.passwordKey "password") }}
{{- end }}
{{- if eq $component "api" }}
{{- if $v.api.tokens.existingSecret }}
{{ include "nextbest.secretVolume" (list "api-tokens" $v.api.tokens.existingSecret $v.api.tokens.key "tokens") }}
{{- end }}
{{- if $v.api.widgetTokens.existingSecret }}
{{ include "nextbest.secretVolume" (list "widget-tokens" $v.api.widgetTokens.existingSecret $v.api.widgetTokens.key "public-keys.pem") }}
{{- else if $v.api.widgetTokens.publicKeys }}
- name: widget-tokens
  configMap:
    name: {{ include "nextbest.fullname" $root }}-widget-keys
{{- end }}
{{- end }}
{{- end }}

{{/* Rolls pods when the rules, the settings or the widget-token public keys change. */}}
{{- define "nextbest.configChecksum" -}}
checksum/config: {{ printf "%s|%s|%s" .Values.rules (toJson .Values.settings) .Values.api.widgetTokens.publicKeys | sha256sum }}
{{- end }}
