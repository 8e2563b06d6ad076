"""fuzzer.kernel.rcu: the one model of RCU readers, grace periods and callbacks every user shares."""

from __future__ import annotations

import pytest

from fuzzer import Operation, Step, hookimpl
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer.kernel import (
    call_rcu,
    in_rcu_reader,
    rcu_read_lock,
    rcu_read_unlock,
    synchronize_rcu,
    synchronize_rcu_tasks,
    tasks_rcu_enter,
    tasks_rcu_exit,
)
from fuzzer.kernel.rcu import rcu_barrier, rcu_state

from modelkit import boot_steps, make_model, plugin_module

LOG: list[str] = []


def irqs_off(cpu):
    flags = cpu.local_irq_save()
    yield
    yield
    cpu.local_irq_restore(flags)
    LOG.append(f"irqs_off left on CPU {cpu.n}")
    yield


def explicit(cpu):
    yield
    rcu_read_lock(cpu)
    yield
    yield
    rcu_read_unlock(cpu)
    LOG.append(f"rcu_read_unlock on CPU {cpu.n}")
    yield


def trampoline(cpu):
    tasks_rcu_enter(cpu)
    yield
    yield
    tasks_rcu_exit(cpu)
    LOG.append(f"tasks_rcu_exit on CPU {cpu.n}")
    yield


def sync(cpu):
    yield from synchronize_rcu(cpu)
    LOG.append("synchronize_rcu returned")


def sync_tasks(cpu):
    yield from synchronize_rcu_tasks(cpu)
    LOG.append("synchronize_rcu_tasks returned")


OPS = [Operation(f"rcu.{fn.__name__}", fn) for fn in (irqs_off, explicit, trampoline, sync, sync_tasks)]
PLUGIN = plugin_module("rcu_ops", fuzzer_operations=hookimpl(lambda config: OPS))


def _machine(*config: str) -> Machine:
    m = Machine(make_model("v6.2", extra=[PLUGIN], config=list(config)))
    for step in [*boot_steps(), Step("online", cpu=1), Step("online", cpu=2)]:
        apply_step(m, step)
        m.run_to_completion()
    LOG.clear()
    return m


def _start(m: Machine, n: int, name: str) -> None:
    apply_step(m, Step("start", cpu=n, name=f"rcu.{name}"))


def _advance(m: Machine, n: int, times: int) -> None:
    for _ in range(times):
        m.advance(m.cpus[n])


def _until_blocked(m: Machine, n: int) -> None:
    """Run CPU ``n`` until it waits (or is done)."""
    for _ in range(10):
        if not m.cpus[n].runnable():
            return
        m.advance(m.cpus[n])


@pytest.mark.parametrize(("reader", "steps_in"), [("irqs_off", 1), ("explicit", 2)])
def test_synchronize_rcu_waits_for_a_reader_that_had_begun(reader, steps_in):
    m = _machine()
    _start(m, 1, reader)
    _advance(m, 1, steps_in)
    assert in_rcu_reader(m.cpus[1])
    _start(m, 0, "sync")
    _until_blocked(m, 0)
    assert m.cpus[0].stack and not m.cpus[0].runnable()  # the grace period is not over
    m.run_to_completion()
    assert LOG.index("synchronize_rcu returned") > 0  # after the reader left
    assert not in_rcu_reader(m.cpus[1]) and rcu_state(m).nesting == {}


def test_a_reader_that_begins_after_the_call_is_not_waited_for():
    m = _machine()
    _start(m, 0, "sync")
    _advance(m, 0, 1)
    _start(m, 1, "irqs_off")
    _advance(m, 1, 1)
    assert in_rcu_reader(m.cpus[1])
    _until_blocked(m, 0)
    assert LOG == ["synchronize_rcu returned"] and not m.cpus[0].stack


def test_the_wait_follows_a_preempted_reader_to_its_new_cpu():
    """rcu_read_lock() does not disable preemption (CONFIG_PREEMPT): the reader may move, and
    the grace period still waits for it where it runs now."""
    m = _machine("CONFIG_PREEMPT=y")
    _start(m, 1, "explicit")
    _advance(m, 1, 2)
    _start(m, 0, "sync")
    _until_blocked(m, 0)
    apply_step(m, Step("migrate", cpu=1, cpus=(2,)))
    assert not m.cpus[1].stack and in_rcu_reader(m.cpus[2])
    assert not m.cpus[0].runnable()
    m.run_to_completion()
    assert LOG == ["rcu_read_unlock on CPU 2", "synchronize_rcu returned"]


def test_only_tasks_rcu_waits_for_trampoline_code():
    m = _machine()
    _start(m, 1, "trampoline")
    _advance(m, 1, 1)
    assert not in_rcu_reader(m.cpus[1])  # preemptible: not an RCU reader
    _start(m, 0, "sync")
    _start(m, 2, "sync_tasks")
    _until_blocked(m, 0)
    _until_blocked(m, 2)
    assert LOG == ["synchronize_rcu returned"] and m.cpus[2].stack
    m.run_to_completion()
    assert LOG[1:] == ["tasks_rcu_exit on CPU 1", "synchronize_rcu_tasks returned"]


def test_synchronize_rcu_in_atomic_context_is_a_might_sleep_bug_at_each_versions_line():
    from fuzzer import KernelFailure

    for kernel, at in [("v6.1", "kernel/sched/completion.c:101"), ("v6.12", "kernel/rcu/tree.c:4027")]:
        m = Machine(make_model(kernel, extra=[PLUGIN]))
        apply_step(m, boot_steps()[0])
        m.run_to_completion()
        cpu = m.cpus[0]
        _start(m, 0, "irqs_off")
        cpu.preempt_count += 1
        with pytest.raises(KernelFailure, match="sleeping function called from invalid context") as exc:
            next(synchronize_rcu(cpu))
        assert exc.value.at == at


def test_call_rcu_callbacks_run_once_the_machine_is_quiescent():
    m = _machine()
    ran: list[int] = []
    call_rcu(m, lambda: ran.append(1))
    call_rcu(m, lambda: call_rcu(m, lambda: ran.append(2)))  # queued from a callback
    assert ran == []
    rcu_barrier(m)
    assert ran == [1, 2] and rcu_state(m).pending == []
