"""A probe registered at an address whose last probe is still being unregistered.

In the kernel the optimized probe is an aggregator made for one registration
(try_to_optimize_kprobe -> init_aggr_kprobe, kernel/kprobes.c:851-879 and :1283-1300
v6.12). What a new register_kprobe at the address finds depends on how the last probe
went:

- optimized, its branch in the text: __disarm_kprobe only queues it for the optimizer
  (unoptimize_kprobe, :762), so __unregister_kprobe_top leaves the aggregator hashed,
  unused (:1786-1818); register_aggr_kprobe rescues it (reuse_unused_kprobe, :768-786):
  optimize_kprobe takes it off unoptimizing_list with its branch still in the text, and
  the new probe runs through the old detour;
- disabled and unoptimized by the optimizer first: the top half unhashes it (:1823), the
  new registration starts from a plain probe and gets a detour of its own, and
  __unregister_kprobe_bottom frees only the old aggregator (:1833-1838). (The model once
  kept optimized probes by address: the new probe queued the old detour and the old bottom
  half freed the new one -- a false positive the walk found on v6.12-fixed Hash, seed 3.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from fuzzer import Step
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer_plugins.kprobes import BREAKPOINT_INSTRUCTION, kstate, site_addr
from fuzzer_plugins.optprobes import UNOPTIMIZING, branch, op_at, ostate

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
    """CPU 1's unregister_kprobe is past __unregister_kprobe_top (kprobe_mutex free; the
    aggregator unhashed, or the probe off its list): in synchronize_rcu, before the bottom."""
    old = kstate(m).user.get((0, 1))
    assert old is not None and old.parent is not None, "the unregister went past its top half"
    return kstate(m).kprobe_mutex.owner is None and (
        ADDR not in kstate(m).table or old not in (old.parent.children or ()))


def _start(steps: list[Step], model, n: int, name: str, **args: int) -> None:
    steps.append(Step("start", cpu=n, name=name, args=args))
    steps.append(run_until_idle(model, steps, n))


def _schedule(model, optimizer_first: bool, unoptimized_first: bool) -> list[Step]:
    steps = [*boot_steps(), Step("online", cpu=1)]
    steps.append(run_until_idle(model, steps, 1))
    steps.append(Step("online", cpu=2))
    steps.append(run_until_idle(model, steps, 2))
    _start(steps, model, 0, "kprobes.register", site=0, probe=1)
    _start(steps, model, 2, "optprobes.optimizer")  # probe 1 optimized: the branch in the text
    if unoptimized_first:
        _start(steps, model, 0, "kprobes.disable", site=0, probe=1)
        _start(steps, model, 2, "optprobes.optimizer")  # branch -> trap -> original
    steps.append(Step("start", cpu=1, name="kprobes.unregister", args={"site": 0, "probe": 1}))
    steps.append(_until(model, steps, 1, _top_half_done))
    _start(steps, model, 0, "kprobes.register", site=0, probe=0)
    last = [(2, Step("start", cpu=2, name="optprobes.optimizer", args={})), (1, None)]
    for n, start in (last if optimizer_first else last[::-1]):
        if start is not None:
            steps.append(start)
        steps.append(run_until_idle(model, steps, n))
    return steps


@pytest.mark.parametrize("optimizer_first", [True, False], ids=["optimizer-first", "bottom-first"])
@pytest.mark.parametrize("mmu", ["hash", "radix"])
@pytest.mark.parametrize("kernel", ["v6.2", "v6.12-fixed"])
def test_a_probe_registered_after_its_unoptimized_predecessor_is_unhashed_is_optimized_on_its_own(
        kernel, mmu, optimizer_first):
    model = make_model(kernel, mmu=mmu, config=["CONFIG_DEBUG_VM=y"])
    m, failure = replay(model, _schedule(model, optimizer_first, unoptimized_first=True))
    assert failure is None, failure
    s = ostate(m)
    new = kstate(m).user[(0, 0)]
    op = op_at(m, ADDR)
    assert op is not None and op.kp is new.parent and op.optimized  # its own detour
    assert m.fetch(m.cpus[0], ADDR) == branch(ADDR, op.buff) != BREAKPOINT_INSTRUCTION
    assert s.by_buff[op.buff] is op and op.buff not in s.free
    assert len(s.by_buff) == 2  # the trampoline's and the new probe's: the old one freed
    m.check_end_state()


@pytest.mark.parametrize("optimizer_first", [True, False], ids=["optimizer-first", "bottom-first"])
@pytest.mark.parametrize("kernel", ["v6.1", "v6.2", "v6.12"])
def test_a_probe_registered_while_the_optimized_one_awaits_unoptimizing_reuses_it(
        kernel, optimizer_first):
    model = make_model(kernel, config=["CONFIG_DEBUG_VM=y"])
    steps = _schedule(model, optimizer_first, unoptimized_first=False)
    at = next(i for i, st in enumerate(steps) if st.action == "start"
              and st.name == "kprobes.register" and dict(st.args).get("probe") == 0)
    m = Machine(model)
    for step in steps[:at]:
        apply_step(m, step)
    old = kstate(m).user[(0, 1)]
    ap = old.parent
    assert ap is not None and kstate(m).table[ADDR] is ap and ap.children == [] and ap.disabled
    assert op_at(m, ADDR).lst == UNOPTIMIZING  # unused, waiting for the optimizer
    buff = op_at(m, ADDR).buff
    m, failure = replay(model, steps)
    assert failure is None, failure
    new = kstate(m).user[(0, 0)]
    op = op_at(m, ADDR)
    # reuse_unused_kprobe: the same aggregator and detour, taken off unoptimizing_list,
    # the branch never removed; the old bottom half frees nothing (its probe was unlisted).
    assert op.kp is new.parent and op.buff == buff and op.lst is None and op.flag
    assert m.fetch(m.cpus[0], ADDR) == branch(ADDR, buff) and not op.kp.disabled
    assert not op.kp.freed and op.kp.insn_slot
    m.check_end_state()
