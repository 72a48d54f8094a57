"""The chart's finalizer policy (templates/finalizer-policy.yaml) on the local stack, for an
operator run as a process: rendered by helm from the chart itself, so the tests and the bench
run with the policy a user installs, not a copy of it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence

from avatar_operator.api import names

from tests.harness.stack import ROOT, Stack

CHART = ROOT / "charts" / "avatar-operator"
TEMPLATE = "templates/finalizer-policy.yaml"
# What the stack's kube-apiserver serves (hack/stack.py enables it); helm template has no cluster to ask.
API = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"
RELEASE = "avop"
# A spec the CRD admits, for the dry-run that tells when the policy is in force.
PROBE_SPEC = {"room": "probe", "agentIdentity": "agent", "avatarId": "A-probe"}


def render(stack: Stack, namespaces: Sequence[str] | None, *, release: str = RELEASE) -> str:
    """The policy and its binding for these namespaces (None: every namespace, cluster mode)."""
    served = ["--set", "clusterWide=true"] if namespaces is None else ["--set-json", f"watchNamespaces={json.dumps(list(namespaces))}"]
    argv = [
        str(stack.bin_dir / "helm"), "template", release, str(CHART), "--show-only", TEMPLATE,
        "--api-versions", API, "--set", "finalizerAtAdmission=true", *served,
    ]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def install(stack: Stack, namespaces: Sequence[str] | None, *, release: str = RELEASE) -> None:
    """Applies the policy (replacing the release's earlier one) and waits until it is in force in
    the first namespace named."""
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=render(stack, namespaces, release=release))
    if namespaces:
        wait_in_force(stack, namespaces[0])


def remove(stack: Stack, *, release: str = RELEASE) -> None:
    """Deletes the release's policy and binding (the objects `render` names, whatever namespaces)."""
    stack.kubectl("delete", "--ignore-not-found", "--wait", "-f", "-", input=render(stack, None, release=release))


def finalizers_at_create(stack: Stack, namespace: str) -> list[str]:
    """The finalizers a session created in `namespace` gets from admission (a server-side dry run)."""
    got = _dry_run(stack, namespace, check=True)
    return list(json.loads(got.stdout)["metadata"].get("finalizers") or [])


def _dry_run(stack: Stack, namespace: str, *, check: bool) -> subprocess.CompletedProcess[str]:
    manifest = {"apiVersion": names.API_VERSION, "kind": names.KIND, "metadata": {"name": "probe", "namespace": namespace}, "spec": PROBE_SPEC}
    return stack.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(manifest), check=check)


def wait_in_force(stack: Stack, namespace: str, timeout: float = 30.0) -> None:
    """The API server reads policies through an informer: a new one takes effect a moment later.
    A CRD just Established may still be refused for a moment (ServiceUnavailable): asked again."""
    deadline = time.monotonic() + timeout
    while True:
        got = _dry_run(stack, namespace, check=False)
        if got.returncode == 0 and names.FINALIZER in (json.loads(got.stdout)["metadata"].get("finalizers") or []):
            return
        if got.returncode != 0 and "ServiceUnavailable" not in got.stderr:
            raise AssertionError(f"the probe session was refused: {got.stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the finalizer policy was not in force in {namespace} after {timeout:g}s: {got.stderr}")
        time.sleep(0.2)
