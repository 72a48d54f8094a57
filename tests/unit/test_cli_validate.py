"""`avatar-operator validate`, `crd` and `run`'s arguments."""

from __future__ import annotations

import argparse
import io
import pathlib
import subprocess
import sys

import pytest
import yaml
from avatar_operator import cli
from avatar_operator.api import crd

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

GOOD = """\
apiVersion: avatar-operator.dev/v1alpha1
kind: AvatarSession
metadata: {name: good, namespace: demo}
spec: {room: lobby, agentIdentity: agent, avatarId: A1}
"""


def run_validate(tmp_path: pathlib.Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    code = cli.main(["validate", str(path)])
    out = capsys.readouterr().out
    return code, [line.removeprefix(f"{path}: ") for line in out.splitlines()]


def test_the_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert {p.name for p in EXAMPLES} >= {"cloud-avatar-id.yaml", "cloud-image.yaml", "local-gpu.yaml", "pool.yaml"}
    assert cli.main(["validate", *map(str, EXAMPLES)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    objects = sum(1 for p in EXAMPLES for doc in yaml.safe_load_all(p.read_text()) if doc)
    assert f"{objects} object(s) checked, 0 invalid" in captured.err


def test_one_line_per_problem_naming_resource_and_field(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_validate(
        tmp_path,
        GOOD
        + """---
apiVersion: avatar-operator.dev/v1alpha1
kind: AvatarSession
metadata: {name: bad}
spec:
  room: ""
  agentIdentity: agent
  avatarImage: /home/me/portrait.png
  connection: {maxRetry: 0}
""",
        capsys,
    )
    assert code == 1
    assert [line.split(": ")[:2] for line in lines] == [
        ["AvatarSession bad", "spec.room"],
        ["AvatarSession bad", "spec.avatarImage"],
        ["AvatarSession bad", "spec.connection.maxRetry"],
    ]


@pytest.mark.parametrize(
    ("spec_yaml", "field"),
    [
        ("{room: lobby, agentIdentity: agent, avatarId: A1, colour: blue}", "spec.colour"),
        ("{room: lobby, agentIdentity: agent, avatarId: A1, connection: {maxRetry: three}}", "spec.connection.maxRetry"),
        ("{room: [lobby], agentIdentity: agent, avatarId: A1}", "spec.room"),
        ("{room: lobby, agentIdentity: agent, avatarId: A1, runner: {tolerations: {key: gpu}}}", "spec.runner.tolerations"),
        ("lobby", "spec"),
    ],
)
def test_unknown_fields_and_wrong_types(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], spec_yaml: str, field: str
) -> None:
    code, lines = run_validate(tmp_path, GOOD.replace("{room: lobby, agentIdentity: agent, avatarId: A1}", spec_yaml), capsys)
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"AvatarSession demo/good: {field}: ")


@pytest.mark.parametrize(
    "text",
    ["kind: AvatarSession\nspec: [unclosed\n", "a: b\n  c: d\n", "key: 'open\n", "\tkind: AvatarSession\n"],
)
def test_broken_yaml_is_one_line(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    code, lines = run_validate(tmp_path, text, capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("invalid YAML: ")


def test_other_objects_are_skipped_and_lists_are_opened(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = GOOD.replace("avatarId: A1", "avatarId: ''")
    items = "\n".join("  - " + line if i == 0 else "    " + line for i, line in enumerate(bad.splitlines()))
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n---\napiVersion: v1\nkind: List\nitems:\n{items}\n"
    code, lines = run_validate(tmp_path, text, capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("AvatarSession demo/good: spec.avatarId: must not be empty")


def test_a_document_that_is_not_an_object(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_validate(tmp_path, GOOD + "---\n- just\n- a list\n", capsys)
    assert (code, lines) == (1, ["document 2: not a Kubernetes object"])


def test_timestamps_stay_strings_as_in_kubectl(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_validate(tmp_path, GOOD.replace("room: lobby", "room: 2025-01-01"), capsys) == (0, [])


def test_wrong_version_and_missing_name(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace("v1alpha1", "v1").replace("{name: good, namespace: demo}", "{namespace: demo}")
    code, lines = run_validate(tmp_path, text, capsys)
    assert code == 1
    assert [line.split(": ")[1] for line in lines] == ["apiVersion", "metadata.name"]


def test_stdin_and_a_missing_file(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(GOOD))
    assert cli.main(["validate", "-"]) == 0
    assert cli.main(["validate", "/nonexistent/x.yaml"]) == 1
    assert capsys.readouterr().out.splitlines() == ["/nonexistent/x.yaml: cannot read: No such file or directory"]


def test_the_command_never_prints_a_traceback(tmp_path: pathlib.Path) -> None:
    undecodable = tmp_path / "latin1.yaml"
    undecodable.write_bytes(b"kind: AvatarSession\nspec: \xff\xfe\n")
    recursive = tmp_path / "alias.yaml"
    recursive.write_text(GOOD.replace("spec: {room: lobby,", "spec: &a {room: *a,"))
    proc = subprocess.run(
        [sys.executable, "-m", "avatar_operator", "validate", str(undecodable), str(tmp_path), str(recursive)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == 3, proc.stdout  # one line per input


def test_crd_prints_the_generated_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert capsys.readouterr().out == crd.render_all()


def test_run_passes_its_arguments_to_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    from avatar_operator import run as run_mod

    seen: list[argparse.Namespace] = []

    def fake_main(args: argparse.Namespace) -> int:
        seen.append(args)
        return 7

    monkeypatch.setattr(run_mod, "main", fake_main)
    assert cli.main(["run", "--namespace", "a", "-n", "b", "--standalone", "--log-format", "json", "--verbose"]) == 7
    (args,) = seen
    assert args.namespace == ["a", "b"] and args.standalone and args.verbose and not args.all_namespaces
    assert args.log_format == "json"
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_every_problem_of_a_manifest_in_one_run(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Written from the plugin's call: its argument names, a type error, a rule's
    # problem and a bad name, all in one run.
    code, lines = run_validate(
        tmp_path,
        """\
apiVersion: avatar-operator.dev/v1alpha1
kind: AvatarSession
metadata: {name: Lobby_Avatar}
spec:
  room: lobby
  agentIdentity: agent
  avatar_image: https://example.com/p.png
  avatarId: A1
  model: expression-2
  avatarImage: https://example.com/p.png
  api_url: https://api.example.com/launch
  connection: {maxRetry: three, timeout: 0}
""",
        capsys,
    )
    assert code == 1
    assert [line.split(": ")[1] for line in lines] == [
        "metadata.name", "spec.connection.maxRetry", "spec.avatar_image", "spec.api_url", "spec.model", "spec.connection.timeout",
    ]
    assert "did you mean `avatarImage`?" in lines[2] and "did you mean `bithuman.apiUrl`?" in lines[3]
    assert "set spec.model to expression" in lines[4]


def test_the_plugins_api_url_forms_pass(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("HTTPS://auth.api.bithuman.ai/v1/runtime-tokens/request", "''"):
        text = GOOD.replace("avatarId: A1}", f"avatarId: A1, bithuman: {{apiUrl: {url}}}}}")
        assert run_validate(tmp_path, text, capsys) == (0, [])
