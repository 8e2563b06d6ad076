"""unregister_kprobe waits for the RCU grace period before unhashing the probe.

``unregister_kprobes()`` (kernel/kprobes.c:1868-1883, v6.12) unhashes the
probe first and waits for the grace period after, so that every CPU that
could have found the probe in ``kprobe_table`` is done with it before
``arch_remove_kprobe`` frees its insn slot. The variant calls
``synchronize_rcu()`` at the top, under ``kprobe_mutex`` before the disarm --
it still "waits for the readers", just for the wrong ones: a CPU that hits
the probe after the grace period began still finds it hashed.

The bad interleaving needs three CPUs: A starts unregistering and its grace
period ends; B hits the probe (still armed and hashed) and looks it up; A
disarms, unhashes and frees the slot; C registers a probe elsewhere and gets
that slot; then B single-steps it. B must stay paused between its lookup and
its single step for A's whole disarm and C's whole registration.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import synchronize_rcu

from ..kprobes import EINVAL, KPROBES_C, Kprobe, free_insn_slot, kstate


@routine("unregister_kprobe", KPROBES_C, override=True)
def unregister_kprobe(cpu: Cpu, kp: Kprobe) -> Generator[Any, None, Any]:
    """unregister_kprobes with synchronize_rcu before the unhash instead of after it."""
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    probes = s.table.get(kp.addr, [])
    if kp not in probes:
        yield from mutex_unlock(cpu, s.kprobe_mutex)
        return -EINVAL
    yield from synchronize_rcu(cpu)
    if len(probes) == 1:
        if kp.armed:
            yield from cpu.k.disarm_kprobe(cpu, kp)
        cpu.m.note_access(cpu, ("kprobe table", kp.addr), True)
        del s.table[kp.addr]
        last = True
    else:
        probes.remove(kp)
        last = False
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    if last and kp.insn_slot:
        free_insn_slot(s, kp.insn_slot)
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [unregister_kprobe]
