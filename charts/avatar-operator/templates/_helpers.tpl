{{/* Names, labels and the computed settings every template shares. */}}

{{- define "avatar-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; every object the chart creates is named from it. */}}
{{- define "avatar-operator.fullname" -}}
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

{{- define "avatar-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What selects the operator's pods; never changes after install (Deployment selectors are immutable). */}}
{{- define "avatar-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "avatar-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "avatar-operator.labels" -}}
helm.sh/chart: {{ include "avatar-operator.chart" . }}
{{ include "avatar-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: avatar-operator
{{- /* Not "avatar-operator": the operator's runner pods carry managed-by=avatar-operator and it watches that label. */}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "avatar-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "avatar-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Cluster mode, with the contradiction refused even when the schema is skipped. */}}
{{- define "avatar-operator.clusterWide" -}}
{{- if and .Values.clusterWide .Values.watchNamespaces }}
{{- fail "clusterWide: true serves every namespace; leave watchNamespaces empty" }}
{{- end }}
{{- if .Values.clusterWide }}true{{ end }}
{{- end }}

{{/* The namespaces served in namespaced mode, one per line: watchNamespaces, or the release namespace. */}}
{{- define "avatar-operator.namespaces" -}}
{{- if .Values.watchNamespaces }}
{{- join "\n" (uniq .Values.watchNamespaces) }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Peering (several replicas, one active) or --standalone. */}}
{{- define "avatar-operator.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{- define "avatar-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "avatar-operator.runnerImage" -}}
{{- printf "%s:%s" .Values.runner.image.repository (default .Chart.AppVersion .Values.runner.image.tag) }}
{{- end }}

{{/* The MutatingAdmissionPolicy API the finalizer policy uses (finalizerAtAdmission), or nothing. */}}
{{- define "avatar-operator.admissionPolicyApi" -}}
{{- $want := toString .Values.finalizerAtAdmission }}
{{- if ne $want "false" }}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" }}admissionregistration.k8s.io/v1
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy" }}admissionregistration.k8s.io/v1beta1
{{- else if eq $want "true" }}
{{- fail "finalizerAtAdmission: true needs the MutatingAdmissionPolicy API (admissionregistration.k8s.io/v1beta1 on Kubernetes 1.34 with the MutatingAdmissionPolicy feature gate, or v1); set it to auto or false" }}
{{- end }}
{{- end }}
{{- end }}
