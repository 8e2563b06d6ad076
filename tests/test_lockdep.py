"""lockdep as the kernel does it: the class dependency graph, hardirq usage, debug_locks_off."""

from __future__ import annotations

import pytest

from fuzzer import (
    InterruptSource,
    Mutex,
    Operation,
    SpinLock,
    Step,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    spin_lock,
    spin_unlock,
)
from fuzzer.kernel import lockdep

from modelkit import boot_steps, make_model, plugin_module, replay

QUIET = ["no:kprobes", "no:jump_label", "no:breakpoints", "no:interrupts", "no:fixups"]


def _locks_plugin(irq_lock: str | None = None, enable_irqs_in_handler: bool = False):
    """Operations taking two mutexes in either order, a spinlock with IRQs on, and a
    timer-like interrupt that takes the spinlock (or enables interrupts)."""

    def setup(machine):
        machine.attach("t", {"a": Mutex("lock_a"), "b": Mutex("lock_b"), "s": SpinLock("lock_s"),
                             "c": SpinLock("lock_c")})

    def take(first, second):
        def op(cpu):
            locks = cpu.m.state["t"]
            yield from mutex_lock(cpu, locks[first])
            yield from mutex_lock(cpu, locks[second])
            yield from mutex_unlock(cpu, locks[second])
            yield from mutex_unlock(cpu, locks[first])

        return op

    def spin(cpu):
        yield from spin_lock(cpu, cpu.m.state["t"]["s"])
        yield from spin_unlock(cpu, cpu.m.state["t"]["s"])

    def handler(cpu):
        if enable_irqs_in_handler:
            cpu.local_irq_restore(True)
        if irq_lock is not None:
            lock = cpu.m.state["t"][irq_lock]
            yield from spin_lock(cpu, lock)
            yield from spin_unlock(cpu, lock)
        yield

    def operations(config):
        return [Operation("t.ab", take("a", "b")), Operation("t.ba", take("b", "a")),
                Operation("t.spin", spin)]

    def interrupts(config):
        return [InterruptSource("t.irq", handler)]

    return plugin_module("lockdep_test_plugin", fuzzer_machine_setup=hookimpl(setup),
                         fuzzer_operations=hookimpl(operations),
                         fuzzer_interrupt_sources=hookimpl(interrupts))


def _run(*ops: str) -> list[Step]:
    steps = [*boot_steps()]
    for op in ops:
        steps += [Step("start", cpu=0, name=op), Step("run", cpus=[0] * 10)]
    return steps


def test_an_inversion_is_reported_without_the_deadlocking_interleaving():
    """The two orders run one after the other on one CPU: no deadlock can happen, lockdep
    still sees lock_a -> lock_b, then lock_b -> lock_a, and prints both chains."""
    model = make_model(extra=[_locks_plugin()], plugins=QUIET)
    _, failure = replay(model, _run("t.ab", "t.ba"))
    assert failure.kind == "LOCKDEP"
    assert failure.message == "WARNING: possible circular locking dependency detected"
    assert failure.signature.location == "kernel/locking/lockdep.c"  # v6.2: line not checked
    text = failure.detail
    assert "ba/" in text and "is trying to acquire lock:\n (lock_a)" in text
    assert "but task is already holding lock:\n (lock_b)" in text
    assert "-> #1 (lock_b):" in text and "-> #0 (lock_a):" in text
    assert " *** DEADLOCK ***" in text
    assert failure.signature.function == "mutex_lock"  # the operation itself is no modelled routine


@pytest.mark.parametrize(("kernel", "line"), [("v6.1", 2215), ("v6.12", 2234)])
def test_the_circular_report_names_lockdep_c_at_each_version(kernel, line):
    model = make_model(kernel, extra=[_locks_plugin()], plugins=QUIET)
    _, failure = replay(model, _run("t.ab", "t.ba"))
    assert failure.signature.location == f"kernel/locking/lockdep.c:{line}"
    assert failure.signature.kind == "LOCKDEP"


def test_the_same_order_twice_is_clean():
    model = make_model(extra=[_locks_plugin()], plugins=QUIET)
    _, failure = replay(model, _run("t.ab", "t.ab", "t.ab"))
    assert failure is None


def test_without_prove_locking_only_the_deadlock_itself_is_reported():
    model = make_model(extra=[_locks_plugin()], plugins=QUIET, config=["CONFIG_PROVE_LOCKING=n"])
    _, failure = replay(model, _run("t.ab", "t.ba"))
    assert failure is None
    # The deadlocking interleaving: each CPU holds its first lock.
    steps = [*boot_steps(), Step("online", cpu=1), Step("run", cpus=[1] * 40),
             Step("start", cpu=0, name="t.ab"), Step("start", cpu=1, name="t.ba"),
             Step("run", cpus=[0, 0, 1, 1, 0, 1, 0, 1])]
    _, failure = replay(model, steps)
    assert failure.kind == "DEADLOCK"


def test_recursive_locking_of_one_class():
    model = make_model(extra=[_locks_plugin()], plugins=QUIET)
    _, failure = replay(model, _run("t.spin"))
    assert failure is None

    def twice(cpu):
        m = cpu.m
        yield from spin_lock(cpu, m.state["t"]["s"])
        yield from spin_lock(cpu, SpinLock("other_s", key="lock_s"))

    plugin = plugin_module("twice", fuzzer_operations=hookimpl(
        lambda config: [Operation("twice.op", twice)]))
    model = make_model("v6.12", extra=[_locks_plugin(), plugin], plugins=QUIET)
    _, failure = replay(model, _run("twice.op"))
    assert failure.kind == "LOCKDEP"
    assert failure.message == "WARNING: possible recursive locking detected"
    assert failure.signature.location == "kernel/locking/lockdep.c:3117"


def test_hardirq_on_then_in_hardirq_is_inconsistent_lock_state():
    model = make_model("v6.12", extra=[_locks_plugin(irq_lock="s")], plugins=QUIET)
    steps = [*_run("t.spin"), Step("irq", cpu=0, name="t.irq"), Step("run", cpus=[0] * 5)]
    _, failure = replay(model, steps)
    assert failure.kind == "LOCKDEP"
    assert failure.message == "WARNING: inconsistent lock state"
    assert "inconsistent {HARDIRQ-ON-W} -> {IN-HARDIRQ-W} usage." in failure.detail
    assert "[HC1[1]:SC0[0]:HE0:SE1] takes:" in failure.detail
    assert failure.signature.location == "kernel/locking/lockdep.c:4080"


def test_in_hardirq_then_hardirq_on_is_inconsistent_the_other_way():
    model = make_model("v6.1", extra=[_locks_plugin(irq_lock="s")], plugins=QUIET)
    steps = [*boot_steps(), Step("irq", cpu=0, name="t.irq"), Step("run", cpus=[0] * 5),
             *_run("t.spin")[1:]]
    _, failure = replay(model, steps)
    assert failure.kind == "LOCKDEP"
    assert "inconsistent {IN-HARDIRQ-W} -> {HARDIRQ-ON-W} usage." in failure.detail
    assert failure.signature.location == "kernel/locking/lockdep.c:4041"


def test_an_irq_lock_never_taken_with_irqs_on_is_fine():
    model = make_model(extra=[_locks_plugin(irq_lock="c")], plugins=QUIET)
    steps = [*_run("t.spin"), Step("irq", cpu=0, name="t.irq"), Step("run", cpus=[0] * 5),
             *_run("t.spin")[1:]]
    _, failure = replay(model, steps)
    assert failure is None


def test_enabling_interrupts_in_a_hardirq_handler_warns():
    model = make_model("v6.12", extra=[_locks_plugin(enable_irqs_in_handler=True)], plugins=QUIET)
    steps = [*boot_steps(), Step("irq", cpu=0, name="t.irq"), Step("run", cpus=[0] * 5)]
    _, failure = replay(model, steps)
    assert failure.kind == "WARNING"
    assert failure.signature.location == "kernel/locking/lockdep.c:4428"
    assert failure.detail == "DEBUG_LOCKS_WARN_ON(lockdep_hardirq_context())"


def test_lockdep_is_off_after_its_first_report_and_the_model_checks_go_on(monkeypatch):
    """A report let pass (a known finding) switches lockdep off, as debug_locks_off does:
    the next inversion is not reported, lockdep_assert_irqs_disabled goes quiet, and the
    deadlock itself is still caught by the model's own detection."""
    model = make_model(extra=[_locks_plugin()], plugins=QUIET)
    monkeypatch.setattr(lockdep, "_known", lambda m, failure: True)
    steps = [*_run("t.ab", "t.ba"), Step("online", cpu=1), Step("run", cpus=[1] * 40),
             Step("start", cpu=0, name="t.ab"), Step("start", cpu=1, name="t.ba"),
             Step("run", cpus=[0, 0, 1, 1, 0, 1, 0, 1])]
    m, failure = replay(model, steps)
    assert failure.kind == "DEADLOCK"
    ld = m.state["lockdep"]
    assert not ld.debug_locks
    assert len(ld.reports) == 1 and "possible circular locking dependency" in ld.reports[0]
    assert not lockdep.debug_locks_on(m)


def test_the_graph_lives_for_the_whole_boot():
    model = make_model(extra=[_locks_plugin()], plugins=QUIET)
    m, failure = replay(model, _run("t.ab"))
    assert failure is None
    graph = m.state["lockdep"].classes
    assert "lock_b" in graph["lock_a"].after
    # The boot's own dependencies are in it too: poking_init's cpu_hotplug_lock -> PTE lock.
    assert "ptlock_ptr(page)" in graph["cpu_hotplug_lock"].after


def _irq_order_plugin():
    """An interrupt takes lock_s; one operation takes lock_s then lock_t with interrupts off
    (spin_lock_irqsave), another takes lock_t with interrupts on."""

    def setup(machine):
        machine.attach("o", {"s": SpinLock("lock_s"), "t": SpinLock("lock_t")})

    def nested(cpu):
        locks = cpu.m.state["o"]
        flags = cpu.local_irq_save()
        yield from spin_lock(cpu, locks["s"])
        yield from spin_lock(cpu, locks["t"])
        yield from spin_unlock(cpu, locks["t"])
        yield from spin_unlock(cpu, locks["s"])
        cpu.local_irq_restore(flags)

    def plain(cpu):
        yield from spin_lock(cpu, cpu.m.state["o"]["t"])
        yield from spin_unlock(cpu, cpu.m.state["o"]["t"])

    def handler(cpu):
        yield from spin_lock(cpu, cpu.m.state["o"]["s"])
        yield from spin_unlock(cpu, cpu.m.state["o"]["s"])

    return plugin_module(
        "irq_order_plugin", fuzzer_machine_setup=hookimpl(setup),
        fuzzer_operations=hookimpl(lambda config: [Operation("o.nested", nested),
                                                   Operation("o.plain", plain)]),
        fuzzer_interrupt_sources=hookimpl(lambda config: [InterruptSource("o.irq", handler)]))


IRQ = [Step("irq", cpu=0, name="o.irq"), Step("run", cpus=[0] * 5)]


def test_a_new_dependency_from_an_irq_safe_to_an_irq_unsafe_lock():
    model = make_model("v6.12", extra=[_irq_order_plugin()], plugins=QUIET)
    _, failure = replay(model, [*boot_steps(), *IRQ, *_run("o.plain", "o.nested")[1:]])
    assert failure.kind == "LOCKDEP"
    assert failure.message == "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected"
    assert "which would create a new lock dependency:\n (lock_s) -> (lock_t)" in failure.detail
    assert failure.signature.location == "kernel/locking/lockdep.c:2916"


def test_an_irq_use_after_the_dependency_is_an_irq_lock_inversion():
    model = make_model("v6.1", extra=[_irq_order_plugin()], plugins=QUIET)
    _, failure = replay(model, [*_run("o.nested", "o.plain"), *IRQ])
    assert failure.kind == "LOCKDEP"
    assert failure.message == "WARNING: possible irq lock inversion dependency detected"
    assert "but this lock took another, HARDIRQ-unsafe lock in the past:\n (lock_t)" in failure.detail
    assert failure.signature.location == "kernel/locking/lockdep.c:4136"


def test_irq_safe_locks_nested_with_interrupts_off_only_are_fine():
    model = make_model(extra=[_irq_order_plugin()], plugins=QUIET)
    _, failure = replay(model, [*_run("o.nested"), *IRQ, *_run("o.nested")[1:]])
    assert failure is None


def test_an_irq_unsafe_use_after_the_dependency_is_the_backward_inversion():
    model = make_model("v6.12", extra=[_irq_order_plugin()], plugins=QUIET)
    _, failure = replay(model, [*boot_steps(), *IRQ, *_run("o.nested", "o.plain")[1:]])
    assert failure.message == "WARNING: possible irq lock inversion dependency detected"
    assert "but this lock was taken by another, HARDIRQ-safe lock in the past:\n (lock_s)" in failure.detail
    assert failure.signature.location == "kernel/locking/lockdep.c:4214"
