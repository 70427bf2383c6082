{{- define "glmserve.name" -}}glmserve-operator{{- end -}}

{{- define "glmserve.labels" -}}
app.kubernetes.io/name: glmserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "glmserve.selector" -}}
app.kubernetes.io/name: glmserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "glmserve.operatorImage" -}}
{{ .Values.images.operator | default (printf "%s/operator:%s" .Values.images.registry (.Values.images.tag | default .Chart.AppVersion)) }}
{{- end -}}

{{- define "glmserve.servingImage" -}}
{{ .Values.images.serving | default (printf "%s/serving:%s" .Values.images.registry (.Values.images.tag | default .Chart.AppVersion)) }}
{{- end -}}

{{- define "glmserve.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://{{ .Release.Name }}-redis.{{ .Release.Namespace }}.svc:6379/0
{{- else -}}
{{ .Values.externalRedisUrl }}
{{- end -}}
{{- end -}}
