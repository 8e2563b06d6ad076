"""unregister_kprobe unhashes the probe before disarming it.

``__unregister_kprobe_top()`` (kernel/kprobes.c:1767-1825, v6.12) disarms the
probe first (``__disable_kprobe``, which patches the original instruction
back) and only then ``hlist_del_rcu``: while the probe is hashed, a CPU that
hits its trap finds it. The variant unhashes first and disarms after.

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
    """__unregister_kprobe_top unhashing a plain probe before disabling (disarming) it."""
    s = kstate(cpu.m)
    if get_valid_kprobe(cpu.m, p) is p:
        cpu.m.note_access(cpu, ("kprobe table", p.addr), True)
        del s.table[p.addr]  # hlist_del_rcu, moved above the disarm
        if not p.disabled:
            yield from cpu.k.disarm_kprobe(cpu, p)
            p.disabled = True
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
        if not ap.disabled and opt is not None:
            yield from cpu.k.optimize_kprobe(cpu, ap)
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [__unregister_kprobe_top]
