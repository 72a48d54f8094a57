"""One namespace with what a gateway needs, on the real stack: an operator (process
launcher, portrait renderer, as tests/e2e/test_pool.py runs it), a warm AvatarPool,
a tenant Secret, and `avatar-operator gateway` (tests/harness/gateway_process.py)
watching that namespace alone.

    bed = GatewayBed(stack, work_dir, BedConfig(runners=2, slots=5))
    bed.up()        # pool Ready, gateway ready
    ...             # bed.gateway_url, bed.api_key, bed.sessions(), bed.logs()
    bed.down()

The namespace's name does not start with the pytest run's prefix (tests.conftest.RUN_PREFIX):
the integration suite's shared operator watches those, and two operators on one
session would race. Shared by the gateway tests and bench/gateway.py; no pytest here.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

from avatar_operator.api import names

from tests.harness import gateway_process
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.harness.polling import wait_until
from tests.harness.stack import ROOT, Stack

POOL = "warm"
TENANT = "tenant-a"
AVATAR_ID = "A00000test"  # the bitHuman avatar code the pool serves (spec.avatarIds)
MODEL_PATH = "/models/demo.imx"  # the portrait renderer never opens it; the pool's rules want one


@dataclasses.dataclass(frozen=True)
class BedConfig:
    runners: int = 1
    slots: int = 3
    # The pool's spec.avatarIds; without them the tenant names the pool (DEFAULT_POOL).
    avatar_ids: tuple[str, ...] = ()
    # The tenant Secret's optional keys (DEFAULT_POOL, MAX_SESSIONS, ...), as strings.
    tenant_extra: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # AVATAR_GATEWAY_* settings beyond the harness's (ADMISSION_WAIT_S, ...).
    gateway_env: Mapping[str, str] = dataclasses.field(default_factory=dict)


def secret(ns: str, name: str, data: Mapping[str, str], labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any]:
    return next((dict(c) for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


class GatewayBed:
    def __init__(self, stack: Stack, work: pathlib.Path, cfg: BedConfig | None = None) -> None:
        self.stack, self.work, self.cfg = stack, work, cfg or BedConfig()
        self.work.mkdir(parents=True, exist_ok=True)
        self.namespace = f"gw-{uuid.uuid4().hex[:10]}"
        # The plugin callers' key (GATEWAY_API_KEYS): a fresh one per bed, so a grep of
        # the logs for it finds only what this bed's requests leaked.
        self.api_key = "gwk-" + secrets.token_urlsafe(24)
        self.operator: OperatorProcess | None = None
        self.gateway: gateway_process.GatewayProcess | None = None

    # -- kube ------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.stack.kubectl(*args, input=input, check=check).stdout

    def apply(self, obj: Mapping[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.stack.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else None

    def sessions(self) -> list[dict[str, Any]]:
        return list(json.loads(self.kubectl("get", "avs", "-n", self.namespace, "-o", "json"))["items"])

    def pool(self) -> dict[str, Any]:
        pool = self.get("avp", POOL)
        assert pool is not None, f"pool {POOL} is gone"
        return pool

    def tenant_data(self) -> dict[str, str]:
        return {
            "LIVEKIT_API_KEY": self.stack.livekit_api_key,
            "LIVEKIT_API_SECRET": self.stack.livekit_api_secret,
            "GATEWAY_API_KEYS": f"\n{self.api_key}\n",
            **({} if self.cfg.avatar_ids else {"DEFAULT_POOL": POOL}),
            **self.cfg.tenant_extra,
        }

    # -- up and down -----------------------------------------------------------

    def up(self) -> None:
        self.kubectl("create", "namespace", self.namespace)
        self.kubectl("label", "namespace", self.namespace, "avatar-operator.dev/test=true")
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        self.start_operator()
        self.apply({
            "apiVersion": "avatar-operator.dev/v1alpha1",
            "kind": "AvatarPool",
            "metadata": {"name": POOL, "namespace": self.namespace},
            "spec": {
                "replicas": self.cfg.runners, "sessionsPerRunner": self.cfg.slots, "modelPath": MODEL_PATH,
                **({"avatarIds": list(self.cfg.avatar_ids)} if self.cfg.avatar_ids else {}),
            },
        })
        self.apply(secret(self.namespace, TENANT, self.tenant_data(), {names.GATEWAY_TENANT_LABEL: "true"}))
        self.start_gateway()
        wait_until("the pool Ready", lambda: condition(self.pool(), "Ready").get("status") == "True", 120, 0.5)

    def start_operator(self) -> None:
        env = operator_env(
            self.stack.process_env(),
            livekit_url=self.stack.livekit_url,
            fake_urls={"url": "http://127.0.0.1:9/unused", "mint_url": "http://127.0.0.1:9/unused"},
            runner_image="registry.invalid/avatar-runner:test",
            extra={
                "AVATAR_RUNNER_LAUNCHER": "process",
                "AVATAR_RUNNER_RENDERER": "portrait",
                "AVATAR_PROCESS_WORKDIR": str(self.work / "runners"),
            },
        )
        self.operator = OperatorProcess(env, self.work / "operator.log", [self.namespace], stop_grace=30.0)
        self.operator.start()

    def start_gateway(self) -> None:
        self.gateway = gateway_process.GatewayProcess(
            self.stack.process_env(), self.work / "gateway.log", namespaces=(self.namespace,), extra=self.cfg.gateway_env
        )
        self.gateway.start(ready_timeout=60.0)

    @property
    def gateway_url(self) -> str:
        assert self.gateway is not None, "the gateway is not started"
        return self.gateway.url

    def down(self) -> None:
        for s in self.sessions() if self.operator else []:
            self.kubectl("delete", "avs", s["metadata"]["name"], "-n", self.namespace, "--wait=false", check=False)
        if self.gateway is not None:
            self.gateway.stop()
        self.kubectl("delete", "avp", POOL, "-n", self.namespace, "--timeout=60s", check=False)
        if self.operator is not None:
            self.operator.stop()
        self.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)

    # -- what the tests read -----------------------------------------------------

    def logs(self) -> dict[str, str]:
        """The operator's and the gateway's logs, and the pool runners' (their files in the work dir)."""
        out = {p.name: p.read_text(errors="replace") for p in (self.work / "operator.log", self.work / "gateway.log") if p.exists()}
        for p in sorted((self.work / "runners").rglob("*")):
            if p.suffix in (".log", ".stdout", ".stderr"):
                out[str(p.relative_to(self.work))] = p.read_text(errors="replace")
        return out

    def runner_urls(self) -> dict[str, str]:
        """The pool's runners (the process launcher's records): name -> base URL."""
        records = (self.work / "runners" / "pools").glob("*.json")
        return {(d := json.loads(r.read_text()))["name"]: f"http://127.0.0.1:{d['port']}" for r in records}

    def leaked(self, *needles: str) -> list[str]:
        """`log name: needle` for each needle (a key, a token) found in any log."""
        return [f"{name}: {needle[:12]}..." for name, text in self.logs().items() for needle in needles if needle and needle in text]

    def slots_free(self) -> bool:
        slots = (self.pool().get("status") or {}).get("slots") or {}
        return bool(slots.get("busy") == 0 and slots.get("total") == self.cfg.runners * self.cfg.slots)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until no session is left and every slot is free."""
        deadline = time.monotonic() + timeout
        while True:
            left = [s["metadata"]["name"] for s in self.sessions()]
            if not left and self.slots_free():
                return
            if time.monotonic() > deadline:
                slots = (self.pool().get("status") or {}).get("slots")
                raise AssertionError(f"after {timeout:g} s: sessions {left}, pool slots {slots}")
            time.sleep(0.3)

    def wait_session(self, name: str, ctype: str, timeout: float = 60.0) -> dict[str, Any]:
        def holds() -> dict[str, Any] | None:
            obj = self.get("avs", name)
            return obj if obj is not None and condition(obj, ctype).get("status") == "True" else None

        found = wait_until(f"session {name} {ctype}", holds, timeout, 0.2)
        assert found is not None  # wait_until returns a truthy value
        return found

    def wait_gone(self, name: str, timeout: float = 30.0) -> float:
        """Until session `name` is gone; the time.time() it was first seen gone."""
        wait_until(f"session {name} gone", lambda: self.get("avs", name) is None, timeout, 0.1)
        return time.time()
