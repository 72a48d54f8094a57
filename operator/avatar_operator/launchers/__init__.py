"""How a local-mode runner is started: one `base.Launcher` protocol, one module per way."""

from __future__ import annotations

from avatar_operator import settings as settings_mod
from avatar_operator.launchers import base, pod, pool_pod


def make(kind: settings_mod.Launcher, kube: pod.Kube, post_pod: base.PostPod) -> base.Launcher:
    """The launcher the settings name."""
    if kind == settings_mod.Launcher.PROCESS:
        from avatar_operator.launchers import process  # dev only: needs the runner package

        return process.ProcessLauncher(post_pod)
    return pod.PodLauncher(kube)


def make_pool(kind: settings_mod.Launcher, kube: pool_pod.Kube) -> base.PoolLauncher:
    """The pool launcher the settings name: runners as Pods, or as local processes."""
    if kind == settings_mod.Launcher.PROCESS:
        from avatar_operator.launchers import pool_process  # dev only: needs the runner package

        return pool_process.ProcessPoolLauncher()
    return pool_pod.PodPoolLauncher(kube)
