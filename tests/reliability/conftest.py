"""The reliability suite's fixtures and its report, bench/results/reliability.json.

Each test is marked `@pytest.mark.scenario(NAME)` and counts into that
scenario what it tried (operations), what it broke (faults) and what it
checked (invariants, with violations). The report is written when the
session ends, whatever the outcome; a failed or erroring test shows in its
scenario's `tests`.

Run: `AVATAR_REQUIRE_STACK=1 .venv/bin/python -m pytest tests/reliability`
(AVATAR_STACK_DIR picks the stack; AVATAR_RELIABILITY_JSON the report path).
Some tests stop and restart the stack's kube-apiserver and livekit-server:
run it on a stack no one else is using at that moment.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, Stack
from tests.reliability.support import PREFIX, Evidence, FakeProc, Kube, Report, Scenario, StackControl

REPORT = Report()
EVIDENCE = Evidence()


def report_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("AVATAR_RELIABILITY_JSON") or ROOT / "bench" / "results" / "reliability.json")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): the reliability scenario a test counts into")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    marker = item.get_closest_marker("scenario")
    if marker is None:
        return
    sc = REPORT.scenario(str(marker.args[0]))
    if rep.when == "call" or rep.failed or rep.skipped:
        if rep.failed:
            state = "failed" if rep.when == "call" else f"error in {rep.when}"
        elif rep.skipped:
            state = "skipped"
        else:
            state = "passed"
        if sc.tests.get(item.nodeid, "passed") == "passed" or state != "passed":
            sc.tests[item.nodeid] = state


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REPORT.scenarios:
        REPORT.write(report_path())


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


@pytest.fixture(scope="session")
def evidence() -> Evidence:
    return EVIDENCE


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Scenario:
    marker = request.node.get_closest_marker("scenario")
    assert marker is not None, "mark the test with @pytest.mark.scenario(NAME)"
    return REPORT.scenario(str(marker.args[0]), str(marker.kwargs.get("description", "")))


@pytest.fixture(scope="session")
def artifacts(stack: Stack) -> pathlib.Path:
    d = stack.dir / "reliability-artifacts" / PREFIX.rstrip("-")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def kube(stack: Stack) -> Kube:
    return Kube(stack, EVIDENCE)


@pytest.fixture(scope="session")
def stackctl(stack: Stack) -> StackControl:
    return StackControl(stack)


@pytest.fixture(scope="session")
def crd(stack: Stack) -> None:
    # Every generated CRD (AvatarSession and AvatarPool), each Established before a test uses it.
    paths = sorted((ROOT / "crds").glob("*.yaml"))
    assert len(paths) >= 2, f"expected the AvatarSession and AvatarPool CRDs in {ROOT / 'crds'}: {paths}"
    stack.kubectl("apply", "--server-side", "--force-conflicts", *(a for path in paths for a in ("-f", str(path))))
    for path in paths:
        stack.wait_established("-f", str(path))


@pytest.fixture(scope="session")
def fake(artifacts: pathlib.Path, evidence: Evidence) -> Iterator[FakeProc]:
    proc = FakeProc(artifacts / "fake-bithuman.log")
    yield proc
    proc.stop()
