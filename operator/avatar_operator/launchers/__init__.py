"""How a local-mode runner is started: one `base.Launcher` protocol, one module per way."""

from __future__ import annotations

from avatar_operator import settings as settings_mod
from avatar_operator.launchers import base, pod


def make(kind: settings_mod.Launcher, kube: pod.Kube, post_pod: base.PostPod) -> base.Launcher:
    """The launcher the settings name."""
    if kind == settings_mod.Launcher.PROCESS:
        from avatar_operator.launchers import process  # dev only: needs the runner package

        return process.ProcessLauncher(post_pod)
    return pod.PodLauncher(kube)
