"""Bounded exhaustive checking of small scenarios (fuzzer._check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fuzzer import UsageError
from fuzzer._check import Call, Explorer, check, parse_call, parse_scenario
from fuzzer._snapshot import snapshot

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
    assert result.schedules >= 2 and result.pruned > 30


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


def _deep_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "deep.py"
    spec = importlib.util.spec_from_file_location("bench_deep", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DEEP_BENCH = _deep_bench()
#: Scenarios whose exploration takes 40 s or more each (three CPUs, or a probe registered
#: concurrently: hundreds of steps since it builds its optprobe detour).
SLOW = {("kprobe_slot_before_rcu", 1), ("kprobe_irqs_on_in_handler", 1), ("kprobe_rcu_too_early", 1),
        ("kprobe_rcu_too_early", 2)}
#: Each deep mistake's scenario (bench/deep.py) at K = 1 and 2 on two CPUs, K = 1 on three;
#: the slow ones with -m slow.
SOUNDNESS = [pytest.param(name, k, marks=[pytest.mark.slow] if (name, k) in SLOW else [])
             for name, text in DEEP_BENCH.SCENARIOS.items()
             for k in ((1,) if "cpu 2" in text else (1, 2))]


@pytest.mark.parametrize("name, k", SOUNDNESS)
def test_every_pruning_keeps_the_verdict_on_each_deep_mistake(name, k):
    """Each deep mistake's scenario: pruned (por, state) or not, the same verdict."""
    text = DEEP_BENCH.SCENARIOS[name]
    kernel, _ = DEEP_BENCH.DEEP[name]
    model = make_model(kernel, cpus=3 if "cpu 2" in text else 2,
                       plugins=[f"fuzzer_plugins.mistakes.{name}"])
    verdicts = {"state": None}
    for prune in ("none", "por") if "cpu 2" in text else ("none", "state", "por"):
        r = check(model, parse_scenario(text), preemptions=k, prune=prune, shrink_seconds=0)
        assert r.complete
        verdicts[prune] = r.failure.signature if r.failure is not None else None
    assert verdicts["por"] == verdicts["none"]
    assert verdicts["state"] in (None, verdicts["none"])
    # kprobe_rcu_too_early needs two preemptions; the others fail with one.
    assert (verdicts["none"] is not None) == (name != "kprobe_rcu_too_early" or k >= 2)


def _final_states(model, text, k, prune):
    """The final states an exploration reaches (their snapshots' hashes) and its result."""
    ex = Explorer(model, parse_scenario(text), preemptions=k, prune=prune)
    finals = set()
    extend = ex._extend

    def extend_and_note(m, queues, *rest):
        extend(m, queues, *rest)
        if m.quiescent():
            m.check_end_state()  # as finish() does: a final state cut before it is the same
            finals.add(hash(snapshot(m)))

    ex._extend = extend_and_note
    failing, complete = ex.explore()
    assert failing is None and complete
    return finals, ex


@pytest.mark.parametrize("text, bounds", [(HIT_VS_UNREGISTER, (1, 2)), (TWO_INCS, (1,))])
def test_por_reaches_every_final_state_in_fewer_schedules(text, bounds):
    """On unmodified v6.12, por reaches exactly the final states the full exploration does,
    in at most a fifth of its schedules and fewer emulated steps."""
    model = make_model("v6.12", cpus=2)
    for k in bounds:
        full, every = _final_states(model, text, k, "none")
        reduced, por = _final_states(model, text, k, "por")
        assert reduced == full and len(full) >= 2
        assert por.schedules * 5 <= every.schedules
        assert por.emulated < every.emulated


def test_snapshots_are_the_same_on_every_replay_and_tell_states_apart():
    """The same choices give the same snapshot, replayed in a new machine (no object
    identity in it); two orders of the two CPUs' operations give two final states."""
    model = make_model("v6.12", cpus=2)
    ex = Explorer(model, parse_scenario(TWO_INCS), preemptions=0)

    def run(order):
        m, queues = ex.start()
        while m.runnable():
            ex._advance(m, queues, next(n for n in order if m.cpus[n].runnable()))
        return snapshot(m)

    assert run([0, 1]) == run([0, 1])
    assert run([0, 1]) != run([1, 0])


def test_check_command_proves_a_scenario_clean_and_finds_a_deep_mistake(tmp_path):
    from fuzzer.testing import run_cli

    calls = ["--setup", "0:kprobes.register(site=0)", "1:kprobes.hit(site=0)",
             "0:kprobes.unregister(site=0)"]
    code, out, _ = run_cli("check", "--kernel", "v6.12", "--cpus", "2", "-k", "2", *calls)
    assert code == 0, out
    assert "no failure in " in out and "schedules with <= 2 preemptions" in out
    assert "pruning: por" in out
    code, out, _ = run_cli("check", "--kernel", "v6.12", "--cpus", "2", "-k", "1", "--prune", "none",
                           *calls)
    assert code == 0 and "pruning: none" in out and "(0 cut at a state already explored" in out, out
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
