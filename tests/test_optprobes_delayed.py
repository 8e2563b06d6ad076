"""The delayed unoptimizing path of optimized kprobes, step by step as kernel/kprobes.c has it.

Disabling or unregistering an optimized probe does not touch the text: ``__disarm_kprobe``
queues it (``unoptimize_kprobe(p, false)``, kernel/kprobes.c:762 in 6.1.192 and 6.12.117)
and skips ``arch_disarm_kprobe`` while it is queued (:1009); the optimizer's
``do_unoptimize_kprobes`` (:552-580) puts the trap back, disarms the disabled ones and
unhashes the unused ones, ``do_free_cleaned_kprobes`` (:583-598) frees them after
``synchronize_rcu_tasks``. Explicit schedules on one CPU at a time: the behaviour, not a search.
"""

from __future__ import annotations

import pytest

from fuzzer import PAGE_OFFSET, KernelFailure, Operation, Step, mutex_lock, mutex_unlock
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer.kernel import down_read, up_read
from fuzzer.testing import plugin_module
from fuzzer_plugins.kprobes import BREAKPOINT_INSTRUCTION, kstate, site_addr
from fuzzer_plugins.optprobes import FREEING, UNOPTIMIZING, branch, op_at, ostate

from modelkit import boot_steps, make_model, replay, run_each, run_until_idle, start_op

ADDR = site_addr(0)


_op, _run = start_op, run_each


def _optimized(kernel: str, extra=()) -> Machine:
    """A machine with the user's probe at do_sys_open optimized: the branch in the text."""
    m = Machine(make_model(kernel, extra=extra))
    _run(m, boot_steps()[0], Step("online", cpu=1), _op(0, "kprobes.register", site=0),
         _op(1, "optprobes.optimizer"))
    assert m.fetch(m.cpus[0], ADDR) == branch(ADDR, op_at(m, ADDR).buff)
    return m


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2", "v6.12"])
def test_a_disabled_optimized_probe_keeps_its_branch_until_the_optimizer_runs(kernel):
    m = _optimized(kernel)
    op, kp = op_at(m, ADDR), kstate(m).user[(0, 0)]
    _run(m, _op(0, "kprobes.disable", site=0))
    assert op.flag and op.lst == UNOPTIMIZING and op.kp.disabled  # queued, still armed
    assert m.fetch(m.cpus[0], ADDR) == op.branch
    hits = kp.hits
    _run(m, _op(1, "kprobes.hit", site=0))  # through the detour: optimized_callback returns
    assert kp.hits == hits                  # at once for a disabled probe (optprobes.c:100)
    _run(m, _op(1, "optprobes.optimizer"))  # trap over the branch, then the original back
    assert not op.flag and op.lst is None and op.buff not in ostate(m).free
    assert m.fetch(m.cpus[0], ADDR) == m.pristine_text[ADDR - PAGE_OFFSET]
    _run(m, _op(0, "kprobes.enable", site=0), _op(1, "optprobes.optimizer"))
    assert m.fetch(m.cpus[0], ADDR) == op.branch and op.flag and op.lst is None
    m.check_end_state()


@pytest.mark.parametrize("kernel", ["v6.1", "v6.12"])
def test_enabling_a_probe_queued_for_unoptimizing_puts_the_trap_over_its_branch(kernel):
    """enable_kprobe -> arm_kprobe -> __arm_kprobe: arch_arm_kprobe writes the trap over the
    branch (:982-996), then optimize_kprobe finds it flagged and only dequeues it (:697-703):
    a trap probe flagged optimized, which the optimizer leaves alone -- consistent on powerpc,
    where the trap replaces the whole branch word."""
    m = _optimized(kernel)
    op, kp = op_at(m, ADDR), kstate(m).user[(0, 0)]
    _run(m, _op(0, "kprobes.disable", site=0), _op(0, "kprobes.enable", site=0))
    assert m.fetch(m.cpus[0], ADDR) == BREAKPOINT_INSTRUCTION and op.flag and op.lst is None
    _run(m, _op(1, "optprobes.optimizer"), _op(1, "kprobes.hit", site=0))
    assert m.fetch(m.cpus[0], ADDR) == BREAKPOINT_INSTRUCTION and kp.hits == 1  # the trap's
    _run(m, _op(0, "kprobes.unregister", site=0))  # queued again: unused, still hashed
    assert kstate(m).table[ADDR] is op.kp and op.kp.children == [] and op.lst == UNOPTIMIZING
    _run(m, _op(1, "optprobes.optimizer"))  # unoptimized, disarmed, unhashed, freed
    assert ADDR not in kstate(m).table and op.kp.freed and op.buff in ostate(m).free
    assert m.fetch(m.cpus[0], ADDR) == m.pristine_text[ADDR - PAGE_OFFSET]
    m.check_end_state()


def _run_step(model, steps: list[Step], n: int) -> Step:
    """The ``run`` step that takes CPU ``n`` to the end of its operation or to a failure."""
    m = Machine(model)
    for step in steps:
        apply_step(m, step)
    count = 0
    try:
        while m.cpus[n].runnable():
            count += 1
            m.advance(m.cpus[n])
    except KernelFailure:
        pass
    return Step("run", cpus=[n] * count)


def _force(cpu, site: int) -> object:
    """What ``unoptimize_all_kprobes`` (sysctl debug.kprobes-optimization=0, :912-936) and then
    ``disarm_all_kprobes`` (debugfs kprobes/enabled=0) do to one enabled optimized probe,
    neither of which the model runs on its own: queue it for unoptimizing, then take the
    forced path (``__disarm_kprobe`` with ``kprobes_all_disarmed``: ``unoptimize_kprobe(p,
    true)`` moves it to ``freeing_list``, and it stays armed while queued)."""
    m = cpu.m
    ap = kstate(m).table[site_addr(site)]
    yield from mutex_lock(cpu, kstate(m).kprobe_mutex)
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    ostate(m).allow = False
    yield from cpu.k.unoptimize_kprobe(cpu, ap, False)
    yield from cpu.k.unoptimize_kprobe(cpu, ap, True)
    if not ostate(m).queued_probe(ap):
        yield from cpu.k.arch_disarm_kprobe(cpu, ap)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_unlock(cpu, kstate(m).kprobe_mutex)
    return 0


FORCE = plugin_module("force_unopt", fuzzer_operations=lambda config: [
    Operation("test.force", _force, {"site": [0]}, doc="forced unoptimizing", comm="sh")])


@pytest.mark.parametrize("kernel, fixed", [("v6.2", False),
                                           ("v6.1", True), ("v6.12", True)])
def test_a_forcibly_unoptimized_probe_on_freeing_list_before_and_after_4fbd2f83fda0(kernel, fixed):
    """Before 4fbd2f83fda0 (v6.3-rc1) ``do_unoptimize_kprobes`` returns at once with
    ``unoptimizing_list`` empty: the probe the forced path put on ``freeing_list`` reaches
    ``do_free_cleaned_kprobes`` still in use and WARNs (:589); after it, the optimizer
    takes it off the list."""
    model = make_model(kernel, extra=[FORCE])
    steps: list[Step] = [boot_steps()[0]]
    for n, start in [(1, Step("online", cpu=1)), (0, _op(0, "kprobes.register", site=0)),
                     (1, _op(1, "optprobes.optimizer")), (0, _op(0, "test.force", site=0))]:
        steps += [start, run_until_idle(model, [*steps, start], n)]
    m = Machine(model)
    for step in steps:
        apply_step(m, step)
    op = op_at(m, ADDR)
    assert op.lst == FREEING and not op.flag
    assert m.fetch(m.cpus[0], ADDR) == BREAKPOINT_INSTRUCTION  # forced: the trap over the branch
    start = _op(1, "optprobes.optimizer")
    m, failure = replay(model, [*steps, start, _run_step(model, [*steps, start], 1)])
    if fixed:
        assert failure is None, failure
        assert op_at(m, ADDR).lst is None
        # The probe is not marked disabled (disarm_all_kprobes leaves the flags), so nothing
        # disarms it (:567-568): the trap stays though every kprobe is "globally disabled".
        assert m.fetch(m.cpus[0], ADDR) == BREAKPOINT_INSTRUCTION
    else:
        assert failure is not None
        sig = failure.signature
        assert (sig.kind, sig.function) == ("WARNING", "do_free_cleaned_kprobes")
        assert sig.location == "kernel/kprobes.c:589"
