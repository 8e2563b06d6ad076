"""Decisions taken behind the kernel's back: speculative TLB fills, preemption and migration."""

from __future__ import annotations

import pytest

from fuzzer import Step
from fuzzer._engine import replay
from fuzzer._engine.walk import Walker
from fuzzer._machine import Machine
from fuzzer._sched import can_migrate, fill_candidates, migration_targets, preemptible, speculates
from fuzzer.kernel import get_cpu, migrate_disable, migrate_enable, put_cpu
from fuzzer.kernel.patching import context

from modelkit import make_model, search

CTX = "cpu_patching_context"


def booted(kernel: str, mmu: str = "radix", config: tuple[str, ...] = ()) -> Machine:
    m = Machine(make_model(kernel, mmu=mmu, config=config))
    m.boot(0)
    m.cpu_up(m.cpus[1])
    m.run_to_completion()
    return m


def start_toggle(m: Machine, cpu: int) -> None:
    m.start(m.cpus[cpu], m.model.operation("jump_label.toggle"), {"key": 0})


def advance_until(m: Machine, cpu: int, cond) -> None:
    for _ in range(500):
        if cond():
            return
        m.advance(m.cpus[cpu])
    raise AssertionError("condition never reached")


# -- speculative fills ------------------------------------------------------------------------


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_another_cpu_fills_the_v61_alias_and_the_global_flush_removes_it(mmu):
    m = booted("v6.1", mmu)
    alias = context(m.cpus[1]).addr
    cpu0 = m.cpus[0]
    start_toggle(m, 1)
    # Radix: the walk sees the alias PTE once it is set; Hash: once hash_page inserted the HPTE.
    def filled() -> bool:
        if alias not in fill_candidates(m, cpu0):
            return False
        m.speculative_fill(cpu0, alias)
        return m.mmu.translations_of(cpu0, m.init_mm, alias)
    advance_until(m, 1, filled)
    assert m.steps[-1] == Step("fill", cpu=0, args={"va": alias})
    m.finish()  # pte_clear + flush_tlb_kernel_range (Radix) / the HPTE flush (Hash): global
    assert not m.mmu.translations_of(cpu0, m.init_mm, alias)


def test_a_fill_needs_a_live_mapping():
    m = booted("v6.1")
    alias = context(m.cpus[1]).addr
    assert alias not in fill_candidates(m, m.cpus[0])  # mapped only while a patch runs
    with pytest.raises(ValueError, match="no live mapping"):
        m.speculative_fill(m.cpus[0], alias)
    # The shrinker's lenient replay skips it.
    machine, failure = replay(make_model("v6.1"),
                              [Step("boot"), Step("fill", cpu=0, args={"va": alias})], strict=False)
    assert failure is None and machine is not None
    assert [s.action for s in machine.steps] == ["boot"]


def test_temp_mm_stays_private_under_speculation():
    """Only the owner loads its patching mm, so only it can fill its address: the
    "patching mapping private" check still holds for v6.2 and v6.12 with fills on."""
    for kernel in ("v6.2", "v6.12"):
        outcome = search(make_model(kernel), seed=3, max_examples=150)
        assert outcome.status == "passed", outcome.failure


def test_walks_take_fills_only_when_the_mmu_models_them():
    m = Machine(make_model("v6.2"))
    assert speculates(m)
    pytest.importorskip("fuzzer_x86")  # a third-party MMU that does not model speculation
    walker = Walker(make_model("x86-v6.12", mmu="x86", plugins=["fuzzer_x86"]), seed=1)
    for _ in range(20):
        machine, failure = walker.example()
        assert failure is None and machine is not None
        assert not speculates(machine)
        assert "fill" not in {s.action for s in machine.steps}


def test_fill_and_migrate_steps_round_trip():
    for step in (Step("fill", cpu=2, args={"va": 0xC008000000050000}), Step("migrate", cpu=1, cpus=[3])):
        assert Step.from_json(step.to_json()) == step
    assert Step("fill", cpu=2, args={"va": 0xC008000000050000}).describe() == (
        "CPU 2: speculative TLB fill of 0xc008000000050000")
    assert Step("migrate", cpu=1, cpus=[3]).describe() == (
        "CPU 1: preempt the running task; it resumes on CPU 3")


# -- preemption and migration -----------------------------------------------------------------


def test_migration_moves_the_task_and_leaves_per_cpu_data_with_its_cpu():
    m = booted("v6.12", config=("CONFIG_PREEMPT=y",))
    ctx0, ctx1 = m.cpus[0].state[CTX], m.cpus[1].state[CTX]
    start_toggle(m, 0)
    obj, task = m.cpus[0], m.cpus[0].current
    advance_until(m, 0, lambda: preemptible(obj))
    assert migration_targets(m, obj) == [m.cpus[1]]
    m.migrate(obj, m.cpus[1])
    # The routines' `cpu` now names CPU 1; each CPU number keeps its own per-CPU data.
    assert obj.n == 1 and m.cpus[1] is obj and obj.current is task
    assert m.cpus[1].state[CTX] is ctx1 and m.cpus[0].state[CTX] is ctx0
    # CPU 0 goes back to its idle task, which keeps the task's mm loaded lazily (lazy TLB).
    assert not m.cpus[0].stack and m.cpus[0].current is m.cpus[0].idle_task
    assert m.cpus[1].loaded_mm is task.mm and 1 in task.mm.cpumask
    assert m.steps[-1] == Step("migrate", cpu=0, cpus=[1])
    m.finish()  # the patch runs on CPU 1 with CPU 1's context: clean


def test_no_migration_where_the_kernel_cannot_preempt():
    m = booted("v6.12")  # CONFIG_PREEMPT=n
    start_toggle(m, 0)
    cpu0 = m.cpus[0]
    advance_until(m, 0, lambda: preemptible(cpu0))
    assert not can_migrate(m, cpu0, m.cpus[1])

    m = booted("v6.12", config=("CONFIG_PREEMPT=y",))
    m.cpu_up(m.cpus[2])  # the cpuhp thread is a per-CPU kthread
    m.advance(m.cpus[2])
    assert not can_migrate(m, m.cpus[2], m.cpus[1])
    m.run_to_completion()
    start_toggle(m, 0)
    cpu0 = m.cpus[0]
    advance_until(m, 0, lambda: preemptible(cpu0))
    assert can_migrate(m, cpu0, m.cpus[1])
    get_cpu(cpu0)
    assert not can_migrate(m, cpu0, m.cpus[1])
    put_cpu(cpu0)
    migrate_disable(cpu0)
    assert not can_migrate(m, cpu0, m.cpus[1])
    migrate_enable(cpu0)
    flags = cpu0.local_irq_save()
    assert not can_migrate(m, cpu0, m.cpus[1])
    cpu0.local_irq_restore(flags)
    assert not can_migrate(m, cpu0, m.cpus[0])


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_released_versions_are_clean_with_preemption(mmu):
    for kernel in ("v6.1", "v6.2", "v6.12"):
        model = make_model(kernel, mmu=mmu, config=("CONFIG_PREEMPT=y",))
        outcome = search(model, seed=2, max_examples=150)
        assert outcome.status == "passed", (kernel, outcome.failure)


def test_walks_migrate_tasks_with_preemption_on():
    # v6.12-fixed: v6.12's known findings (the CPU-offline leak) would end some walks.
    walker = Walker(make_model("v6.12-fixed", config=("CONFIG_PREEMPT=y",)), seed=3)
    actions: set[str] = set()
    for _ in range(100):
        machine, failure = walker.example()
        assert failure is None and machine is not None
        actions |= {s.action for s in machine.steps}
    assert {"migrate", "fill"} <= actions
