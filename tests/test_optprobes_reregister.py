"""A probe registered at an address whose last probe is still in unregister_kprobe's grace
period gets an optimized probe of its own.

In the kernel the optimized probe is an aggregator made for one registration
(try_to_optimize_kprobe -> init_aggr_kprobe, kernel/kprobes.c:877 v6.12): once
__unregister_kprobe_top unhashed it (:1823), a new register_kprobe at the address starts
from a plain probe, which optimize_kprobe leaves alone (kprobe_optready, :448-683), and
__unregister_kprobe_bottom frees only the old aggregator (:1833-1838). The model kept
optimized probes by address, so the new probe's arm_kprobe queued the old detour and the
old bottom half freed the new one: 'kprobes match the text' then saw the new probe's branch
with no optimized probe behind it (found by the walk on v6.12-fixed Hash, seed 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from fuzzer import Step
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer_plugins.kprobes import BREAKPOINT_INSTRUCTION, kstate, site_addr
from fuzzer_plugins.optprobes import branch, ostate

from modelkit import boot_steps, make_model, replay, run_until_idle

ADDR = site_addr(0)


def _until(model, steps: Sequence[Step], n: int, done: Callable[[Machine], bool]) -> Step:
    """The ``run`` step that advances CPU ``n`` after ``steps`` until ``done`` holds."""
    m = Machine(model)
    for step in steps:
        apply_step(m, step)
    count = 0
    while not done(m):
        assert m.cpus[n].runnable(), f"CPU {n} stopped before the state was reached"
        m.advance(m.cpus[n])
        count += 1
    return Step("run", cpus=[n] * count)


def _top_half_done(m: Machine) -> bool:
    """CPU 1's unregister_kprobe is past __unregister_kprobe_top (the probe unhashed,
    kprobe_mutex free): in synchronize_rcu, before the bottom half."""
    return ADDR not in kstate(m).table and kstate(m).kprobe_mutex.owner is None


def _schedule(model, optimizer_first: bool) -> list[Step]:
    steps = [*boot_steps(), Step("online", cpu=1)]
    steps.append(run_until_idle(model, steps, 1))
    steps.append(Step("online", cpu=2))
    steps.append(run_until_idle(model, steps, 2))
    steps.append(Step("start", cpu=0, name="kprobes.register", args={"site": 0, "probe": 1}))
    steps.append(run_until_idle(model, steps, 0))
    steps.append(Step("start", cpu=2, name="optprobes.optimizer", args={}))
    steps.append(run_until_idle(model, steps, 2))  # probe 1 optimized: the branch in the text
    steps.append(Step("start", cpu=1, name="kprobes.unregister", args={"site": 0, "probe": 1}))
    steps.append(_until(model, steps, 1, _top_half_done))
    steps.append(Step("start", cpu=0, name="kprobes.register", args={"site": 0, "probe": 0}))
    steps.append(run_until_idle(model, steps, 0))
    last = [(2, Step("start", cpu=2, name="optprobes.optimizer", args={})), (1, None)]
    for n, start in (last if optimizer_first else last[::-1]):
        if start is not None:
            steps.append(start)
        steps.append(run_until_idle(model, steps, n))
    return steps


@pytest.mark.parametrize("optimizer_first", [True, False], ids=["optimizer-first", "bottom-first"])
@pytest.mark.parametrize("mmu", ["hash", "radix"])
@pytest.mark.parametrize("kernel", ["v6.2", "v6.12-fixed"])
def test_a_probe_registered_in_the_last_ones_grace_period_is_optimized_on_its_own(
        kernel, mmu, optimizer_first):
    model = make_model(kernel, mmu=mmu, config=["CONFIG_DEBUG_VM=y"])
    m, failure = replay(model, _schedule(model, optimizer_first))
    assert failure is None, failure
    s = ostate(m)
    new = kstate(m).user[(0, 0)]
    op = s.ops[ADDR]
    assert op.kp is new and op.optimized  # its own detour, the branch into it in the text
    assert m.fetch(m.cpus[0], ADDR) == branch(ADDR, op.buff) != BREAKPOINT_INSTRUCTION
    assert s.by_buff[op.buff] is op and op.buff not in s.free
    assert len(s.by_buff) == 2  # the trampoline's and the new probe's: the old one freed
    m.check_end_state()
