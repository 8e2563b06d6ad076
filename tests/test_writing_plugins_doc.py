"""The plugin author's guide's worked example works as the guide says."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fuzzer import Step
from fuzzer.testing import boot_steps, make_model, replay, run_cli, search

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-plugins.md"


@pytest.fixture
def static_call(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (tmp_path / "static_call.py").write_text(blocks[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "static_call"
    sys.modules.pop("static_call", None)


def test_worked_example_runs_clean(static_call):
    model = make_model("v6.12", plugins=[static_call])
    steps = [*boot_steps(), Step("start", cpu=0, name="static_call.update", args={"which": 1}),
             Step("run", cpus=[0] * 200)]
    machine, failure = replay(model, steps)
    assert failure is None
    from static_call import SITE, TARGETS

    assert machine.fetch(machine.cpus[0], SITE) == TARGETS[1]
    assert search(make_model(plugins=[static_call]), max_examples=100).status == "passed"
    code, out, _ = run_cli("-p", static_call, "run", "--seed", "1", "--max-examples", "30",
                           "--corpus", "none")
    assert code == 0, out
    assert "static_call.update" in out


def test_worked_example_option_is_offered(static_call, capsys):
    code, _, _ = run_cli("-p", static_call, "run", "--help")
    assert code == 0 and "--static-call-writers" in capsys.readouterr().out


def test_the_state_machine_example_runs_under_the_authors_settings(static_call):
    block = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
                 if "state_machine(" in b)
    namespace: dict = {}
    exec(compile(block, "writing-plugins.md", "exec"), namespace)
    test_case = namespace["TestStaticCall"]
    assert test_case.settings.max_examples == 25
    test_case("runTest").runTest()  # the example plugin is correct: it passes


def test_the_known_findings_example_declares_a_known_finding():
    block = next(b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
                 if "fuzzer_known_findings" in b)
    namespace: dict = {}
    exec(compile(block, "writing-plugins.md", "exec"), namespace)
    (known,) = namespace["fuzzer_known_findings"](None)
    assert known.kernels == {"v6.12"} and known.signature.kind == "END-STATE"
