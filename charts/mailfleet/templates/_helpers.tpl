{{/* The chart's name, as users may shorten it. */}}
{{- define "mailfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object of this release. A release called `mailfleet` (the
documented install) gives `mailfleet`, the name the operator's default
feedback URL uses; other release names get `<release>-mailfleet`, and the
Deployment passes the matching --feedback-url explicitly anyway.
*/}}
{{- define "mailfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "mailfleet.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mailfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "mailfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mailfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mailfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Annotations of every object (commonAnnotations), as a YAML map or nothing. */}}
{{- define "mailfleet.commonAnnotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* [registry/]repository: image.registry, else global.imageRegistry, else none. */}}
{{- define "mailfleet.repository" -}}
{{- $registry := .Values.image.registry }}
{{- if and (not $registry) .Values.global }}
{{- $registry = .Values.global.imageRegistry | default "" }}
{{- end }}
{{- if $registry }}
{{- printf "%s/%s" (trimSuffix "/" $registry) .Values.image.repository }}
{{- else }}
{{- .Values.image.repository }}
{{- end }}
{{- end }}

{{/* [registry/]repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "mailfleet.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" (include "mailfleet.repository" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" (include "mailfleet.repository" .) $tag }}
{{- end }}
{{- end }}

{{/* The sender image: <registry/repository>-sender with the operator's tag unless set. */}}
{{- define "mailfleet.senderImage" -}}
{{- default (printf "%s-sender:%s" (include "mailfleet.repository" .) (default .Chart.AppVersion .Values.image.tag)) .Values.operator.senderImage }}
{{- end }}

{{- define "mailfleet.agentImage" -}}
{{- default (include "mailfleet.image" .) .Values.operator.agentImage }}
{{- end }}

{{/* Where sender sidecars post their reports: this release's Service. */}}
{{- define "mailfleet.feedbackUrl" -}}
{{- default (printf "%s://%s.%s.svc:%d/v1/feedback" (ternary "https" "http" .Values.tls.enabled) (include "mailfleet.fullname" .) .Release.Namespace (int .Values.service.port)) .Values.operator.feedbackUrl }}
{{- end }}

{{/*
Who provides the feedback port's certificate with tls.enabled: "certManager"
(a Certificate the chart renders), "secret" (tls.secretName, brought by the
user) or "operator" (neither: the operator makes and renews it in its own
Secret, --feedback-tls-secret). Empty without TLS.
*/}}
{{- define "mailfleet.tlsMode" -}}
{{- if .Values.tls.enabled }}
{{- if .Values.tls.certManager.enabled }}certManager
{{- else if .Values.tls.secretName }}secret
{{- else }}operator
{{- end }}
{{- end }}
{{- end }}

{{/*
The kubernetes.io/tls Secret of the feedback port.
*/}}
{{- define "mailfleet.tlsSecretName" -}}
{{- if eq (include "mailfleet.tlsMode" .) "operator" }}
{{- printf "%s-feedback-tls" (include "mailfleet.fullname" .) }}
{{- else }}
{{- default (printf "%s-tls" (include "mailfleet.fullname" .)) .Values.tls.secretName }}
{{- end }}
{{- end }}

{{/*
The Secret's key holding the CA the agents (and Prometheus) trust.
*/}}
{{- define "mailfleet.tlsCaKey" -}}
{{- if eq (include "mailfleet.tlsMode" .) "operator" }}ca.crt{{ else }}{{ .Values.tls.caKey }}{{ end }}
{{- end }}

{{/*
An object's annotations: commonAnnotations merged with the object's own
(.extra wins), as a YAML map, or nothing.
*/}}
{{- define "mailfleet.annotations" -}}
{{- $all := merge (deepCopy (default (dict) .extra)) (deepCopy (default (dict) .ctx.Values.commonAnnotations)) }}
{{- with $all }}
{{- toYaml . }}
{{- end }}
{{- end }}
