"""Bounded exhaustive checking of small scenarios (fuzzer._check)."""

from __future__ import annotations

import pytest

from fuzzer import UsageError
from fuzzer._check import Call, check, parse_call, parse_scenario

from modelkit import make_model, replay

#: A CPU hits a probe while another unregisters it: the race kprobe_handler re-checks for.
HIT_VS_UNREGISTER = """
# the probe is armed before the race
setup 0 kprobes.register site=0
cpu 1 kprobes.hit site=0
cpu 0 kprobes.unregister site=0
"""
#: Two CPUs take a reference on the counted static key.
TWO_INCS = """
cpu 0 jump_label.inc
cpu 1 jump_label.inc
"""


def test_parse_calls_both_ways():
    assert parse_call("1:kprobes.hit(site=0)") == Call(1, "kprobes.hit", (("site", 0),))
    assert parse_call("2 jump_label.toggle key=3") == Call(2, "jump_label.toggle", (("key", 3),))
    assert parse_call("0:fixups.entry_flush(enable=True)").args == (("enable", True),)
    sc = parse_scenario(HIT_VS_UNREGISTER)
    assert [c.op for c in sc.setup] == ["kprobes.register"]
    assert sc.threads() == {1: [Call(1, "kprobes.hit", (("site", 0),))],
                            0: [Call(0, "kprobes.unregister", (("site", 0),))]}


@pytest.mark.parametrize("text, problem", [
    ("cpu x kprobes.hit site=0", "does not start with a CPU number"),
    ("cpu 1 kprobes.hit site", "is not name=value"),
    ("run 1 kprobes.hit", "starts with neither"),
    ("setup 0 kprobes.register site=0", "no 'cpu' line"),
])
def test_bad_scenarios_are_one_line_usage_errors(text, problem):
    with pytest.raises(UsageError, match=problem):
        parse_scenario(text)


def test_unknown_operation_and_cpu_name_the_choices():
    model = make_model("v6.12", cpus=2)
    with pytest.raises(UsageError, match=r"unknown operation 'kprobes\.hits'; known: .*kprobes\.hit"):
        check(model, parse_scenario("cpu 1 kprobes.hits site=0"), preemptions=1)
    with pytest.raises(UsageError, match="CPU 3 does not exist"):
        check(model, parse_scenario("cpu 3 kprobes.hit site=0"), preemptions=1)


def test_the_released_kernel_is_clean_within_the_bound():
    model = make_model("v6.12", cpus=2)
    result = check(model, parse_scenario(HIT_VS_UNREGISTER), preemptions=2)
    assert result.failure is None and result.complete
    assert result.schedules > 30


def test_finds_the_trap_recheck_mistake_with_one_preemption_and_the_steps_replay():
    model = make_model("v6.12", cpus=2, plugins=["fuzzer_plugins.mistakes.kprobe_trap_recheck"])
    result = check(model, parse_scenario(HIT_VS_UNREGISTER), preemptions=1, shrink_seconds=5)
    assert result.failure is not None
    assert "unexpected trap" in str(result.failure)
    _, again = replay(model, result.steps)
    assert again is not None and again.signature == result.failure.signature
    ran = {n for s in result.steps if s.action == "run" for n in s.cpus}
    assert ran >= {0, 1}  # the reproduction interleaves both CPUs
    none = check(model, parse_scenario(HIT_VS_UNREGISTER), preemptions=0)
    assert none.failure is None  # a CPU must be preempted: without one, no failure


def test_pruning_keeps_the_verdict_and_explores_no_more():
    model = make_model("v6.12", cpus=2, plugins=["fuzzer_plugins.mistakes.static_key_inc_enabling"])
    clean = make_model("v6.12", cpus=2)
    for m in (model, clean):
        pruned = check(m, parse_scenario(TWO_INCS), preemptions=2, shrink_seconds=0)
        full = check(m, parse_scenario(TWO_INCS), preemptions=2, prune=False, shrink_seconds=0)
        assert (pruned.failure is None) == (full.failure is None)
        assert pruned.schedules <= full.schedules


def test_check_command_proves_a_scenario_clean_and_finds_a_deep_mistake(tmp_path):
    from fuzzer.testing import run_cli

    calls = ["--setup", "0:kprobes.register(site=0)", "1:kprobes.hit(site=0)",
             "0:kprobes.unregister(site=0)"]
    code, out, _ = run_cli("check", "--kernel", "v6.12", "--cpus", "2", "-k", "2", *calls)
    assert code == 0, out
    assert "no failure in " in out and "schedules with <= 2 preemptions" in out
    scenario = tmp_path / "race.txt"
    scenario.write_text(HIT_VS_UNREGISTER)
    code, out, _ = run_cli("-p", "fuzzer_plugins.mistakes.kprobe_trap_recheck", "check",
                           "--kernel", "v6.12", "--cpus", "2", "-k", "1", "--scenario", str(scenario))
    assert code == 1, out
    assert "unexpected trap" in out and "Minimal reproduction" in out


def test_check_command_usage_errors():
    from fuzzer.testing import run_cli

    code, _, err = run_cli("check", "--kernel", "v6.12")
    assert code == 4 and "give the operations" in err
    code, _, err = run_cli("check", "--scenario", "/nonexistent/race.txt")
    assert code == 4 and "ERROR: --scenario /nonexistent/race.txt" in err
