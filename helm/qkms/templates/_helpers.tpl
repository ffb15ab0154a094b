{{/* The namespace qkms runs in: namespace.name, else the release namespace. */}}
{{- define "qkms.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* Labels on every object. No Helm-only labels: the rendering equals manifests/. */}}
{{- define "qkms.labels" -}}
app.kubernetes.io/name: qkms
app.kubernetes.io/part-of: qkms
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The operator pods: selector labels (stable across upgrades). */}}
{{- define "qkms.selectorLabels" -}}
app.kubernetes.io/name: qkms
app.kubernetes.io/component: operator
{{- end -}}

{{- define "qkms.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The restricted Pod Security profile, for every container. */}}
{{- define "qkms.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The Secret the data plane serves from: dataPlane.tlsSecretName, else the one the
cert-manager Certificate writes when dataPlane.certManager.issuerRef names an issuer, else
none (qkms's own CA). */}}
{{- define "qkms.tlsSecretName" -}}
{{- if .Values.dataPlane.tlsSecretName -}}
{{- .Values.dataPlane.tlsSecretName -}}
{{- else if .Values.dataPlane.certManager.issuerRef.name -}}
qkms-data-plane-tls
{{- end -}}
{{- end -}}
