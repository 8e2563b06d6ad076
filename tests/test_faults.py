"""Fault injection as a search decision: 'fail' steps, the kernel's error paths, expected WARNs."""

from __future__ import annotations

import json

import pytest

from fuzzer import Operation, Step, hookimpl, routine
from fuzzer._engine import Shrinker, apply_step
from fuzzer._engine.walk import Walker
from fuzzer._steps import StepFormatError
from fuzzer.kernel import faults

from modelkit import boot_steps, make_model, plugin_module, replay, run_until_idle, search


def test_a_fail_step_round_trips_and_reads_as_a_decision():
    step = Step("fail", cpu=1, name="mm_alloc")
    assert Step.from_json(json.loads(json.dumps(step.to_json()))) == step
    assert step.describe() == "CPU 1: fail the next mm_alloc allocation (fault injection)"
    with pytest.raises(StepFormatError, match="name"):
        Step.from_json({"action": "fail", "cpu": 1})


def _online(cpu: int) -> list[Step]:
    return [Step("online", cpu=cpu), Step("run", cpus=[cpu] * 60)]


@pytest.mark.parametrize(("kernel", "mmu", "site", "warned"), [
    ("v6.2", "radix", "mm_alloc", "code-patching.c:156"),
    ("v6.12", "radix", "mm_alloc", "code-patching.c:159"),
    ("v6.2", "radix", "pgtable_alloc", None),
    ("v6.12", "hash", "get_vm_area", "code-patching.c:113"),
    ("v6.1", "radix", "get_vm_area", "code-patching.c:58"),
])
def test_a_failed_allocation_at_cpu_online_takes_the_kernels_error_path(kernel, mmu, site, warned):
    """cpuhp rolls the bring-up back: the CPU stays offline, nothing leaks, and the WARN the
    kernel prints there is logged as expected under fault injection, not reported."""
    model = make_model(kernel, mmu=mmu)
    steps = [*boot_steps(), Step("fail", cpu=1, name=site), *_online(1), *_online(2)]
    m, failure = replay(model, steps)
    assert failure is None
    assert not m.cpus[1].online and m.cpus[2].online
    assert m.state["fault_injection"].injected == [(1, site)]
    expected = [line for line in m.log if "expected under fault injection" in line]
    if warned is None:
        assert expected == []
    else:
        assert len(expected) == 1 and warned in expected[0]
    # The CPU comes online at the next try, the allocation no longer failing.
    m2, failure = replay(model, [*steps, *_online(1)])
    assert failure is None and m2.cpus[1].online


def test_a_warn_on_a_null_allocation_is_a_finding_without_fault_injection():
    """A routine returning NULL on its own (no failure was injected) makes the kernel's
    WARN_ON(!mm) a finding again."""

    @routine("mm_alloc", "kernel/fork.c", override=True)
    def mm_alloc(cpu, name="patching_mm"):
        yield
        return None if cpu.n == 1 else cpu.m.new_mm(name)

    plugin = plugin_module("null_mm", fuzzer_routines=hookimpl(lambda config: [mm_alloc]))
    _, failure = replay(make_model(extra=[plugin]), [*boot_steps(), *_online(1)])
    assert failure.kind == "WARNING"
    assert failure.signature.location == "arch/powerpc/lib/code-patching.c:156"


def test_without_fault_injection_the_walk_never_fails_an_allocation():
    model = make_model(config=["CONFIG_FAULT_INJECTION=n"])
    known = {k.signature for k in model.known}  # v6.12's CPU-offline findings end some walks
    walker = Walker(model, seed=1)
    for _ in range(30):
        m, failure = walker.example()
        assert failure is None or failure.signature in known, failure
        assert not any(s.action == "fail" for s in m.steps)
    m, _ = replay(model, boot_steps())
    assert not apply_step(m, Step("fail", cpu=1, name="mm_alloc"), strict=False)


@pytest.mark.parametrize(("kernel", "mmu"), [("v6.1", "radix"), ("v6.2", "radix"), ("v6.12", "radix"),
                                             ("v6.2", "hash"), ("v6.12", "hash")])
def test_walks_that_inject_faults_stay_clean_on_the_released_kernels(kernel, mmu):
    model = make_model(kernel, mmu=mmu)
    known = {k.signature for k in model.known}  # the CPU-offline findings of v6.2 and v6.12
    walker = Walker(model, seed=2)
    injected = 0
    for _ in range(150):
        m, failure = walker.example()
        assert failure is None or failure.signature in known, failure
        injected += len(m.state["fault_injection"].injected) if "fault_injection" in m.state else 0
    assert injected > 10


def test_the_shrinker_deletes_a_fail_step_the_failure_does_not_need():
    model = make_model(plugins=["fuzzer_plugins.mistakes.disarm_lock_order"])
    steps = [*boot_steps(), Step("fail", cpu=1, name="mm_alloc"),
             Step("start", cpu=0, name="kprobes.register", args={"site": 4})]
    steps += [run_until_idle(model, steps, 0), Step("start", cpu=0, name="kprobes.disable", args={"site": 4})]
    _, failure = replay(model, steps)
    assert failure is not None
    best = Shrinker(model, steps, failure.signature).shrink()
    assert [s.action for s in best] == ["boot", "start", "run", "start"]


def test_search_finds_the_leak_only_a_failed_allocation_shows():
    model = make_model(plugins=["fuzzer_plugins.mistakes.enomem_leaks_mm"])
    outcome = search(model, seed=3, max_examples=500)
    assert outcome.status == "failed"
    assert str(outcome.failure.signature) == "END-STATE in patching mm leak"
    assert [s.action for s in outcome.steps].count("fail") == 1
    # Without fault injection the same search finds nothing.
    clean = search(make_model(plugins=["fuzzer_plugins.mistakes.enomem_leaks_mm"],
                              config=["CONFIG_FAULT_INJECTION=n"]), seed=3, max_examples=500)
    assert clean.status != "failed"


def test_a_fail_step_on_a_site_already_armed_is_skipped():
    m, _ = replay(make_model(), boot_steps())
    assert apply_step(m, Step("fail", cpu=2, name="get_vm_area"), strict=False)
    assert not apply_step(m, Step("fail", cpu=2, name="get_vm_area"), strict=False)
    assert not apply_step(m, Step("fail", cpu=2, name="no_such_site"), strict=False)
    assert faults.SITES == ("mm_alloc", "pgtable_alloc", "get_vm_area")


def test_operation_unaffected_by_an_armed_fault_elsewhere():
    """An armed failure waits for its CPU's allocation: patching allocates nothing."""
    plugin = plugin_module("noop", fuzzer_operations=hookimpl(lambda config: [
        Operation("noop.op", lambda cpu: iter(()))]))
    model = make_model(extra=[plugin])
    steps = [*boot_steps(), Step("fail", cpu=0, name="pgtable_alloc"),
             Step("start", cpu=0, name="kprobes.register", args={"site": 4}), Step("run", cpus=[0] * 80)]
    m, failure = replay(model, steps)
    assert failure is None
    assert m.state["fault_injection"].injected == []
