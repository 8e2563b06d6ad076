"""unregister_kprobe unhashes the probe before disarming it.

``__unregister_kprobe_top()`` (kernel/kprobes.c:1767-1825, v6.12) disarms the
probe first (``__disable_kprobe``, which patches the original instruction
back) and only then ``hlist_del_rcu``: while the probe is hashed, a CPU that
hits its trap finds it. The variant unhashes first and disarms after.

The variant unhashes the last probe at an address -- a plain one, or the only
one on an aggregator (with optprobes every probe it optimizes is one) --
first.

The bad interleaving: CPU A unhashes the probe; CPU B executes the probed
instruction, still the trap, and looks it up -- nothing there, and the text
still holds the breakpoint, so it is not a removed probe either: the program
check is an oops. B's fetch and lookup must both fall inside A's window from
the unhash to the disarm's store (the disarm takes ``cpus_read_lock`` and
``text_mutex`` and maps the text first).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine

from ..kprobes import KPROBES_C, Kprobe, get_valid_kprobe, kstate


@routine("__unregister_kprobe_top", KPROBES_C, override=True, inlined=True)
def __unregister_kprobe_top(cpu: Cpu, p: Kprobe) -> Generator[Any, None, Any]:
    """__unregister_kprobe_top unhashing the last probe at an address (a plain probe, or the
    only one on an aggregator -- an optimized probe is one) before disabling (disarming) it."""
    s = kstate(cpu.m)
    orig = get_valid_kprobe(cpu.m, p)
    if orig is not None and (orig is p or orig.children == [p]):
        cpu.m.note_access(cpu, ("kprobe table", p.addr), True)
        del s.table[p.addr]  # hlist_del_rcu, moved above the disarm
        if not p.disabled:  # then __disable_kprobe's work
            if orig is not p:
                p.disabled = True
            if not s.all_disarmed and not orig.disabled:
                yield from cpu.k.disarm_kprobe(cpu, orig)
            orig.disabled = True
        return 0
    ap = yield from cpu.k.__disable_kprobe(cpu, p)
    if ap is None:
        return -22
    opt = cpu.m.state.get("optprobes")  # the rest as __unregister_kprobe_top has it
    if ap.children is not None and len(ap.children) == 1 \
            and (ap.disabled if opt is None else opt.disarmed(ap)):
        del s.table[ap.addr]
    elif ap.children is not None:
        ap.children.remove(p)
        if not ap.disabled and not s.all_disarmed and opt is not None:
            yield from cpu.k.optimize_kprobe(cpu, ap)
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [__unregister_kprobe_top]
