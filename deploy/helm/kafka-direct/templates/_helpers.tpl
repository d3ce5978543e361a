{{/* The chart's name, or nameOverride. */}}
{{- define "kafka-direct.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects. A StatefulSet's pods are named <name>-<ordinal>
and carry a controller-revision-hash label of the name plus 11 characters, so it is
kept to 52 characters.
*/}}
{{- define "kafka-direct.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kafka-direct.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kafka-direct.labels" -}}
helm.sh/chart: {{ include "kafka-direct.chart" . }}
{{ include "kafka-direct.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kafka-direct.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kafka-direct.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kafka-direct.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the config file is mounted. */}}
{{- define "kafka-direct.configFile" -}}
/etc/kafka-direct/kafka-direct.toml
{{- end }}

{{/* The file holding the API token, when apiToken.existingSecret is set. */}}
{{- define "kafka-direct.apiTokenFile" -}}
{{- printf "%s/api-token/%s" (trimSuffix "/" .Values.secretsDir) .Values.apiToken.key }}
{{- end }}

{{/*
A value of the config file: a TOML basic string. JSON's string escapes are TOML's, so a
string is written as toJson writes it; numbers and booleans become strings (toJson
writes a whole number without an exponent); a list is joined with commas.
*/}}
{{- define "kafka-direct.tomlValue" -}}
{{- if kindIs "map" . }}
{{- fail "kafka-direct: a value of config or connector is a map: write each kafka-direct key flat, e.g. `internal.bootstrap.servers: host:9092`" }}
{{- else if kindIs "slice" . }}
{{- join "," . | toJson }}
{{- else if kindIs "string" . }}
{{- toJson . }}
{{- else }}
{{- toJson . | quote }}
{{- end }}
{{- end }}

{{/* `"key" = "value"` lines of a map, keys sorted, null values left out. */}}
{{- define "kafka-direct.tomlKeys" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ toJson $key }} = {{ include "kafka-direct.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
