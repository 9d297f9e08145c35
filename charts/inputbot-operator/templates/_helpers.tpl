{{/* The chart name, truncated to a DNS label. */}}
{{- define "inputbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name. */}}
{{- define "inputbot.fullname" -}}
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

{{/* Labels of every object of the release. */}}
{{- define "inputbot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "inputbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inputbot
{{- end }}

{{/* Labels selecting the operator's pods. */}}
{{- define "inputbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inputbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "inputbot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inputbot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image. */}}
{{- define "inputbot.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The runtime image the operator puts into every bot Deployment. */}}
{{- define "inputbot.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtime.image.repository (default .Chart.AppVersion .Values.runtime.image.tag) }}
{{- end }}

{{/*
The rules the operator needs in every namespace it watches: one list, used by the ClusterRole
(all namespaces) and by each Role (namespaced mode), so the two modes cannot differ.
*/}}
{{- define "inputbot.watchRules" -}}
# The three kinds: watched by the controllers (get/list/watch); finalizers are added and
# removed with patches (patch/update). The operator never creates or deletes them.
- apiGroups: ["inputbot.dev"]
  resources: ["inputbots", "pipelines", "actionbindings"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Status: Ready and the other conditions, observedGeneration, endpoints, topics.
- apiGroups: ["inputbot.dev"]
  resources: ["inputbots/status", "pipelines/status", "actionbindings/status"]
  verbs: ["patch", "update"]
# Every child's owner reference sets blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only to who may update the
# owner's finalizers subresource.
- apiGroups: ["inputbot.dev"]
  resources: ["inputbots/finalizers", "pipelines/finalizers", "actionbindings/finalizers"]
  verbs: ["update"]
# The children: a ConfigMap with each component's resolved config and the Service in front of
# ingest. Server-side applied (patch; create is what an apply of a new object is checked
# against), watched by metadata (list/watch) so a deleted or edited child comes back, and
# pruned (delete) when the spec no longer asks for them.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The runtime Deployments: the same life cycle; get also reads their status for
# WorkloadReady.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# CPU autoscaling of each component.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The ingest PodDisruptionBudget.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The optional Ingress of spec.ingest.expose.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Kafka-lag autoscaling when KEDA is installed (harmless without it).
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Events for every status transition and failure (kube-rs' recorder: events.k8s.io/v1,
# created, then patched as a series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Strimzi mode only: the KafkaTopic of each topic (read, applied, deleted with
deletionPolicy Delete). No update: every write is a server-side apply. */}}
{{- define "inputbot.strimziRules" -}}
- apiGroups: ["kafka.strimzi.io"]
  resources: ["kafkatopics"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}
