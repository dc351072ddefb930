{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "atlasai-tp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. A release whose name already contains the chart name
is used as is, so `helm install atlasai-tp ...` gives resources (and the
Service) named "atlasai-tp", and http://atlasai-tp/api/health works in the
release's namespace.
*/}}
{{- define "atlasai-tp.fullname" -}}
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

{{- define "atlasai-tp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: immutable once installed, so only name and instance.
*/}}
{{- define "atlasai-tp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atlasai-tp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels. `app` is what the operator guide selects on
(kubectl get pods -l app=atlasai-tp).
*/}}
{{- define "atlasai-tp.labels" -}}
helm.sh/chart: {{ include "atlasai-tp.chart" . }}
{{ include "atlasai-tp.selectorLabels" . }}
app: {{ include "atlasai-tp.name" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | quote }}
app.kubernetes.io/component: tenant-plane
app.kubernetes.io/part-of: atlasai
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "atlasai-tp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "atlasai-tp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "atlasai-tp.secretName" -}}
{{- default (include "atlasai-tp.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "atlasai-tp.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
"true" when the release runs on the embedded SQLite database: db.url is a
sqlite:// URL, or empty without an existingSecret (which would carry a
PostgreSQL URL).
*/}}
{{- define "atlasai-tp.sqlite" -}}
{{- $url := .Values.db.url | default "" | toString }}
{{- if hasPrefix "sqlite:" $url }}true
{{- else if and (eq $url "") (not .Values.existingSecret) }}true
{{- end }}
{{- end }}

{{/*
The SQLite URL: db.url, or a file in the data directory.
*/}}
{{- define "atlasai-tp.sqliteUrl" -}}
{{- $url := .Values.db.url | default "" | toString }}
{{- if $url }}{{ $url }}{{ else }}{{ printf "sqlite://%s/tenant-plane.db" (trimSuffix "/" .Values.config.dataDir) }}{{ end }}
{{- end }}

{{/*
The smallest number of replicas the Deployment runs with.
*/}}
{{- define "atlasai-tp.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.minReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the drain delay plus the shutdown timeout,
rounded up to whole seconds, plus a margin, so SIGKILL never cuts a drain short.
*/}}
{{- define "atlasai-tp.terminationGracePeriodSeconds" -}}
{{- $ms := add (int .Values.shutdown.drainDelayMs) (int .Values.shutdown.timeoutMs) }}
{{- add (div (add $ms 999) 1000) (int .Values.shutdown.extraGraceSeconds) }}
{{- end }}

{{/*
Warnings printed by NOTES.txt (one per line, empty when all is well).
*/}}
{{- define "atlasai-tp.warnings" -}}
{{- $sqlite := eq (include "atlasai-tp.sqlite" .) "true" }}
{{- if not .Values.existingSecret }}
{{- $jwt := .Values.auth.jwtSecret | default "" | toString }}
{{- if lt (len $jwt) 32 }}
WARNING: auth.jwtSecret is {{ len $jwt }} characters; the tenant plane refuses a JWT_SECRET shorter than 32 bytes and will not start. Use: openssl rand -hex 32
{{- end }}
{{- $key := .Values.auth.encryptionKey | default "" | toString }}
{{- if not (regexMatch "^[0-9a-fA-F]{64}$" $key) }}
WARNING: auth.encryptionKey is not 64 hex characters; the tenant plane will not start with it. Use: openssl rand -hex 32
{{- end }}
{{- end }}
{{- if and $sqlite (not .Values.persistence.enabled) }}
WARNING: running on embedded SQLite in an emptyDir: the data is lost when the pod goes. Set db.url to PostgreSQL (required for HA) or persistence.enabled=true.
{{- end }}
{{- if and (not $sqlite) (not .Values.autoscaling.enabled) (lt (int .Values.replicaCount) 2) }}
WARNING: replicaCount is {{ .Values.replicaCount }}; run at least 2 replicas for high availability.
{{- end }}
{{- end }}

{{/*
Render-time validation: fails the install/upgrade with a clear message.
Included (with no output) by deployment.yaml.
*/}}
{{- define "atlasai-tp.validate" -}}
{{- $sqlite := eq (include "atlasai-tp.sqlite" .) "true" }}
{{- $tenant := .Values.tenant.id | default "" | toString }}
{{- if not $tenant }}
{{- fail "atlasai-tp: tenant.id is required (TENANT_ID, e.g. tenant.id: acme-corp)" }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,64}$" $tenant) }}
{{- fail (printf "atlasai-tp: tenant.id %q must be 1 to 64 characters of letters, digits, '-', '_' or '.'" $tenant) }}
{{- end }}
{{- $url := .Values.db.url | default "" | toString }}
{{- if and $url (not (or (hasPrefix "postgresql://" $url) (hasPrefix "postgres://" $url) (hasPrefix "sqlite://" $url))) }}
{{- fail "atlasai-tp: db.url must start with postgresql://, postgres:// or sqlite://" }}
{{- end }}
{{- if eq $url "sqlite://" }}
{{- fail "atlasai-tp: db.url sqlite:// needs a file path, e.g. sqlite:///var/lib/tenant-plane/tp.db" }}
{{- end }}
{{- if $sqlite }}
{{- $what := ternary (printf "db.url is %q" $url) "db.url is empty (embedded SQLite)" (ne $url "") }}
{{- if .Values.autoscaling.enabled }}
{{- fail (printf "atlasai-tp: SQLite cannot be used with autoscaling: %s, but autoscaling.enabled is true. SQLite is a single file that cannot be shared between replicas. Set db.url to a PostgreSQL URL (postgresql://user:password@host:5432/db) for HA, or set autoscaling.enabled=false and replicaCount=1." $what) }}
{{- end }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "atlasai-tp: SQLite cannot be used with multiple replicas: %s, but replicaCount is %d. SQLite is a single file that cannot be shared between replicas. Set db.url to a PostgreSQL URL (postgresql://user:password@host:5432/db) for HA, or set replicaCount=1." $what (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
{{- if .Values.existingSecret }}
{{- if and $url (not (hasPrefix "sqlite:" $url)) }}
{{- fail "atlasai-tp: with existingSecret, put the PostgreSQL URL in the Secret under TENANT_PLANE_DATABASE_URL and leave db.url empty (db.url would place the password in the Deployment)" }}
{{- end }}
{{- else }}
{{- $jwt := .Values.auth.jwtSecret | default "" | toString }}
{{- if not $jwt }}
{{- fail "atlasai-tp: auth.jwtSecret is required (JWT_SECRET, identical on all replicas; generate with: openssl rand -hex 32), or set existingSecret" }}
{{- end }}
{{- $key := .Values.auth.encryptionKey | default "" | toString }}
{{- if not $key }}
{{- fail "atlasai-tp: auth.encryptionKey is required (ENCRYPTION_KEY, 64 hex characters; generate with: openssl rand -hex 32), or set existingSecret" }}
{{- end }}
{{- if .Values.validation.strictSecrets }}
{{- if lt (len $jwt) 32 }}
{{- fail (printf "atlasai-tp: auth.jwtSecret is %d characters; JWT_SECRET must be at least 32 (generate with: openssl rand -hex 32)" (len $jwt)) }}
{{- end }}
{{- if not (regexMatch "^[0-9a-fA-F]{64}$" $key) }}
{{- fail "atlasai-tp: auth.encryptionKey must be exactly 64 hex characters (generate with: openssl rand -hex 32)" }}
{{- end }}
{{- end }}
{{- if and .Values.license.key (not .Values.license.publicKey) }}
{{- fail "atlasai-tp: license.key is set but license.publicKey is empty; CP_LICENSE_PUBLIC_KEY is needed to verify ATLASAI_LICENSE_KEY" }}
{{- end }}
{{- if and (eq (toString .Values.license.required) "true") (not .Values.license.key) }}
{{- fail "atlasai-tp: license.required is true but license.key is empty" }}
{{- end }}
{{- end }}
{{- if gt (int .Values.db.poolMin) (int .Values.db.poolMax) }}
{{- fail (printf "atlasai-tp: db.poolMin (%d) must not exceed db.poolMax (%d)" (int .Values.db.poolMin) (int .Values.db.poolMax)) }}
{{- end }}
{{- $budget := int (default 0 .Values.db.maxConnections) }}
{{- if gt $budget 0 }}
{{- $replicas := ternary (int .Values.autoscaling.maxReplicas) (int .Values.replicaCount) .Values.autoscaling.enabled }}
{{- $surge := 1 }}
{{- $needed := mul (add $replicas $surge) (int .Values.db.poolMax) }}
{{- if gt $needed $budget }}
{{- fail (printf "atlasai-tp: the replicas can open %d database connections ((%s %d + 1 during a rolling update) x db.poolMax %d), more than db.maxConnections (%d). Lower db.poolMax or the replica count, put PgBouncer in front (db.pooler), or raise PostgreSQL's max_connections and db.maxConnections." $needed (ternary "autoscaling.maxReplicas" "replicaCount" .Values.autoscaling.enabled) $replicas (int .Values.db.poolMax) $budget) }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if lt (int .Values.autoscaling.minReplicas) 1 }}
{{- fail "atlasai-tp: autoscaling.minReplicas must be at least 1" }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "atlasai-tp: autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- $pdb := .Values.ha.podDisruptionBudget }}
{{- if and $pdb.enabled (not $sqlite) }}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "string" $pdb.minAvailable)) }}
{{- $min := int (include "atlasai-tp.minReplicas" .) }}
{{- if ge (int $pdb.minAvailable) $min }}
{{- fail (printf "atlasai-tp: ha.podDisruptionBudget.minAvailable (%d) must be lower than the replica count (%d, %s): otherwise no pod can ever be evicted and node drains block. Lower minAvailable or add replicas." (int $pdb.minAvailable) $min (ternary "autoscaling.minReplicas" "replicaCount" .Values.autoscaling.enabled)) }}
{{- end }}
{{- end }}
{{- if and (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "atlasai-tp: ha.podDisruptionBudget needs minAvailable or maxUnavailable" }}
{{- end }}
{{- end }}
{{- $sd := .Values.shutdown }}
{{- if or (lt (int $sd.drainDelayMs) 0) (lt (int $sd.timeoutMs) 0) (lt (int $sd.extraGraceSeconds) 0) }}
{{- fail "atlasai-tp: shutdown.drainDelayMs, shutdown.timeoutMs and shutdown.extraGraceSeconds must not be negative" }}
{{- end }}
{{- end }}
