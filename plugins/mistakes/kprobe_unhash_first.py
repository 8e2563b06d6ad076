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

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import synchronize_rcu

from ..kprobes import EINVAL, KPROBES_C, Kprobe, free_insn_slot, kstate


@routine("unregister_kprobe", KPROBES_C, override=True)
def unregister_kprobe(cpu: Cpu, kp: Kprobe) -> Generator[Any, None, Any]:
    """unregister_kprobes with hlist_del_rcu before the disarm."""
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    probes = s.table.get(kp.addr, [])
    if kp not in probes:
        yield from mutex_unlock(cpu, s.kprobe_mutex)
        return -EINVAL
    if len(probes) == 1:
        cpu.m.note_access(cpu, ("kprobe table", kp.addr), True)
        del s.table[kp.addr]
        if kp.armed:
            yield from cpu.k.disarm_kprobe(cpu, kp)
        last = True
    else:
        probes.remove(kp)
        last = False
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    yield from synchronize_rcu(cpu)
    if last and kp.insn_slot:
        free_insn_slot(s, kp.insn_slot)
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [unregister_kprobe]
