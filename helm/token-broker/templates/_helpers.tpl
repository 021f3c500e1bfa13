{{/*
Names, labels and the pieces shared by the broker container and its `broker check` init container.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "token-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full resource name: fullnameOverride, or <release>-<name>, or just the release name when it
already contains the chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "token-broker.fullname" -}}
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

{{- define "token-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "token-broker.labels" -}}
helm.sh/chart: {{ include "token-broker.chart" . }}
{{ include "token-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the broker's pods; never change them in an upgrade (immutable selector). */}}
{{- define "token-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "token-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "token-broker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "token-broker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the policy files: the chart's, or existingPolicyConfigMap. */}}
{{- define "token-broker.policiesConfigMapName" -}}
{{- if .Values.existingPolicyConfigMap }}
{{- .Values.existingPolicyConfigMap }}
{{- else }}
{{- printf "%s-policies" (include "token-broker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "token-broker.authConfigMapName" -}}
{{- printf "%s-auth" (include "token-broker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the Smithery API key, and the key inside it. */}}
{{- define "token-broker.apiKeySecretName" -}}
{{- default (include "token-broker.fullname" .) .Values.smithery.existingSecret }}
{{- end }}

{{- define "token-broker.apiKeySecretKey" -}}
{{- if .Values.smithery.existingSecret }}
{{- .Values.smithery.existingSecretKey }}
{{- else -}}
api-key
{{- end }}
{{- end }}

{{/*
The fewest replicas that will run: autoscaling.minReplicas with an HPA, replicaCount otherwise.
A PodDisruptionBudget is rendered only above 1: with a single pod it would block node drains.
*/}}
{{- define "token-broker.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
Cross-value checks the schema cannot express; each fails the render with a message that says
what to set.
*/}}
{{- define "token-broker.validate" -}}
{{- if and .Values.smithery.apiKey .Values.smithery.existingSecret }}
{{- fail "smithery: set either apiKey or existingSecret, not both" }}
{{- end }}
{{- if not (or .Values.smithery.apiKey .Values.smithery.existingSecret) }}
{{- fail "smithery: set apiKey (the chart creates a Secret) or existingSecret (a Secret you manage)" }}
{{- end }}
{{- if and .Values.policies .Values.existingPolicyConfigMap }}
{{- fail "set either policies or existingPolicyConfigMap, not both" }}
{{- end }}
{{- if not (or .Values.policies .Values.existingPolicyConfigMap) }}
{{- fail "policies: give at least one policy file (see scripts/helm-install-policies.sh) or existingPolicyConfigMap; without policies the broker denies everyone and refuses to start" }}
{{- end }}
{{- $auth := .Values.auth }}
{{- if $auth.issuers }}
{{- if or $auth.issuer $auth.audiences $auth.jwksUrl $auth.jwksFile $auth.typ $auth.subjectClaim $auth.requiredClaims }}
{{- fail "auth: set either issuers (several identity providers) or issuer with its settings, not both" }}
{{- end }}
{{- else }}
{{- if not $auth.issuer }}
{{- fail "auth.issuer: required (the iss of your users' JWTs), or auth.issuers" }}
{{- end }}
{{- if not $auth.audiences }}
{{- fail "auth.audiences: at least one audience (the aud of your users' JWTs) is required" }}
{{- end }}
{{- if and $auth.jwksUrl $auth.jwksFile }}
{{- fail "auth: set at most one of jwksUrl and jwksFile" }}
{{- end }}
{{- end }}
{{- if and .Values.redis.enabled (not (and .Values.redis.existingSecret .Values.redis.encryptionKey.existingSecret)) }}
{{- fail "redis: enabled needs existingSecret (the Redis URL) and encryptionKey.existingSecret (the keyring)" }}
{{- end }}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) }}
{{- fail "otel.endpoint: required when otel.enabled is true" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling: minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage)) }}
{{- fail "autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if eq (int .Values.metrics.port) 8080 }}
{{- fail "metrics.port: 8080 is the API port; choose a port of its own (the default is 9090), or 0 to serve /metrics on the API port" }}
{{- end }}
{{- include "token-broker.validateExtraEnv" . }}
{{- include "token-broker.validateShutdown" . }}
{{- end }}

{{/*
The variables the chart sets, each with what to do instead. extraEnv may not name them:
Kubernetes would silently take the later of two entries with one name.
*/}}
{{- define "token-broker.managedEnv" -}}
BROKER_POLICIES_DIR: set policies or existingPolicyConfigMap (mounted at /etc/token-broker/policies)
BROKER_SMITHERY_BASE_URL: set smithery.baseUrl
BROKER_SMITHERY_API_KEY: set smithery.apiKey or smithery.existingSecret (the key is only ever a mounted file)
BROKER_SMITHERY_API_KEY_FILE: set smithery.apiKey or smithery.existingSecret (the key is only ever a mounted file)
BROKER_AUTH_CONFIG_FILE: set auth.issuers
BROKER_AUTH_ISSUER: set auth.issuer
BROKER_AUTH_AUDIENCE: set auth.audiences
BROKER_AUTH_ALGORITHMS: set auth.algorithms
BROKER_AUTH_JWKS_URL: set auth.jwksUrl
BROKER_AUTH_JWKS_FILE: set auth.jwksFile
BROKER_AUTH_TYP: set auth.typ
BROKER_AUTH_SUBJECT_CLAIM: set auth.subjectClaim
BROKER_AUTH_REQUIRED_CLAIMS: set auth.requiredClaims
BROKER_CORS_ORIGINS: set cors.origins
BROKER_PRECHECK_EXEMPT_LIFECYCLE: set precheck.exemptLifecycle
BROKER_TELEMETRY_METRICS_PORT: set metrics.port
BROKER_CACHE_BACKEND: set redis.enabled
BROKER_REDIS_URL: set redis.existingSecret (the URL is only ever a mounted file)
BROKER_REDIS_URL_FILE: set redis.existingSecret (the URL is only ever a mounted file)
BROKER_CACHE_ENCRYPTION_KEY: set redis.encryptionKey.existingSecret (the keyring is only ever a mounted file)
BROKER_CACHE_ENCRYPTION_KEY_FILE: set redis.encryptionKey.existingSecret (the keyring is only ever a mounted file)
BROKER_REDIS_REQUIRED_FOR_READINESS: set redis.requiredForReadiness
BROKER_REDIS_KEY_PREFIX: set redis.keyPrefix
BROKER_SERVER_HOST: the container always listens on 0.0.0.0:8080 (service.port sets the Service's port)
BROKER_SERVER_PORT: the container always listens on 0.0.0.0:8080 (service.port sets the Service's port)
BROKER_SERVER_SHUTDOWN_DELAY_SECONDS: set shutdownDelaySeconds
OTEL_SDK_DISABLED: set otel.enabled
OTEL_TRACES_EXPORTER: set otel.enabled
OTEL_SERVICE_NAME: set otel.serviceName
OTEL_EXPORTER_OTLP_ENDPOINT: set otel.endpoint
OTEL_EXPORTER_OTLP_PROTOCOL: set otel.protocol
OTEL_RESOURCE_ATTRIBUTES: set otel.resourceAttributes
OTEL_TRACES_SAMPLER: set otel.sampler.type
OTEL_TRACES_SAMPLER_ARG: set otel.sampler.arg
POD_NAME: the chart sets it for OTEL_RESOURCE_ATTRIBUTES (add attributes with otel.resourceAttributes)
POD_NAMESPACE: the chart sets it for OTEL_RESOURCE_ATTRIBUTES (add attributes with otel.resourceAttributes)
{{- end }}

{{/*
Secret settings extraEnv may carry, only from a Secret (valueFrom.secretKeyRef), or as their
_FILE variable pointing into a Secret mounted with extraVolumes: a value is in the pod spec and a
ConfigMap is readable by anyone with the `view` role. (The chart's own secrets, the API key, the
Redis URL and the keyring, are managed names above: always mounted files.) Checked here, not in
values.schema.json, because Helm prints a failed schema `not` without saying what is wrong.
*/}}
{{- define "token-broker.validateExtraEnv" -}}
{{- $managed := include "token-broker.managedEnv" . | fromYaml }}
{{- $secrets := list "BROKER_ADMIN_TOKEN" "BROKER_TELEMETRY_HASH_KEY" }}
{{- $seen := dict }}
{{- range $index, $var := .Values.extraEnv }}
{{- $name := $var.name }}
{{- with get $managed $name }}
{{- fail (printf "extraEnv[%d]: %s is managed by the chart: %s" $index $name .) }}
{{- end }}
{{- if hasKey $seen $name }}
{{- fail (printf "extraEnv[%d]: %s is listed twice (Kubernetes would silently use the last one)" $index $name) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- if and (has $name $secrets) (not (dig "valueFrom" "secretKeyRef" "" $var)) }}
{{- fail (printf "extraEnv[%d]: %s is a secret: give it as valueFrom.secretKeyRef (a Secret you manage), or set %s_FILE to a file of a Secret mounted with extraVolumes; never as a value or from a ConfigMap" $index $name $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Rolling updates: Kubernetes kills a pod terminationGracePeriodSeconds after SIGTERM, and the
broker needs shutdownDelaySeconds plus its drain timeout (BROKER_SERVER_DRAIN_TIMEOUT_SECONDS;
25, ServerSettings.drain_timeout_seconds, unless extraEnv sets it) to finish the requests in
flight.
*/}}
{{- define "token-broker.validateShutdown" -}}
{{- $drain := 25.0 }}
{{- range .Values.extraEnv }}
{{- if eq .name "BROKER_SERVER_DRAIN_TIMEOUT_SECONDS" }}
{{- if not (hasKey . "value") }}
{{- fail "extraEnv: give BROKER_SERVER_DRAIN_TIMEOUT_SECONDS as a value, not valueFrom: the chart checks terminationGracePeriodSeconds against it" }}
{{- end }}
{{- $drain = float64 .value }}
{{- end }}
{{- end }}
{{- $delay := float64 .Values.shutdownDelaySeconds }}
{{- $grace := float64 .Values.terminationGracePeriodSeconds }}
{{- $needed := addf $delay $drain }}
{{- if lt $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds: %v is shorter than shutdownDelaySeconds (%v) plus the drain timeout (%v, BROKER_SERVER_DRAIN_TIMEOUT_SECONDS): Kubernetes would kill pods while requests are in flight; set it to at least %v, or lower the delay or the drain timeout" $grace $delay $drain $needed) }}
{{- end }}
{{- end }}

{{/*
Environment of the broker and of the init container. The API key is only ever a file path
(BROKER_SMITHERY_API_KEY_FILE): its value never appears in the pod spec.
*/}}
{{- define "token-broker.env" -}}
- name: BROKER_POLICIES_DIR
  value: /etc/token-broker/policies
- name: BROKER_SMITHERY_BASE_URL
  value: {{ .Values.smithery.baseUrl | quote }}
- name: BROKER_SMITHERY_API_KEY_FILE
  value: /etc/token-broker/smithery/api-key
{{- $auth := .Values.auth }}
{{- if $auth.issuers }}
- name: BROKER_AUTH_CONFIG_FILE
  value: /etc/token-broker/auth/issuers.yaml
{{- else }}
- name: BROKER_AUTH_ISSUER
  value: {{ $auth.issuer | quote }}
- name: BROKER_AUTH_AUDIENCE
  value: {{ join "," $auth.audiences | quote }}
- name: BROKER_AUTH_ALGORITHMS
  value: {{ join "," $auth.algorithms | quote }}
{{- with $auth.jwksUrl }}
- name: BROKER_AUTH_JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- with $auth.jwksFile }}
- name: BROKER_AUTH_JWKS_FILE
  value: {{ . | quote }}
{{- end }}
{{- with $auth.typ }}
- name: BROKER_AUTH_TYP
  value: {{ . | quote }}
{{- end }}
{{- with $auth.subjectClaim }}
- name: BROKER_AUTH_SUBJECT_CLAIM
  value: {{ . | quote }}
{{- end }}
{{- with $auth.requiredClaims }}
- name: BROKER_AUTH_REQUIRED_CLAIMS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- with .Values.cors.origins }}
- name: BROKER_CORS_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
- name: BROKER_PRECHECK_EXEMPT_LIFECYCLE
  value: {{ .Values.precheck.exemptLifecycle | toString | quote }}
{{- if .Values.metrics.port }}
- name: BROKER_TELEMETRY_METRICS_PORT
  value: {{ .Values.metrics.port | toString | quote }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: BROKER_CACHE_BACKEND
  value: redis
- name: BROKER_REDIS_URL_FILE
  value: /etc/token-broker/redis/url
- name: BROKER_CACHE_ENCRYPTION_KEY_FILE
  value: /etc/token-broker/cache-key/keyring.yaml
- name: BROKER_REDIS_REQUIRED_FOR_READINESS
  value: {{ .Values.redis.requiredForReadiness | toString | quote }}
- name: BROKER_REDIS_KEY_PREFIX
  value: {{ .Values.redis.keyPrefix | quote }}
{{- end }}
- name: BROKER_SERVER_SHUTDOWN_DELAY_SECONDS
  value: {{ .Values.shutdownDelaySeconds | toString | quote }}
{{- include "token-broker.otelEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The OpenTelemetry SDK's standard variables (opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables). */}}
{{- define "token-broker.otelEnv" -}}
{{- $otel := .Values.otel }}
{{- if $otel.enabled }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SDK_DISABLED
  value: "false"
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_SERVICE_NAME
  value: {{ $otel.serviceName | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $otel.protocol | quote }}
{{- $attributes := list "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" }}
{{- range $key, $value := $otel.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $otel.sampler.type | quote }}
{{- with $otel.sampler.arg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- end }}

{{/* Mounts of the broker and of the init container: all read-only except /tmp. */}}
{{- define "token-broker.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: policies
  mountPath: /etc/token-broker/policies
  readOnly: true
- name: smithery-api-key
  mountPath: /etc/token-broker/smithery
  readOnly: true
{{- if .Values.auth.issuers }}
- name: auth-config
  mountPath: /etc/token-broker/auth
  readOnly: true
{{- end }}
{{- if .Values.redis.enabled }}
- name: redis-url
  mountPath: /etc/token-broker/redis
  readOnly: true
- name: cache-key
  mountPath: /etc/token-broker/cache-key
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The multi-issuer file (BROKER_AUTH_CONFIG_FILE): camelCase values → the broker's snake_case keys. */}}
{{- define "token-broker.issuersFile" -}}
{{- $issuers := list }}
{{- range .Values.auth.issuers }}
{{- $entry := dict "issuer" .issuer "audiences" .audiences }}
{{- with .algorithms }}{{ $_ := set $entry "algorithms" . }}{{ end }}
{{- with .jwksUrl }}{{ $_ := set $entry "jwks_url" . }}{{ end }}
{{- with .jwksFile }}{{ $_ := set $entry "jwks_file" . }}{{ end }}
{{- with .typ }}{{ $_ := set $entry "typ" . }}{{ end }}
{{- with .subjectClaim }}{{ $_ := set $entry "subject_claim" . }}{{ end }}
{{- with .requiredClaims }}{{ $_ := set $entry "required_claims" . }}{{ end }}
{{- if hasKey . "leewaySeconds" }}{{ $_ := set $entry "leeway_seconds" .leewaySeconds }}{{ end }}
{{- with .maxTokenAgeSeconds }}{{ $_ := set $entry "max_token_age_seconds" . }}{{ end }}
{{- $issuers = append $issuers $entry }}
{{- end }}
{{- dict "issuers" $issuers | toYaml }}
{{- end }}
