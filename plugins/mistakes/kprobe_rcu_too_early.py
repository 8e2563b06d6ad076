"""unregister_kprobe waits for the RCU grace period before unhashing the probe.

``unregister_kprobes()`` (kernel/kprobes.c:1868-1883, v6.12) unhashes the
probe first and waits for the grace period after, so that every CPU that
could have found the probe in ``kprobe_table`` is done with it before
``arch_remove_kprobe`` frees its insn slot. The variant calls
``synchronize_rcu()`` at the top, under ``kprobe_mutex`` before the disarm --
it still "waits for the readers", just for the wrong ones: a CPU that hits
the probe after the grace period began still finds it hashed.

The bad interleaving: A starts unregistering and its grace period ends; B
hits the probe (still armed and hashed) and looks it up; A disarms, unhashes
and frees the slot; then B single-steps it -- a NULL ``p->ainsn.insn`` (an
oops), or another probe's instruction if one took the slot. B must stay
paused between its lookup and its single step for A's whole disarm.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import synchronize_rcu

from ..kprobes import KPROBES_C, Kprobe, kstate


@routine("unregister_kprobe", KPROBES_C, override=True)
def unregister_kprobe(cpu: Cpu, kp: Kprobe) -> Generator[Any, None, Any]:
    """unregister_kprobes with synchronize_rcu before the top half instead of after it."""
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    yield from synchronize_rcu(cpu)
    ret = yield from cpu.k.__unregister_kprobe_top(cpu, kp)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    if ret:
        return ret
    yield from cpu.k.__unregister_kprobe_bottom(cpu, kp)
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [unregister_kprobe]
