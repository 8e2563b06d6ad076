"""The command line: usage errors, the run summary, reproducibility, the JSON report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fuzzer._cli import main

RUN = ("run", "--max-examples", "20", "--time-budget", "5")
NEXT = ("--kernel", "next-20221215")
BUG_333 = "kernel BUG at arch/powerpc/mm/pgtable.c:333!"
SUMMARY_PASSED = re.compile(
    r"^=+ (\d[\d,]*) passed, 0 failed: \1 examples, [\d,]+ steps \([\d,]+ steps/s\)"
    r" in \d+\.\d\ds =+$",
    re.M,
)
SUMMARY_FAILED = re.compile(
    r"^=+ 1 failed: (.+) -- [\d,]+ examples, [\d,]+ steps \([\d,]+ steps/s\) in \d+\.\d\ds,"
    r" first found after \d+\.\d\ds \(example \d+\) =+$",
    re.M,
)


def without_timings(out: str) -> str:
    """Stdout with wall-clock numbers (and the rule padding that follows their width) removed."""
    out = re.sub(r"\([\d,]+ steps/s\)", "(N steps/s)", out)
    out = re.sub(r"\b\d+\.\d+s\b", "Ts", out)
    return "\n".join(line.strip("= ") for line in out.splitlines())


# ---------------------------------------------------------------------------
# Usage errors: exit 4, one line on stderr, nothing on stdout
# ---------------------------------------------------------------------------

USAGE_ERRORS = {
    "unknown kernel": (["run", "--kernel", "v5.0"], ["'v5.0'", "v6.1, next-20221215, v6.2, v6.12"]),
    "unknown mmu": (["run", "--mmu", "foo"], ["'foo'", "radix"]),
    "unknown config option": (
        ["run", "--config", "CONFIG_NOPE=y"],
        ["CONFIG_NOPE", "known:", "CONFIG_DEBUG_VM", "CONFIG_SMP", "CONFIG_PPC_64K_PAGES"],
    ),
    "bad bool config value": (
        ["run", "--config", "CONFIG_DEBUG_VM=maybe"],
        ["CONFIG_DEBUG_VM", "CONFIG_DEBUG_VM=y", "CONFIG_DEBUG_VM=n"],
    ),
    "bad bool config value without prefix": (
        ["run", "--config", "DEBUG_VM=maybe"], ["CONFIG_DEBUG_VM is a bool option"],
    ),
    "config without value": (["run", "--config", "CONFIG_SMP"], ["CONFIG_X=VALUE"]),
    "config int not a number": (
        ["run", "--config", "CONFIG_PPC_NR_DAWR=two"], ["CONFIG_PPC_NR_DAWR", "integer"],
    ),
    "config int not a choice": (
        ["run", "--config", "CONFIG_PPC_NR_DAWR=3"], ["CONFIG_PPC_NR_DAWR", "1, 2"],
    ),
    "zero cpus": (["run", "--cpus", "0"], ["--cpus", "0"]),
    "too many cpus": (["run", "--cpus", "65"], ["--cpus", "65"]),
    "cpus not a number": (["run", "--cpus", "four"], ["--cpus", "'four'"]),
    "negative max examples": (["run", "--max-examples", "-1"], ["--max-examples", "-1"]),
    "negative time budget": (["run", "--time-budget", "-1"], ["--time-budget"]),
    "time budget not a number": (["run", "--time-budget", "soon"], ["--time-budget", "'soon'"]),
    "seed not a number": (["run", "--seed", "abc"], ["--seed", "'abc'"]),
    "missing command": ([], ["command is required", "run", "plugins"]),
    "unknown command": (["frobnicate"], ["'frobnicate'"]),
    "unknown run option": (["run", "--frobnicate"], ["--frobnicate"]),
    "unknown global option": (["--frobnicate", "plugins"], ["--frobnicate"]),
    "option value missing": (["run", "--kernel"], ["--kernel"]),
    "plugin option rejected by fuzzer_configure": (
        ["run", "--kprobe-sites", "bogus"], ["--kprobe-sites", "'bogus'", "vfs_read+0x0"],
    ),
}


@pytest.mark.parametrize(
    ("argv", "expected"), list(USAGE_ERRORS.values()), ids=list(USAGE_ERRORS)
)
def test_usage_error(cli, argv, expected):
    res = cli(*argv)
    assert res.rc == 4, (res.out, res.err)
    assert res.err.startswith("ERROR: "), res.err
    assert res.err.count("\n") == 1 and res.err.endswith("\n"), res.err
    for text in expected:
        assert text in res.err
    assert res.out == ""


def test_help_lists_exit_codes_and_choices(capsys):
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "v6.1, next-20221215, v6.2, v6.12" in " ".join(text.split())
    assert "--kprobe-sites" in text  # plugin options are in the run command's help
    assert main(["--help"]) == 0
    assert "4 usage error" in capsys.readouterr().out


def test_module_entry_exit_code():
    """``python -m fuzzer`` passes main's exit code to the shell."""
    proc = subprocess.run(
        [sys.executable, "-m", "fuzzer", "run", "--cpus", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 4
    assert proc.stderr.startswith("ERROR: --cpus")
    assert proc.stdout == ""


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


def test_default_run_finds_nothing(cli):
    res = cli(*RUN, "--seed", "1")
    assert res.rc == 0, res.err
    assert res.out.startswith("=" * 27 + " fuzzer session starts " + "=" * 28 + "\n")
    assert "\nkernel: v6.12 (" in res.out  # the newest modelled version
    assert "\nmmu: radix, cpus: 4, seed: 1 (rerun with --seed 1)\n" in res.out
    assert "\nconfig: CONFIG_CMDLINE= CONFIG_DEBUG_VM=y " in res.out
    assert "\nbudget: 20 examples or 5 s\n" in res.out
    summary = SUMMARY_PASSED.findall(res.out)
    assert len(summary) == 1, res.out
    assert int(summary[0].replace(",", "")) >= 20
    assert res.out.splitlines()[-1].startswith("=")
    assert "failed: kernel" not in res.out


def test_same_seed_same_output(cli):
    first = cli(*RUN, "--seed", "1")
    second = cli(*RUN, "--seed", "1")
    assert first.rc == second.rc == 0
    assert without_timings(first.out) == without_timings(second.out)
    # ... and the comparison is not vacuous: the counts are still in it.
    normalised = without_timings(first.out)
    assert re.search(r"\d+ passed, 0 failed: \d+ examples, [\d,]+ steps", normalised)


def test_fresh_seed_is_printed_and_reproduces(cli):
    # Bounded by examples only: a time budget would make the counts depend on load.
    first = cli("run", "--max-examples", "20", "--time-budget", "0")
    assert first.rc == 0, first.err
    seed = re.search(r"seed: (\d+) \(rerun with --seed \1\)", first.out)
    assert seed, first.out
    again = cli("run", "--max-examples", "20", "--time-budget", "0", "--seed", seed[1])
    # Only the header differs: a fresh seed also tries the (here empty) example database first.
    assert "example database: none" in again.out
    database = re.compile(r"example database: .*$", re.M)
    assert database.sub("", without_timings(again.out)) == database.sub("", without_timings(first.out))


def test_next_kernel_hits_the_pte_lock_bug(cli):
    res = cli(*RUN, *NEXT, "--seed", "1")
    assert res.rc == 1, res.err
    assert BUG_333 in res.out
    assert "Signature: BUG in assert_pte_locked at arch/powerpc/mm/pgtable.c:333\n" in res.out
    assert "\nMinimal reproduction (1 step):\n  1. boot CPU 0 " in res.out
    summary = SUMMARY_FAILED.findall(res.out)
    assert summary == [BUG_333], res.out
    assert f"found: {BUG_333} -- shrinking" in res.err


def test_config_option_takes_effect(cli):
    # assert_pte_locked is empty without CONFIG_DEBUG_VM: the same seed runs clean.
    res = cli(*RUN, *NEXT, "--seed", "1", "--config", "CONFIG_DEBUG_VM=n")
    assert res.rc == 0, res.out
    assert " CONFIG_DEBUG_VM=n " in res.out.split("\nconfig: ")[1].splitlines()[0]
    assert SUMMARY_PASSED.search(res.out)


def test_cpus_option_takes_effect(cli):
    res = cli(*RUN, *NEXT, "--seed", "1", "--cpus", "1")
    assert res.rc == 1
    assert "mmu: radix, cpus: 1, seed: 1" in res.out
    assert "NR_CPUS=1 " in res.out


def test_report_json(cli, tmp_path):
    path = tmp_path / "report.json"
    res = cli(*RUN, *NEXT, "--seed", "1", "--report-json", str(path))
    assert res.rc == 1, res.err
    assert f"report written to {path}\n" in res.out
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["signature"] == {
        "kind": "BUG",
        "function": "assert_pte_locked",
        "location": "arch/powerpc/mm/pgtable.c:333",
    }
    assert data["kind"] == "BUG"
    assert data["message"] == BUG_333
    assert data["kernel"] == "next-20221215"
    assert data["mmu"] == "radix"
    assert len(data["steps"]) == 1
    assert data["steps"][0]["action"] == "boot"
    assert set(data["steps"][0]) == {"action", "seed"}
    assert data["trace"][0] == {
        "function": "assert_pte_locked", "file": "arch/powerpc/mm/pgtable.c", "inlined": False,
    }
    assert data["text"] in res.out


def test_report_json_is_reproducible(cli, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli(*RUN, *NEXT, "--seed", "7", "--report-json", str(a)).rc == 1
    assert cli(*RUN, *NEXT, "--seed", "7", "--report-json", str(b)).rc == 1
    assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_no_report_json_when_nothing_found(cli, tmp_path):
    path = tmp_path / "report.json"
    res = cli(*RUN, "--seed", "1", "--report-json", str(path))
    assert res.rc == 0
    assert not path.exists()
    assert "report written" not in res.out


def test_max_examples_bounds_the_reported_examples(cli):
    res = cli(*RUN, "--seed", "1")
    assert res.rc == 0
    (passed,) = SUMMARY_PASSED.findall(res.out)
    # --max-examples is Hypothesis's max_examples: it stops generating after
    # that many, having run a few more distinct ones on the way.
    assert 20 <= int(passed.replace(",", "")) <= 40


def test_ctrl_c_while_shrinking_keeps_the_failure(cli, monkeypatch):
    """Nothing found is lost on Ctrl-C: the smallest reproduction so far is reported, verified."""
    import fuzzer._engine.shrink as search

    real = search.Shrinker.delete_steps

    def interrupted(self):
        real(self)  # one pass made some progress; then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(search.Shrinker, "delete_steps", interrupted)
    res = cli("-p", "fuzzer_plugins.mistakes.leak_on_offline", "run", "--kernel", "v6.2", "--seed", "2")
    assert res.rc == 2
    assert "end state 'patching mm leak' violated" in res.out
    assert "interrupted while shrinking" in res.out
    assert re.search(r"Minimal reproduction \(\d+ steps\)", res.out)


def test_ctrl_c_while_hypothesis_shrinks_keeps_the_failure(cli, monkeypatch):
    """The same with --engine hypothesis: a failure found before Ctrl-C is reported, unshrunk."""
    import fuzzer._engine.hypothesis as campaign

    real = campaign.run_state_machine_as_test

    def interrupting(factory, settings):
        try:
            real(factory, settings=settings)
        except Exception:
            raise KeyboardInterrupt from None  # Ctrl-C during shrinking

    monkeypatch.setattr(campaign, "run_state_machine_as_test", interrupting)
    res = cli("run", "--kernel", "next-20221215", "--seed", "1", "--engine", "hypothesis")
    assert res.rc == 2
    assert "kernel BUG at arch/powerpc/mm/pgtable.c:333!" in res.out
    assert "interrupted while shrinking" in res.out


@pytest.mark.parametrize("engine", ["walk", "hypothesis"])
def test_ctrl_c_with_nothing_found_exits_2(cli, monkeypatch, engine):
    import fuzzer._engine.hypothesis as campaign
    import fuzzer._engine.walk as search

    def interrupting(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(campaign, "run_state_machine_as_test", interrupting)
    monkeypatch.setattr(search.Walker, "example", interrupting)
    res = cli("run", "--seed", "1", "--engine", engine)
    assert res.rc == 2
    assert "interrupted" in res.out.splitlines()[-1]
