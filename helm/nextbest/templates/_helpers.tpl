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

{{/* The settings both processes read: contract section 9. */}}
{{- define "nextbest.env" -}}
- name: NEXTBEST_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: NEXTBEST_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol }}
- name: NEXTBEST_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: NEXTBEST_KAFKA_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: NEXTBEST_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required for SASL" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: NEXTBEST_KAFKA_SSL_CAFILE
  value: /etc/nextbest/kafka-tls/{{ .Values.kafka.tls.caKey }}
{{- if .Values.kafka.tls.certKey }}
- name: NEXTBEST_KAFKA_SSL_CERTFILE
  value: /etc/nextbest/kafka-tls/{{ .Values.kafka.tls.certKey }}
- name: NEXTBEST_KAFKA_SSL_KEYFILE
  value: /etc/nextbest/kafka-tls/{{ .Values.kafka.tls.keyKey }}
{{- end }}
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: NEXTBEST_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.urlKey }}
{{- else }}
- name: NEXTBEST_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
- name: NEXTBEST_TOPIC_PARTITIONS
  value: {{ .Values.topicPartitions | quote }}
{{- if .Values.rules }}
- name: NEXTBEST_RULES
  value: /etc/nextbest/rules/rules.toml
{{- end }}
{{- range $name, $value := .Values.settings }}
- name: NEXTBEST_{{ $name | upper }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Read-only mounts both processes share: rules and Kafka TLS material. */}}
{{- define "nextbest.configMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.rules }}
- name: rules
  mountPath: /etc/nextbest/rules
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/nextbest/kafka-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "nextbest.configVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.rules }}
- name: rules
  configMap:
    name: {{ include "nextbest.fullname" . }}-rules
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* Rolls pods when the rules change. */}}
{{- define "nextbest.configChecksum" -}}
checksum/config: {{ printf "%s|%s" .Values.rules (toJson .Values.settings) | sha256sum }}
{{- end }}
