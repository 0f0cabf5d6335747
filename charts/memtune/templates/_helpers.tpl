{{/* Release-scoped name of every object: "<release>-memtune", or the release name when it already says memtune. */}}
{{- define "memtune.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "memtune.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "memtune.labels" -}}
{{ include "memtune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "memtune.serviceAccountName" -}}
{{- default (include "memtune.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* "repo@digest" when a digest is set, else "repo:tag" with the tag defaulting to appVersion. Argument: dict with image and root. */}}
{{- define "memtune.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Rules the operator needs in every namespace it watches: exactly the calls memtune/operator makes
(memtune.operator.rbac.NAMESPACED_RULES; tests/operator checks every request against them). No Secrets. */}}
{{- define "memtune.namespacedRules" -}}
- apiGroups: ["memtune.dev"]
  resources: ["memorytuningjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["memtune.dev"]
  resources: ["memorytuningjobs/status"]
  verbs: ["patch"]
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- /* Serving: each MemoryModel becomes a Deployment and a Service (memtune/operator/serving.py), owned by it:
Kubernetes' garbage collector deletes them with it, so the operator never lists, watches or deletes them. */}}
- apiGroups: ["memtune.dev"]
  resources: ["memorymodels"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["memtune.dev"]
  resources: ["memorymodels/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
{{- end -}}
