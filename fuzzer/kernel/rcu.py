"""RCU's grace period, as far as the model needs it: ``synchronize_rcu`` waits for readers.

A read-side critical section here is a region with preemption or interrupts
off that reads an RCU-protected object -- the kprobe trap handler looking up
its probe and single-stepping the instruction slot. ``synchronize_rcu()``
returns only once every CPU that was inside such a section when it was called
has left it (a later section may start meanwhile: it cannot see what the
updater unpublished). Not replaceable: every model uses it as it is.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._routines import routine
from fuzzer.kernel.locking import might_sleep

if TYPE_CHECKING:
    from fuzzer._machine import Cpu

Gen = Generator[Any, None, Any]


@attrs.define
class RcuCpu:
    """Per-CPU reader state: nesting depth, and how many outermost sections have ended."""

    nesting: int = 0
    ended: int = 0


def _rcu(cpu: Cpu) -> RcuCpu:
    r = cpu.state.get("rcu")
    if r is None:
        r = cpu.attach("rcu", RcuCpu())
    return r


def rcu_read_lock(cpu: Cpu) -> None:
    """Enter a read-side critical section (``rcu_read_lock``, or preemption/IRQs off)."""
    _rcu(cpu).nesting += 1


def rcu_read_unlock(cpu: Cpu) -> None:
    """Leave it; the outermost exit is this CPU's quiescent state."""
    r = _rcu(cpu)
    r.nesting -= 1
    if r.nesting == 0:
        r.ended += 1


@routine("synchronize_rcu", "kernel/rcu/tree.c")
def synchronize_rcu(cpu: Cpu) -> Gen:
    """``synchronize_rcu()`` (kernel/rcu/tree.c): wait for a grace period -- every reader that
    had begun when it was called has finished. May sleep."""
    might_sleep(cpu, "kernel/rcu/tree.c")
    m = cpu.m
    readers = [(c, r.ended) for c in m.cpus if c is not cpu
               for r in [c.state.get("rcu")] if r is not None and r.nesting]
    yield
    for c, ended in readers:
        r = _rcu(c)
        while r.ended == ended:
            yield lambda r=r, ended=ended: r.ended == ended
