"""register_kprobe arms the probe before hashing it.

``register_kprobe()`` (kernel/kprobes.c:1682-1693, v6.12) adds the probe to
``kprobe_table`` (``hlist_add_head_rcu``) and only then arms it: from the
moment the trap is in the text, a CPU that hits it finds its probe. The
variant arms first and hashes after, a reordering that reads naturally
("install the breakpoint, then publish it").

The bad interleaving: CPU A arms the probe -- the trap is in the text; CPU B
executes the instruction, takes the trap and looks the address up before A
has hashed the probe: nothing there, and the text holds the breakpoint, so it
is nobody's removed probe either -- the program check oopses. B's fetch and
lookup must both fall in A's window from its patching store to the hash
insert (the rest of the patch window, the unlocks).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import down_read, up_read

from ..kprobes import KPROBES_C, Kprobe, get_kprobe, kstate


@routine("register_kprobe", KPROBES_C, override=True)
def register_kprobe(cpu: Cpu, kp: Kprobe) -> Generator[Any, None, Any]:
    """register_kprobe with arm_kprobe before the hash-table insert."""
    m = cpu.m
    s = kstate(m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    old = get_kprobe(m, kp.addr)
    if old is not None:
        ret = yield from cpu.k.register_aggr_kprobe(cpu, old, kp)
    else:
        yield from down_read(cpu, m.state["cpu_hotplug_lock"])
        yield from mutex_lock(cpu, m.state["text_mutex"])
        ret = yield from cpu.k.arch_prepare_kprobe(cpu, kp)
        yield from mutex_unlock(cpu, m.state["text_mutex"])
        yield from up_read(cpu, m.state["cpu_hotplug_lock"])
        if ret == 0:
            if not s.all_disarmed and not kp.disabled:
                ret = yield from cpu.k.arm_kprobe(cpu, kp)
            if ret == 0:
                m.note_access(cpu, ("kprobe table", kp.addr), True)
                s.table[kp.addr] = kp  # hlist_add_head_rcu, moved below arm_kprobe
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    return ret


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [register_kprobe]
