"""The Helm chart against the real stack: lint, strict schema validation, install, RBAC as granted.

kubeconform's schemas come from this API server (tests/integration/kubeconform_schemas.py):
there is no internet to download them, and they describe the cluster the chart
is installed on. The install goes into avatar-system, which enforces the
`restricted` Pod Security Standard, so the operator pod must be admitted by it;
kwok then marks it Running and Ready (no container runs). Helm never deletes
the CRDs it installed from crds/; they stay for the other suites, which use them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import yaml
from avatar_operator.api import names
from avatar_runner import contract

from tests.conftest import ROOT, Stack
from tests.harness import finalizer_policy
from tests.integration import kubeconform_schemas

pytestmark = pytest.mark.stack

CHART = ROOT / "charts" / "avatar-operator"
RELEASE_NAMESPACE = "avatar-system"

NETWORK_POLICY = "pool.networkPolicy.enabled=true"
GATEWAY = "gateway.enabled=true"
# Rendered variants: both modes, each alone, with peering and with the pool
# runners' NetworkPolicy, with the ServiceMonitor on and off.
VARIANTS: dict[str, tuple[str, ...]] = {
    "namespaced": (),
    "namespaced-peering": ("watchNamespaces={a,b}", "replicaCount=2"),
    "namespaced-networkpolicy": ("watchNamespaces={a,b}", NETWORK_POLICY),
    "cluster": ("clusterWide=true",),
    "cluster-peering": ("clusterWide=true", "replicaCount=2"),
    "cluster-networkpolicy": ("clusterWide=true", NETWORK_POLICY, "pool.networkPolicy.namespaces={a}"),
    # The gateway: off in every variant above; on with the chart's signing key and plain HTTP, and
    # in cluster mode with a given key and TLS.
    "namespaced-gateway": ("watchNamespaces={a,b}", GATEWAY),
    "cluster-gateway-tls": (
        "clusterWide=true", GATEWAY, "gateway.namespaces={t1}", "gateway.tls.secretName=gw-tls", "gateway.signingKey.secretName=gw-key"
    ),
}


@dataclasses.dataclass(frozen=True)
class Tools:
    stack: Stack
    helm: pathlib.Path
    kubeconform: pathlib.Path

    def run(self, tool: pathlib.Path, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(tool), *args], input=input, capture_output=True, text=True, env=self.stack.process_env(), timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool.name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def helm_(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run(self.helm, *args, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def tools(stack: Stack) -> Tools:
    helm, kubeconform = stack.bin_dir / "helm", stack.bin_dir / "kubeconform"
    missing = [p.name for p in (helm, kubeconform) if not p.exists()]
    if missing:
        message = f"{', '.join(missing)} not in {stack.bin_dir}: run `bash hack/build-binaries.sh`"
        if os.environ.get("AVATAR_REQUIRE_STACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Tools(stack, helm, kubeconform)


def _sets(values: Sequence[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


# --- lint and schema validation ------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(tools: Tools, variant: str) -> None:
    tools.helm_("lint", "--strict", str(CHART), *_sets(VARIANTS[variant]))


@pytest.fixture(scope="module")
def schema_dir(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """kubeconform's per-kind schemas from the live API server, our CRD files and the ServiceMonitor subset."""

    def get_raw(path: str) -> str:
        return tools.stack.kubectl("get", "--raw", path).stdout

    schemas = kubeconform_schemas.from_openapi_v3(kubeconform_schemas.fetch_openapi_v3(get_raw))
    definitions = kubeconform_schemas.definitions_of(schemas)
    for crd_file in sorted((CHART / "crds").glob("*.yaml")):
        # From the file, not the cluster: the chart's CRD is what its objects must match.
        schemas.update(kubeconform_schemas.from_crd(yaml.safe_load(crd_file.read_text()), definitions))
    schemas.update(kubeconform_schemas.service_monitor(definitions))
    directory = tmp_path_factory.mktemp("kubeconform-schemas")
    kubeconform_schemas.write(directory, schemas)
    return directory


def _kubeconform(tools: Tools, schema_dir: pathlib.Path, manifests: str) -> subprocess.CompletedProcess[str]:
    return tools.run(
        tools.kubeconform,
        "-strict",
        "-summary",
        "-output", "text",
        "-schema-location", str(schema_dir / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
        "-",
        input=manifests,
        check=False,
    )


@pytest.mark.parametrize("service_monitor", [False, True], ids=["no-servicemonitor", "servicemonitor"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_chart_passes_kubeconform_strict(tools: Tools, schema_dir: pathlib.Path, variant: str, service_monitor: bool) -> None:
    values = (*VARIANTS[variant], f"serviceMonitor.enabled={str(service_monitor).lower()}")
    rendered = tools.helm_("template", "rel", str(CHART), "--namespace", RELEASE_NAMESPACE, "--include-crds", *_sets(values)).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert ("ServiceMonitor" in kinds) is service_monitor
    assert ("NetworkPolicy" in kinds) is (NETWORK_POLICY in values)
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole"} <= kinds
    proc = _kubeconform(tools, schema_dir, rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every object was checked against a schema: none skipped, none without one.
    assert f"Valid: {len([d for d in yaml.safe_load_all(rendered) if d])}," in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("kind", "document"),
    [
        ("Deployment", {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "securityContxt": {}}]}}}}),
        ("ServiceMonitor", {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
                            "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "30s"}]}}),
        ("KopfPeering", {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "x"}, "spec": {}}),
        ("AvatarSession", {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": "x"},
                           "spec": {"room": "r", "agentIdentity": "a", "modelPath": "/m.imx", "romo": 1}}),
        ("AvatarPool", {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarPool", "metadata": {"name": "x"},
                        "spec": {"modelPath": "/m/a.imx", "replica": 2}}),
        ("NetworkPolicy", {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "x"},
                           "spec": {"podSelector": {}, "ingres": []}}),
    ],
)
def test_generated_schemas_refuse_unknown_fields(tools: Tools, schema_dir: pathlib.Path, kind: str, document: dict[str, Any]) -> None:
    """The strict check above is only worth something if a misspelt field fails it."""
    proc = _kubeconform(tools, schema_dir, yaml.safe_dump(document))
    assert proc.returncode != 0 and "Invalid: 1" in proc.stdout, proc.stdout + proc.stderr


# --- install on the stack ---------------------------------------------------


def _rules_review(stack: Stack, user: str, namespace: str) -> list[dict[str, Any]]:
    """The resource rules `user` holds in `namespace` (what `kubectl auth can-i --list` prints)."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}}
    out = stack.kubectl("create", "--validate=false", "-o", "json", f"--as={user}", "-f", "-", input=json.dumps(review)).stdout
    return list(json.loads(out)["status"]["resourceRules"])


def _can(stack: Stack, user: str, verb: str, resource: str, *where: str) -> bool:
    proc = stack.kubectl("auth", "can-i", verb, resource, f"--as={user}", *where, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stdout + proc.stderr
    return answer == "yes"


# What the operator and kopf call (see the chart's templates/rbac.yaml): each must be granted where sessions live.
NEEDED = [
    ("list", "avatarsessions.avatar-operator.dev", ()),
    ("watch", "avatarsessions.avatar-operator.dev", ()),
    ("patch", "avatarsessions.avatar-operator.dev", ()),
    ("delete", "avatarsessions.avatar-operator.dev", ()),  # spec.ttlSecondsAfterFinished
    ("patch", "avatarsessions.avatar-operator.dev", ("--subresource=status",)),
    ("update", "avatarsessions.avatar-operator.dev", ("--subresource=finalizers",)),
    # The pool controller: kopf's watch-stream, a session's poolRef read by name, the status it writes.
    ("get", "avatarpools.avatar-operator.dev", ()),
    ("list", "avatarpools.avatar-operator.dev", ()),
    ("watch", "avatarpools.avatar-operator.dev", ()),
    ("patch", "avatarpools.avatar-operator.dev", ()),
    ("get", "avatarpools.avatar-operator.dev", ("--subresource=status",)),
    ("patch", "avatarpools.avatar-operator.dev", ("--subresource=status",)),
    ("update", "avatarpools.avatar-operator.dev", ("--subresource=finalizers",)),
    ("get", "pods", ()),
    ("list", "pods", ()),
    ("watch", "pods", ()),
    ("create", "pods", ()),
    ("delete", "pods", ()),
    ("get", "secrets", ()),
    ("create", "secrets", ()),
    ("delete", "secrets", ()),
    ("get", "configmaps", ()),
    ("create", "events", ()),
]


@dataclasses.dataclass
class Release:
    name: str
    fullname: str
    user: str


@pytest.fixture
def install(tools: Tools) -> Iterator[Any]:
    """Installs the chart under a fresh release name; uninstalls whatever was installed."""
    installed: list[str] = []

    def do(*values: str) -> Release:
        name = f"chart-{uuid.uuid4().hex[:8]}"
        installed.append(name)
        tools.helm_("install", name, str(CHART), "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "90s", *_sets(values), timeout=120)
        fullname = f"{name}-avatar-operator"
        return Release(name, fullname, f"system:serviceaccount:{RELEASE_NAMESPACE}:{fullname}")

    yield do
    for name in installed:
        tools.helm_("uninstall", name, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "60s", check=False)


def _assert_running_restricted(stack: Stack, release: Release, replicas: int) -> None:
    deployment = json.loads(stack.kubectl("get", "deployment", release.fullname, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    assert deployment["status"].get("availableReplicas") == replicas
    pods = json.loads(stack.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-l", f"app.kubernetes.io/instance={release.name}", "-o", "json").stdout)["items"]
    # In a namespace enforcing `restricted`, a pod exists only if admission passed it.
    assert len(pods) == replicas
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-")
        assert pod["status"]["phase"] == "Running"
    labels = json.loads(stack.kubectl("get", "namespace", RELEASE_NAMESPACE, "-o", "json").stdout)["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    for crd in ("avatarsessions.avatar-operator.dev", "avatarpools.avatar-operator.dev", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        stack.kubectl("get", "crd", crd)


def _assert_no_wildcards_no_secret_listing(stack: Stack, user: str, namespaces: Sequence[str]) -> None:
    for ns in namespaces:
        for rule in _rules_review(stack, user, ns):
            assert "*" not in rule["verbs"] + rule["resources"] + rule.get("apiGroups", []), rule
            if "secrets" in rule["resources"]:
                assert not {"list", "watch"} & set(rule["verbs"]), rule
    for verb in ("list", "watch"):
        assert not _can(stack, user, verb, "secrets", "--all-namespaces")
        for ns in namespaces:
            assert not _can(stack, user, verb, "secrets", "-n", ns)


def test_namespaced_install_grants_only_the_watched_namespaces(stack: Stack, tools: Tools, install: Any, namespace: str, tmp_path: pathlib.Path) -> None:
    release = install(f"watchNamespaces={{{namespace}}}", "replicaCount=2")
    _assert_running_restricted(stack, release, replicas=2)
    stack.kubectl("get", "kopfpeering", release.fullname, "-n", namespace)

    user = release.user
    for verb, resource, extra in NEEDED:
        assert _can(stack, user, verb, resource, "-n", namespace, *extra), f"{verb} {resource} {extra} in {namespace}"
        # Nothing about sessions, pods or secrets outside the watched namespace.
        assert not _can(stack, user, verb, resource, "-n", "default", *extra), f"{verb} {resource} {extra} in default"
        assert not _can(stack, user, verb, resource, "--all-namespaces", *extra), f"{verb} {resource} {extra} cluster-wide"
    assert _can(stack, user, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not _can(stack, user, "get", "customresourcedefinitions.apiextensions.k8s.io")
    assert _can(stack, user, "patch", f"kopfpeerings.kopf.dev/{release.fullname}", "-n", namespace)
    assert not _can(stack, user, "patch", "kopfpeerings.kopf.dev/someone-else", "-n", namespace)
    _assert_no_wildcards_no_secret_listing(stack, user, [namespace, "default", RELEASE_NAMESPACE])

    _run_operator_as(stack, release, namespace, tmp_path)


def test_cluster_install_grants_secrets_by_name_only(stack: Stack, tools: Tools, install: Any) -> None:
    release = install("clusterWide=true")
    _assert_running_restricted(stack, release, replicas=1)
    user = release.user
    for verb, resource, extra in NEEDED:
        assert _can(stack, user, verb, resource, "--all-namespaces", *extra), f"{verb} {resource} {extra} cluster-wide"
    assert not _can(stack, user, "list", "namespaces")  # kopf needs no namespace listing in cluster mode
    assert not _can(stack, user, "patch", "clusterkopfpeerings.kopf.dev")  # standalone: no peering rights
    _assert_no_wildcards_no_secret_listing(stack, user, ["default", RELEASE_NAMESPACE])


def test_uninstall_removes_the_grants(stack: Stack, tools: Tools, install: Any, namespace: str) -> None:
    release = install(f"watchNamespaces={{{namespace}}}", NETWORK_POLICY)
    assert _can(stack, release.user, "get", "secrets", "-n", namespace)
    policy = f"{release.fullname}-pool-runners"
    stored = json.loads(stack.kubectl("get", "networkpolicy", policy, "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "pool-runner"
    tools.helm_("uninstall", release.name, "--namespace", RELEASE_NAMESPACE, "--wait")
    assert stack.kubectl("get", "clusterrole", release.fullname, check=False).returncode != 0
    assert stack.kubectl("get", "role", release.fullname, "-n", namespace, check=False).returncode != 0
    assert stack.kubectl("get", "networkpolicy", policy, "-n", namespace, check=False).returncode != 0
    assert not _can(stack, release.user, "get", "secrets", "-n", namespace)


# --- the finalizer at admission (templates/finalizer-policy.yaml) ------------------------

def _with_map_api(tools: Tools, *values: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Rendered for a cluster that serves the API (helm template asks no cluster)."""
    return tools.helm_("template", "rel", str(CHART), "--namespace", RELEASE_NAMESPACE, "--api-versions", finalizer_policy.API, *_sets(values), check=check)


def test_the_finalizer_policy_needs_the_api_and_can_be_turned_off(tools: Tools) -> None:
    assert _of_kind(_render(tools).stdout, "MutatingAdmissionPolicy") == []  # auto, and no API served
    assert _of_kind(_with_map_api(tools, "finalizerAtAdmission=false").stdout, "MutatingAdmissionPolicy") == []
    refused = _render(tools, "finalizerAtAdmission=true", check=False)
    assert refused.returncode != 0 and "finalizerAtAdmission: true needs the MutatingAdmissionPolicy API" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [((), [RELEASE_NAMESPACE]), (("watchNamespaces={a,b}",), ["a", "b"]), (("clusterWide=true",), None)],
    ids=["release-namespace", "watched", "cluster"],
)
def test_the_finalizer_policy_adds_the_operators_finalizer_in_the_served_namespaces(
    tools: Tools, schema_dir: pathlib.Path, values: tuple[str, ...], namespaces: list[str] | None
) -> None:
    rendered = _with_map_api(tools, *values).stdout
    [policy] = _of_kind(rendered, "MutatingAdmissionPolicy")
    [binding] = _of_kind(rendered, "MutatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [names.GROUP], "apiVersions": ["*"], "operations": ["CREATE"], "resources": [names.PLURAL]}
    ]
    # The finalizer kopf is configured with (controller/handlers.py), in both expressions.
    for expression in (policy["spec"]["matchConditions"][0]["expression"], policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]):
        assert f"'{names.FINALIZER}'" in expression
    selector = binding["spec"].get("matchResources", {}).get("namespaceSelector")
    if namespaces is None:
        assert selector is None
    else:
        assert selector == {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]}
    proc = _kubeconform(tools, schema_dir, rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the pool runners' NetworkPolicy --------------------------------------------


def _render(tools: Tools, *values: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return tools.helm_("template", "rel", str(CHART), "--namespace", RELEASE_NAMESPACE, *_sets(values), check=check)


def _of_kind(rendered: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == kind]


def test_the_network_policy_is_off_by_default(tools: Tools) -> None:
    for variant in ("namespaced", "cluster"):
        assert _of_kind(_render(tools, *VARIANTS[variant]).stdout, "NetworkPolicy") == []


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        ((NETWORK_POLICY,), [RELEASE_NAMESPACE]),
        (("watchNamespaces={a,b}", NETWORK_POLICY), ["a", "b"]),
        (("watchNamespaces={a,b}", NETWORK_POLICY, "pool.networkPolicy.namespaces={c}"), ["c"]),
        (("clusterWide=true", NETWORK_POLICY, "pool.networkPolicy.namespaces={a,b}"), ["a", "b"]),
    ],
    ids=["release-namespace", "watched", "named", "cluster"],
)
def test_the_network_policy_admits_only_the_operator_to_the_runners_port(tools: Tools, values: tuple[str, ...], namespaces: list[str]) -> None:
    rendered = _render(tools, *values).stdout
    policies = _of_kind(rendered, "NetworkPolicy")
    assert [p["metadata"]["namespace"] for p in policies] == namespaces
    (deployment,) = _of_kind(rendered, "Deployment")
    operator_labels = deployment["spec"]["template"]["metadata"]["labels"]
    runner_labels = names.pool_labels(names.PoolRef(name="lobby", namespace="a", uid="u"), "lobby-runner-x")
    for policy in policies:
        spec = policy["spec"]
        # It selects the pool runners, as the operator labels them, and no other pod.
        selector = spec["podSelector"]["matchLabels"]
        assert selector.items() <= runner_labels.items() and selector["app.kubernetes.io/component"] == "pool-runner"
        assert spec["policyTypes"] == ["Ingress"]
        # One way in: the serve port, from this release's operator pods in the release namespace.
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": contract.SERVE_PORT}]
        (peer,) = rule["from"]
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}}
        assert peer["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert peer["podSelector"]["matchLabels"].items() <= operator_labels.items()


def test_the_network_policy_in_cluster_mode_needs_its_namespaces(tools: Tools) -> None:
    proc = _render(tools, "clusterWide=true", NETWORK_POLICY, check=False)
    assert proc.returncode != 0 and "/pool/networkPolicy/namespaces" in proc.stderr, proc.stderr
    proc = tools.helm_("template", "rel", str(CHART), "--skip-schema-validation", *_sets(("clusterWide=true", NETWORK_POLICY)), check=False)
    assert proc.returncode != 0 and "needs pool.networkPolicy.namespaces" in proc.stderr, proc.stderr


# --- the Grafana dashboard ConfigMap --------------------------------------------


def test_the_dashboard_configmap_is_opt_in_and_carries_the_sidecar_label(tools: Tools, schema_dir: pathlib.Path) -> None:
    assert _of_kind(_render(tools).stdout, "ConfigMap") == []
    shipped = (CHART / "dashboards" / "avatar-operator.json").read_text()
    for values, namespace in ((("grafanaDashboard.enabled=true",), RELEASE_NAMESPACE),
                              (("grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring"), "monitoring")):
        rendered = _render(tools, *values).stdout
        (cm,) = _of_kind(rendered, "ConfigMap")
        assert cm["metadata"]["namespace"] == namespace
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        # The file as shipped, not templated: its {{legend}} placeholders are Grafana's.
        assert cm["data"]["avatar-operator.json"] == shipped.rstrip("\n")
        assert json.loads(cm["data"]["avatar-operator.json"])["uid"] == "avatar-operator"
        proc = _kubeconform(tools, schema_dir, yaml.safe_dump(cm))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # The API server takes it as it is (names, labels, size).
    tools.stack.kubectl("apply", "--dry-run=server", "-n", RELEASE_NAMESPACE, "-f", "-", input=yaml.safe_dump({**cm, "metadata": {**cm["metadata"], "namespace": RELEASE_NAMESPACE}}))


def test_the_rbac_template_names_each_pool_verb(tools: Tools) -> None:
    """Rendered, not granted: the rules as the chart writes them, in both modes."""
    wanted = {
        "avatarpools": ["get", "list", "watch", "patch"],
        "avatarpools/status": ["get", "patch"],
        "avatarpools/finalizers": ["update"],
        "pods": ["get", "list", "watch", "create", "delete"],
        "secrets": ["get", "create", "delete"],
    }
    for values, kind in (((), "Role"), (("clusterWide=true",), "ClusterRole")):
        (role,) = _of_kind(_render(tools, *values).stdout, kind)
        got = {res: rule["verbs"] for rule in role["rules"] for res in rule["resources"]}
        for resource, verbs in wanted.items():
            assert got.get(resource) == verbs, (kind, resource, got.get(resource))


# --- the gateway -----------------------------------------------------------------

GATEWAY_RULES = {
    "secrets": ["list", "watch", "create", "patch", "delete"],
    "avatarsessions": ["create", "get", "list", "watch", "delete"],
    "avatarpools": ["list"],
}


def _gateway_objects(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"]


def test_the_gateway_is_off_by_default(tools: Tools) -> None:
    for variant in ("namespaced", "cluster"):
        assert _gateway_objects(_render(tools, *VARIANTS[variant]).stdout) == []


def test_the_gateway_renders_restricted_with_only_its_verbs(tools: Tools) -> None:
    rendered = _render(tools, *VARIANTS["namespaced-gateway"]).stdout
    objects = _gateway_objects(rendered)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["Deployment", "Role", "Role", "RoleBinding", "RoleBinding", "Secret", "Service", "ServiceAccount"]
    roles = [o for o in objects if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    for role in roles:
        assert {res: rule["verbs"] for rule in role["rules"] for res in rule["resources"]} == GATEWAY_RULES
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["args"] == ["gateway"] and env["AVATAR_GATEWAY_NAMESPACES"] == "a,b"
    assert env["AVATAR_GATEWAY_SIGNING_KEY_FILE"] == "/var/run/avatar-gateway/signing/signing-key"
    assert "AVATAR_GATEWAY_TLS_CERT_FILE" not in env and container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert pod["securityContext"]["runAsNonRoot"] is True and container["securityContext"]["readOnlyRootFilesystem"] is True
    # Its own ServiceAccount: none of the operator's rights.
    assert pod["serviceAccountName"] == "rel-avatar-operator-gateway"
    # The chart-made signing key: a random value, never in an env var.
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert len(secret["data"]["signing-key"]) >= 48 and all("valueFrom" not in e for e in container["env"])
    # The operator's Deployment is untouched by the gateway's selector and the reverse.
    (operator,) = [d for d in _of_kind(rendered, "Deployment") if d is not deployment and d["metadata"]["name"] == "rel-avatar-operator"]
    assert operator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


def test_the_gateway_in_cluster_mode_with_tls_and_a_given_key(tools: Tools) -> None:
    objects = _gateway_objects(_render(tools, *VARIANTS["cluster-gateway-tls"]).stdout)
    # A Role in the named namespace, never a ClusterRole (which would list every Secret of the cluster).
    assert sorted(o["kind"] for o in objects) == ["Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "t1"
    assert {res: rule["verbs"] for rule in role["rules"] for res in rule["resources"]} == GATEWAY_RULES
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AVATAR_GATEWAY_NAMESPACES"] == "t1" and env["AVATAR_GATEWAY_TLS_CERT_FILE"] == "/var/run/avatar-gateway/tls/tls.crt"
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    volumes = {v["name"]: v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert volumes == {"signing-key": "gw-key", "tls": "gw-tls"}


def test_the_gateway_is_refused_cluster_wide_without_its_namespaces(tools: Tools) -> None:
    proc = _render(tools, "clusterWide=true", GATEWAY, check=False)
    assert proc.returncode != 0 and "needs gateway.namespaces" in proc.stderr, proc.stderr


def test_the_gateway_installs_with_only_its_grants(stack: Stack, tools: Tools, install: Any, namespace: str, tmp_path: pathlib.Path) -> None:
    release = install(f"watchNamespaces={{{namespace}}}", GATEWAY)
    gateway = f"{release.fullname}-gateway"
    deployment = json.loads(stack.kubectl("get", "deployment", gateway, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    # Admitted by the `restricted` namespace and marked Running by kwok.
    assert deployment["status"].get("availableReplicas") == 1
    key = json.loads(stack.kubectl("get", "secret", f"{gateway}-signing-key", "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    assert len(key["data"]["signing-key"]) >= 48
    user = f"system:serviceaccount:{RELEASE_NAMESPACE}:{gateway}"
    for resource, verbs in GATEWAY_RULES.items():
        qualified = resource if resource == "secrets" else f"{resource}.{names.GROUP}"
        for verb in verbs:
            assert _can(stack, user, verb, qualified, "-n", namespace), (verb, qualified)
            assert not _can(stack, user, verb, qualified, "-n", "default"), (verb, qualified)
    for verb, resource in (("get", "secrets"), ("get", "pods"), ("create", "pods"), ("patch", "avatarsessions.avatar-operator.dev")):
        assert not _can(stack, user, verb, resource, "-n", namespace), (verb, resource)
    # The operator's grants are the operator's: it still lists no Secret.
    _assert_no_wildcards_no_secret_listing(stack, release.user, [namespace, "default", RELEASE_NAMESPACE])
    _run_gateway_as(stack, Release(release.name, gateway, user), namespace, tmp_path)


def _run_gateway_as(stack: Stack, release: Release, namespace: str, tmp_path: pathlib.Path) -> None:
    """`avatar-operator gateway` with only the chart's grants: it lists and watches the tenant Secrets
    (/readyz), picks the pool, creates a session and its image Secret (and owns it), watches it, and,
    with no slot in the admission wait, deletes it and answers 503; no call is refused."""
    import base64
    import io

    from livekit import api as lk_api
    from PIL import Image

    from tests.harness.gateway_process import GatewayProcess

    tenant = {
        "LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret,
        "GATEWAY_API_KEYS": "chart-test-key", "DEFAULT_POOL": "p",
    }
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t", "namespace": namespace, "labels": {names.GATEWAY_TENANT_LABEL: "true"}},
        "stringData": tenant,
    }))
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": names.API_VERSION, "kind": names.POOL_KIND, "metadata": {"name": "p", "namespace": namespace},
        "spec": {"replicas": 0, "modelPath": "/models/x.imx"},
    }))
    env = {**stack.process_env(), "KUBECONFIG": str(_kubeconfig_for(stack, release, tmp_path / "gateway.kubeconfig"))}
    gateway = GatewayProcess(env, tmp_path / "gateway.log", namespaces=(namespace,), extra={"AVATAR_GATEWAY_ADMISSION_WAIT_S": "1"})
    gateway.start()
    try:
        token = (
            lk_api.AccessToken(stack.livekit_api_key, stack.livekit_api_secret).with_kind("agent").with_identity("avatar")
            .with_grants(lk_api.VideoGrants(room_join=True, room="r")).with_attributes({"lk.publish_on_behalf": "agent"}).to_jwt()
        )
        png = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 120, 90)).save(png, format="PNG")  # the gateway reads it before it makes the Secret
        image = base64.b64encode(png.getvalue()).decode()
        fields = {"livekit_url": stack.livekit_url, "livekit_token": token, "room_name": "r", "avatar_image": image}
        req = urllib.request.Request(
            f"{gateway.url}/launch", data=urllib.parse.urlencode(fields).encode(), method="POST",
            headers={"Authorization": "Bearer chart-test-key", "Content-Type": "application/x-www-form-urlencoded"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=30)
        assert caught.value.code == 503 and caught.value.headers["Retry-After"] == "2", caught.value.read()
        # Deleted by the gateway. The release's finalizer policy may have put the operator's finalizer
        # on, and no operator runs here (its pods are on kwok): then the session waits, Terminating.
        left = json.loads(stack.kubectl("get", "avs", "-n", namespace, "-o", "json").stdout)["items"]
        assert all(s["metadata"].get("deletionTimestamp") for s in left), left
        for s in left:
            stack.kubectl("patch", "avs", s["metadata"]["name"], "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    finally:
        gateway.stop()
    text = gateway.logs()
    denied = [line for line in text.splitlines() if "403" in line or "Forbidden" in line or "HTTP 4" in line]
    assert not denied and "-> 503" in text, text[-3000:]


# --- the operator itself, with only the chart's grants ------------------------


def _kubeconfig_for(stack: Stack, release: Release, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig that authenticates as the release's ServiceAccount (a short-lived token)."""
    token = stack.kubectl("create", "token", release.fullname, "-n", RELEASE_NAMESPACE, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(pathlib.Path(stack.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _run_operator_as(stack: Stack, release: Release, namespace: str, tmp_path: pathlib.Path) -> None:
    """`avatar-operator run` with the chart's command line and only the chart's RBAC: kopf starts without a 403.

    Namespaced mode only: in cluster mode this process would serve every
    namespace, other tests' sessions included. Its watched namespace is the
    test's own, empty one, so it handles nothing; what this proves is that
    discovery, the CRD and namespace observers, the AvatarSession and Pod
    watch-streams and the peering keep-alives are all allowed."""
    env = stack.process_env()
    env["KUBECONFIG"] = str(_kubeconfig_for(stack, release, tmp_path / "operator.kubeconfig"))
    env["POD_ID"] = f"{release.fullname}-test"
    for key in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        env.pop(key, None)
    log = tmp_path / "operator.log"
    args = [sys.executable, "-m", "avatar_operator", "run", f"--namespace={namespace}", f"--peering={release.fullname}",
            "--liveness=http://127.0.0.1:0/healthz", "--verbose"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wanted = [
            f"Keep-alive in '{release.fullname}' in '{namespace}': ok",
            f"Starting the watch-stream for avatarsessions.v1alpha1.avatar-operator.dev in '{namespace}'",
            f"Starting the watch-stream for pods.v1 in '{namespace}'",
            "Starting the watch-stream for customresourcedefinitions.v1.apiextensions.k8s.io cluster-wide",
            "Starting the watch-stream for namespaces.v1 cluster-wide",
        ]
        deadline = time.monotonic() + 45
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace")
            if all(w in text for w in wanted):
                break
            time.sleep(0.3)
        time.sleep(2)  # let a failing first list/watch, if any, reach the log
        text = log.read_text(errors="replace")
        missing = [w for w in wanted if w not in text]
        assert not missing, f"not seen in the operator's log: {missing}\n{text[-4000:]}"
        # A whole-word 403: the release's random name may hold those digits (chart-1403f12a did).
        denied = [line for line in text.splitlines() if re.search(r"\b403\b", line) or "Forbidden" in line or "Not enough permissions" in line]
        assert not denied, "\n".join(denied)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
