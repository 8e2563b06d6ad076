"""disarm_kprobe takes ``text_mutex`` before ``cpus_read_lock`` (v6.2): an ABBA lock order.

Everywhere else (``arm_kprobe``, ``prepare_kprobe``, ftrace, jump labels) the
order is ``cpu_hotplug_lock`` then ``text_mutex``. With the inverted order a
disarm holding ``text_mutex`` waits for ``cpus_read_lock`` behind a pending
hotplug writer, which waits for a reader that waits for ``text_mutex``: a
three-task deadlock the model's scheduler never builds (its percpu rwsem
lets readers in while a writer waits, and no hotplug callback takes
``text_mutex``). lockdep needs no such interleaving: the first disarm after
boot (whose ``init_kprobes`` recorded ``cpu_hotplug_lock -> text_mutex``) is
"WARNING: possible circular locking dependency detected".
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import down_read, up_read


@routine("disarm_kprobe", "kernel/kprobes.c", versions=("v6.2",), override=True, inlined=True)
def disarm_kprobe(cpu: Cpu, kp: Any) -> Generator[Any, None, Any]:
    """disarm_kprobe with ``text_mutex`` taken first, then ``cpus_read_lock``."""
    m = cpu.m
    yield from mutex_lock(cpu, m.state["text_mutex"])
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    opt = m.state.get("optprobes")  # __disarm_kprobe as the kernel has it
    if opt is not None:
        yield from cpu.k.unoptimize_kprobe(cpu, kp, m.state["kprobes"].all_disarmed)
    if opt is None or not opt.queued_probe(kp):
        yield from cpu.k.arch_disarm_kprobe(cpu, kp)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [disarm_kprobe]
