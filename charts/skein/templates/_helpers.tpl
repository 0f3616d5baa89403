{{/* The chart's name, or nameOverride. */}}
{{- define "skein.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name, the StatefulSet's and so the pods' prefix (skein-0, skein-1, ...).
A release named like the chart is not repeated: release "skein" gives "skein".
*/}}
{{- define "skein.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "skein.headless" -}}
{{- printf "%s-headless" (include "skein.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skein.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skein.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skein.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "skein.labels" -}}
helm.sh/chart: {{ include "skein.chart" . }}
{{ include "skein.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "skein.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "skein.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "skein.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Pod i's stable DNS name under the headless Service. */}}
{{- define "skein.podHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "skein.fullname" $root) (index . 1) (include "skein.headless" $root) $root.Release.Namespace $root.Values.clusterDomain -}}
{{- end -}}

{{/* The static peers: node i+1 at pod i's headless name, for the first initialMembers pods. */}}
{{- define "skein.peers" -}}
{{- $root := . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.cluster.initialMembers) -}}
{{- $peers = append $peers (printf "%d@%s:%d" (add1 $i) (include "skein.podHost" (list $root $i)) (int $root.Values.ports.grpc)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{- define "skein.join" -}}
{{- if .Values.cluster.join -}}
{{- .Values.cluster.join -}}
{{- else -}}
{{- printf "%s:%d" (include "skein.podHost" (list . 0)) (int .Values.ports.grpc) -}}
{{- end -}}
{{- end -}}

{{/* Settings the chart sets itself: `config` may not name them. */}}
{{- define "skein.reservedSettings" -}}
node_id node_id_from_hostname node_name advertise_addr data_dir mqtt http grpc grpc_advertise peers join api_token password_file mqtts ws wss tls_cert_file tls_key_file tls_client_ca_file tls_client_cert acl_file jwt_secret jwt_public_key_file auth_http_url auth_http_timeout_ms auth_http_cache_ms auth_http_concurrency auth_http_on_error auth_http_acl_url auth_http_acl_timeout_ms auth_http_acl_cache_ms auth_http_acl_concurrency auth_http_acl_on_error
{{- end -}}

{{/*
A setting's value as the binary reads it. Helm reads numbers in values as floats, which
print as 1e+06: a whole number prints as one.
*/}}
{{- define "skein.settingValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else if kindIs "slice" . -}}
{{- join "," . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
