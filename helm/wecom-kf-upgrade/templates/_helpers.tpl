{{/* The chart name, or nameOverride. */}}
{{- define "wecom-kf-upgrade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's resources (63 characters at most: DNS labels). */}}
{{- define "wecom-kf-upgrade.fullname" -}}
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

{{- define "wecom-kf-upgrade.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "wecom-kf-upgrade.labels" -}}
helm.sh/chart: {{ include "wecom-kf-upgrade.chart" . }}
app.kubernetes.io/name: {{ include "wecom-kf-upgrade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The gateway pods' selector. The component label keeps the `helm test` pod (same name and
instance) out of the Service, the PodDisruptionBudget and the spread constraints.
*/}}
{{- define "wecom-kf-upgrade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wecom-kf-upgrade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "wecom-kf-upgrade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wecom-kf-upgrade.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository, then @digest or :tag (default: appVersion). */}}
{{- define "wecom-kf-upgrade.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Where the configuration file and the secrets are mounted. */}}
{{- define "wecom-kf-upgrade.configDir" -}}/etc/wecom-kf-upgrade{{- end }}
{{- define "wecom-kf-upgrade.secretDir" -}}/var/run/secrets/wecom{{- end }}

{{/* Where the TLS Secret, the client CA and the callers file are mounted. */}}
{{- define "wecom-kf-upgrade.tlsDir" -}}/var/run/secrets/wecom-kf-upgrade/tls{{- end }}
{{- define "wecom-kf-upgrade.clientCaDir" -}}/var/run/secrets/wecom-kf-upgrade/client-ca{{- end }}
{{- define "wecom-kf-upgrade.callersDir" -}}/var/run/secrets/wecom-kf-upgrade/callers{{- end }}

{{/* Where each suite's secrets and corps file (one directory per suite) and the apps file are mounted. */}}
{{- define "wecom-kf-upgrade.suitesDir" -}}/var/run/secrets/wecom-kf-upgrade/suites{{- end }}
{{- define "wecom-kf-upgrade.appsFileDir" -}}/var/run/secrets/wecom-kf-upgrade/apps{{- end }}

{{/* "true" when the gateway runs suites: some are listed, outside the sandbox (which has its own demo suite). */}}
{{- define "wecom-kf-upgrade.suitesOn" -}}
{{- if and .Values.suites (not .Values.sandbox.enabled) }}true{{ end }}
{{- end }}

{{/* "true" when the gateway reads an apps file (not in the sandbox, which reads none). */}}
{{- define "wecom-kf-upgrade.appsFileOn" -}}
{{- if and .Values.appsFile.secretName (not .Values.sandbox.enabled) }}true{{ end }}
{{- end }}

{{/* The Service of the callback port alone. */}}
{{- define "wecom-kf-upgrade.callbackServiceName" -}}
{{- printf "%s-callback" (include "wecom-kf-upgrade.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* The chart's Secret of the suites whose secrets are in the values. */}}
{{- define "wecom-kf-upgrade.suitesSecretName" -}}
{{- printf "%s-suites" (include "wecom-kf-upgrade.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* "true" when the chart makes that Secret: some suite has no existingSecret. */}}
{{- define "wecom-kf-upgrade.createsSuitesSecret" -}}
{{- if include "wecom-kf-upgrade.suitesOn" . }}
{{- range .Values.suites }}{{ if not .existingSecret }}true{{ end }}{{ end }}
{{- end }}
{{- end }}

{{/* A suite's files, each under the key of the same name in its existingSecret (in the chart's Secret, `NAME.FILE`). */}}
{{- define "wecom-kf-upgrade.suiteFiles" -}}suite-secret token encoding-aes-key corps.toml{{- end }}

{{/* A suite's corps file, rendered from its `corps` value. */}}
{{- define "wecom-kf-upgrade.corpsToml" -}}
# The corps that authorised suite {{ .name }} (rendered by the wecom-kf-upgrade chart).
{{- range .corps }}

[[corps]]
app = {{ toJson .app }}
auth_corpid = {{ toJson .authCorpId }}
permanent_code = {{ toJson .permanentCode }}
{{- end }}
{{ end }}

{{/*
"true" when the kubelet can probe grpc.health.v1.Health itself: its gRPC probes speak neither
TLS nor bearer tokens. Otherwise the probes ask the admin port's /healthz and /readyz.
*/}}
{{- define "wecom-kf-upgrade.grpcProbes" -}}
{{- if and (not .Values.tls.secretName) (or (not .Values.auth.callersSecretName) .Values.auth.openHealth) }}true{{ end }}
{{- end }}

{{/* The Secret holding the corp secrets: the user's existingSecret or the chart's. */}}
{{- define "wecom-kf-upgrade.secretName" -}}
{{- default (include "wecom-kf-upgrade.fullname" .) .Values.wecom.existingSecret }}
{{- end }}

{{/*
"true" when the pods mount a Secret: outside the sandbox (which reads no secret), when
some app is configured.
*/}}
{{- define "wecom-kf-upgrade.mountsSecret" -}}
{{- if and (not .Values.sandbox.enabled) (or .Values.wecom.corpId .Values.wecom.apps) }}true{{ end }}
{{- end }}

{{/* "true" when the chart makes the Secret itself. */}}
{{- define "wecom-kf-upgrade.createsSecret" -}}
{{- if and (include "wecom-kf-upgrade.mountsSecret" .) (not .Values.wecom.existingSecret) }}true{{ end }}
{{- end }}

{{/* "true" when no WeCom app is configured and the sandbox is off: the gateway would refuse to start. */}}
{{- define "wecom-kf-upgrade.unconfigured" -}}
{{- if and (not .Values.sandbox.enabled) (not .Values.wecom.corpId) (not .Values.wecom.apps) (not .Values.suites) (not .Values.appsFile.secretName) }}true{{ end }}
{{- end }}

{{/*
Refuses inconsistent WeCom settings at render time, with the value to fix; the gateway
would refuse them at start, later and further from the cause.
*/}}
{{- define "wecom-kf-upgrade.validate" -}}
{{- $w := .Values.wecom }}
{{- if and $w.corpSecret (not $w.corpId) }}
{{- fail "wecom.corpSecret is set but wecom.corpId is empty: set the corp id of that app" }}
{{- end }}
{{- if and $w.corpSecret $w.existingSecret }}
{{- fail "set either wecom.corpSecret or wecom.existingSecret, not both" }}
{{- end }}
{{- if and $w.corpId (not $w.corpSecret) (not $w.existingSecret) (not .Values.sandbox.enabled) }}
{{- fail "wecom.corpId is set but its secret is missing: set wecom.corpSecret or wecom.existingSecret (key corp-secret)" }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $app := $w.apps }}
{{- if hasKey $seen $app.name }}
{{- fail (printf "wecom.apps[%d].name: %s names two apps; app names must be unique" $i $app.name) }}
{{- end }}
{{- if and $w.corpId (eq $app.name "default") }}
{{- fail (printf "wecom.apps[%d].name: default is the app of wecom.corpId; name this app otherwise" $i) }}
{{- end }}
{{- $_ := set $seen $app.name true }}
{{- if and $app.secret $w.existingSecret }}
{{- fail (printf "wecom.apps[%d].secret: leave it out with wecom.existingSecret (key %s of that Secret holds it)" $i $app.name) }}
{{- end }}
{{- if and (not $app.secret) (not $w.existingSecret) (not $.Values.sandbox.enabled) }}
{{- fail (printf "wecom.apps[%d].secret: is required (or set wecom.existingSecret with a key %s)" $i $app.name) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.clientCa.secretName (not .Values.tls.secretName) }}
{{- fail "tls.clientCa.secretName: mTLS needs TLS; set tls.secretName (a kubernetes.io/tls Secret) as well" }}
{{- end }}
{{- if and .Values.tests.enabled .Values.auth.callersSecretName (not .Values.auth.openHealth) }}
{{- fail "auth.openHealth: false closes health to callers without a token, and the helm test pod has none; set tests.enabled=false as well" }}
{{- end }}
{{- if and $w.corpId $w.defaultApp (ne $w.defaultApp "default") }}
{{- fail "wecom.defaultApp: with wecom.corpId the default app is that app, named default; leave defaultApp empty" }}
{{- end }}
{{- $seenSuites := dict }}
{{- range $i, $s := .Values.suites }}
{{- $at := printf "suites[%d]" $i }}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,64}$" (toString $s.name)) }}
{{- fail (printf "%s.name: is required: 1-64 of A-Z a-z 0-9 - _ . (it is in the callback URL /suites/NAME/callback)" $at) }}
{{- end }}
{{- if hasKey $seenSuites $s.name }}
{{- fail (printf "%s.name: %s names two suites" $at $s.name) }}
{{- end }}
{{- $_ := set $seenSuites $s.name true }}
{{- if $s.existingSecret }}
{{- range $key := list "suiteSecret" "token" "encodingAesKey" "corps" }}
{{- if index $s $key }}
{{- fail (printf "%s.%s: leave it out with %s.existingSecret (that Secret holds it)" $at $key $at) }}
{{- end }}
{{- end }}
{{- else if not $.Values.sandbox.enabled }}
{{- range $key := list "suiteSecret" "token" "encodingAesKey" }}
{{- if not (index $s $key) }}
{{- fail (printf "%s.%s: is required (or set %s.existingSecret, a Secret with the keys suite-secret, token, encoding-aes-key and corps.toml)" $at $key $at) }}
{{- end }}
{{- end }}
{{- if ne (len $s.encodingAesKey) 43 }}
{{- fail (printf "%s.encodingAesKey: must be the 43 characters of the suite's EncodingAESKey" $at) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .Values.sandbox.enabled }}
{{- $names := list }}
{{- range $w.apps }}{{ $names = append $names .name }}{{ end }}
{{- if $w.corpId }}{{ $names = append $names "default" }}{{ end }}
{{- range .Values.suites }}{{ range .corps }}{{ $names = append $names .app }}{{ end }}{{ end }}
{{- /* Apps in an existing Secret (a suite's corps file, the apps file) are unknown here: the gateway checks them. */}}
{{- $complete := not .Values.appsFile.secretName }}
{{- range .Values.suites }}{{ if .existingSecret }}{{ $complete = false }}{{ end }}{{ end }}
{{- $default := include "wecom-kf-upgrade.defaultApp" . | default (ternary (first $names) "default" (eq (len $names) 1)) }}
{{- if and $complete $names (not (has $default $names)) }}
{{- fail (printf "wecom.defaultApp: %s is not one of the apps (%s); name one of them, or set wecom.corpId for an app called default" $default (join ", " $names)) }}
{{- end }}
{{- if and (not $complete) (not $w.corpId) (not $w.apps) (not $w.defaultApp) }}
{{- fail "wecom.defaultApp: is required with a suite's existingSecret or an apps file and no other app: name the app (a corp's `app`, or an app of the apps file) that serves calls without x-wecom-app" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The gateway's default_app: as set; with corpId, the corpId app ("default"), which the
gateway creates from WECOM_CORP_ID (otherwise the environment would take over the only
app of the file); empty leaves the gateway's own rule.
*/}}
{{- define "wecom-kf-upgrade.defaultApp" -}}
{{- if .Values.wecom.defaultApp }}{{ .Values.wecom.defaultApp }}{{ else if .Values.wecom.corpId }}default{{ end }}
{{- end }}

{{/* A listen address: config.listenAddress and a port (list $ PORT); IPv6 in brackets. */}}
{{- define "wecom-kf-upgrade.listenAddress" -}}
{{- $host := (index . 0).Values.config.listenAddress }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
{{- printf "%s:%d" $host (int (index . 1)) }}
{{- end }}

{{/* The gateway's configuration file (TOML), from the values. Strings go through toJson: a JSON string is a valid TOML basic string. */}}
{{- define "wecom-kf-upgrade.configToml" -}}
{{- $c := .Values.config -}}
# Rendered by the wecom-kf-upgrade chart from its values (see the chart's README).
listen = {{ include "wecom-kf-upgrade.listenAddress" (list . .Values.ports.grpc) | toJson }}
admin_listen = {{ include "wecom-kf-upgrade.listenAddress" (list . .Values.ports.admin) | toJson }}
{{- with include "wecom-kf-upgrade.defaultApp" . }}
default_app = {{ toJson . }}
{{- end }}
{{- with .Values.wecom.apiBase }}
api_base = {{ toJson . }}
{{- end }}
{{- if include "wecom-kf-upgrade.appsFileOn" . }}
# More apps (代开发), re-read when the mounted Secret changes.
apps_file = {{ printf "%s/%s" (include "wecom-kf-upgrade.appsFileDir" .) .Values.appsFile.key | toJson }}
apps_reload_interval_ms = {{ int64 .Values.appsFile.reloadIntervalMs }}
{{- end }}
{{- range .Values.wecom.apps }}

[[apps]]
name = {{ toJson .name }}
corp_id = {{ toJson .corpId }}
secret_file = {{ printf "%s/%s" (include "wecom-kf-upgrade.secretDir" $) .name | toJson }}
{{- with .apiBase }}
api_base = {{ toJson . }}
{{- end }}
{{- end }}

[upstream]
connect_timeout_ms = {{ int64 $c.upstream.connectTimeoutMs }}
request_timeout_ms = {{ int64 $c.upstream.requestTimeoutMs }}
call_timeout_ms = {{ int64 $c.upstream.callTimeoutMs }}
max_retries = {{ int64 $c.upstream.maxRetries }}
retry_backoff_ms = {{ int64 $c.upstream.retryBackoffMs }}
max_body_bytes = {{ int64 $c.upstream.maxBodyBytes }}

[token]
refresh_ahead_secs = {{ int64 $c.token.refreshAheadSecs }}
expiry_margin_secs = {{ int64 $c.token.expiryMarginSecs }}
credential_cooldown_secs = {{ int64 $c.token.credentialCooldownSecs }}
failure_backoff_ms = {{ int64 $c.token.failureBackoffMs }}
failure_backoff_max_ms = {{ int64 $c.token.failureBackoffMaxMs }}

[server]
max_decode_message_bytes = {{ int64 $c.server.maxDecodeMessageBytes }}
max_concurrent_streams = {{ int64 $c.server.maxConcurrentStreams }}
drain_delay_ms = {{ int64 $c.server.drainDelayMs }}
shutdown_grace_ms = {{ int64 $c.server.shutdownGraceMs }}
{{- if include "wecom-kf-upgrade.suitesOn" . }}
{{- range .Values.suites }}
{{- $dir := printf "%s/%s" (include "wecom-kf-upgrade.suitesDir" $) .name }}

[[suites]]
name = {{ toJson .name }}
suite_id = {{ toJson .suiteId }}
suite_secret_file = {{ printf "%s/suite-secret" $dir | toJson }}
token_file = {{ printf "%s/token" $dir | toJson }}
encoding_aes_key_file = {{ printf "%s/encoding-aes-key" $dir | toJson }}
corps_file = {{ printf "%s/corps.toml" $dir | toJson }}
{{- with .providerCorpId }}
provider_corp_id = {{ toJson . }}
{{- end }}
{{- with .apiBase }}
api_base = {{ toJson . }}
{{- end }}
{{- with .reloadIntervalMs }}
reload_interval_ms = {{ int64 . }}
{{- end }}
{{- end }}

[callback]
listen = {{ include "wecom-kf-upgrade.listenAddress" (list . .Values.ports.callback) | toJson }}
max_clock_skew_secs = {{ int64 $c.callback.maxClockSkewSecs }}
max_body_bytes = {{ int64 $c.callback.maxBodyBytes }}
max_connections = {{ int64 $c.callback.maxConnections }}
handshake_timeout_ms = {{ int64 $c.callback.handshakeTimeoutMs }}
request_read_timeout_ms = {{ int64 $c.callback.requestReadTimeoutMs }}
{{- end }}
{{- if .Values.redis.existingSecret }}

# The URL itself is WECOM_REDIS_URL, from the Secret.
[redis]
fallback_share = {{ .Values.redis.fallbackShare }}
{{- end }}
{{- if .Values.auth.callersSecretName }}

# The callers file itself is named by WECOM_CALLERS_FILE.
[auth]
open_health = {{ .Values.auth.openHealth }}
open_reflection = {{ .Values.auth.openReflection }}
{{- end }}
{{ end }}

{{/*
terminationGracePeriodSeconds from the same values as the gateway's drain: the worst case
is drain_delay_ms + 2 × shutdown_grace_ms (the admin port gets its own grace after the gRPC
port), rounded up to whole seconds, plus a margin.
*/}}
{{- define "wecom-kf-upgrade.terminationGracePeriodSeconds" -}}
{{- $s := .Values.config.server }}
{{- $ms := add (int64 $s.drainDelayMs) (mul 2 (int64 $s.shutdownGraceMs)) }}
{{- add (div (add $ms 999) 1000) (int64 .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/* The gateway's mounts of the TLS Secret, the client CA and the callers file (each if set). */}}
{{- define "wecom-kf-upgrade.securityMounts" -}}
{{- if .Values.tls.secretName }}
- name: tls
  mountPath: {{ include "wecom-kf-upgrade.tlsDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.tls.clientCa.secretName }}
- name: client-ca
  mountPath: {{ include "wecom-kf-upgrade.clientCaDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.auth.callersSecretName }}
- name: callers
  mountPath: {{ include "wecom-kf-upgrade.callersDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The gateway's mounts of each suite's Secret and of the apps file (each if set). */}}
{{- define "wecom-kf-upgrade.providerMounts" -}}
{{- if include "wecom-kf-upgrade.suitesOn" . }}
{{- range $i, $s := .Values.suites }}
- name: suite-{{ $i }}
  mountPath: {{ include "wecom-kf-upgrade.suitesDir" $ }}/{{ $s.name }}
  readOnly: true
{{- end }}
{{- end }}
{{- if include "wecom-kf-upgrade.appsFileOn" . }}
- name: apps-file
  mountPath: {{ include "wecom-kf-upgrade.appsFileDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Their volumes: whole Secret volumes (never subPath, which would freeze the files, so a
changed corps file or apps file reaches the gateway), each suite's keys under fixed names.
*/}}
{{- define "wecom-kf-upgrade.providerVolumes" -}}
{{- if include "wecom-kf-upgrade.suitesOn" . }}
{{- range $i, $s := .Values.suites }}
- name: suite-{{ $i }}
  secret:
    secretName: {{ $s.existingSecret | default (include "wecom-kf-upgrade.suitesSecretName" $) }}
    items:
      {{- range $file := splitList " " (include "wecom-kf-upgrade.suiteFiles" $) }}
      - key: {{ ternary $file (printf "%s.%s" $s.name $file) (not (empty $s.existingSecret)) }}
        path: {{ $file }}
      {{- end }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- if include "wecom-kf-upgrade.appsFileOn" . }}
- name: apps-file
  secret:
    secretName: {{ .Values.appsFile.secretName }}
    items:
      - key: {{ .Values.appsFile.key }}
        path: {{ .Values.appsFile.key }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/*
Their volumes: whole Secret volumes (never subPath, which would freeze the files), only the
keys the gateway reads, readable by owner and group (fsGroup).
*/}}
{{- define "wecom-kf-upgrade.securityVolumes" -}}
{{- if .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
    defaultMode: 0440
{{- end }}
{{- with .Values.tls.clientCa.secretName }}
- name: client-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.tls.clientCa.key }}
        path: {{ $.Values.tls.clientCa.key }}
    defaultMode: 0440
{{- end }}
{{- with .Values.auth.callersSecretName }}
- name: callers
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.auth.callersKey }}
        path: {{ $.Values.auth.callersKey }}
    defaultMode: 0440
{{- end }}
{{- end }}
