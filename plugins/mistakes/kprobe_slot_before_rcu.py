"""unregister_kprobe frees the insn slot before the RCU grace period.

``unregister_kprobes()`` (kernel/kprobes.c:1868-1883, v6.12) unhashes the
probe under ``kprobe_mutex``, calls ``synchronize_rcu()``, and only then
``__unregister_kprobe_bottom`` -> ``arch_remove_kprobe`` frees the insn slot:
a CPU already in ``kprobe_handler`` (interrupts off, an RCU reader) holds
the probe and is about to single-step the copy in that slot. The variant
frees the slot before the grace period, as if the bottom half ran under the
mutex.

The bad interleaving: CPU B hits the armed probe and looks it up; CPU A
unregisters it (disarm, unhash, free the slot); only then does B single-step:
``p->ainsn.insn`` is NULL by now (an oops), or, if CPU C registered a probe
meanwhile, the slot holds C's instruction (``__get_insn_slot`` hands out the
first clean slot). B must stay paused between two of its own steps for the
rest of A's unregister, a dozen emulated steps or more. Its precedent is the reason kprobes' slot cache frees
through RCU (``free_insn_slot`` and ``collect_garbage_slots``' grace period,
kernel/kprobes.c:220-245).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import synchronize_rcu

from ..kprobes import KPROBES_C, Kprobe, kstate


@routine("unregister_kprobe", KPROBES_C, override=True)
def unregister_kprobe(cpu: Cpu, kp: Kprobe) -> Generator[Any, None, Any]:
    """unregister_kprobes with the bottom half (the slot's free) before synchronize_rcu."""
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    ret = yield from cpu.k.__unregister_kprobe_top(cpu, kp)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    if ret:
        return ret
    yield from cpu.k.__unregister_kprobe_bottom(cpu, kp)
    yield from synchronize_rcu(cpu)
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [unregister_kprobe]
