"""static_key_enable/disable without jump_label_lock.

``static_key_enable_cpuslocked()`` and ``static_key_disable_cpuslocked()``
(kernel/jump_label.c:197-242, v6.12) take ``jump_label_lock()`` around the
change of ``key->enabled`` and ``jump_label_update()``. The variant relies on
``cpus_read_lock()`` alone, as if the hotplug lock serialised static key
changes (it is a read lock: it does not). Commit 1dbb6704de91 ("jump_label:
Fix concurrent static_key_enable/disable()") fixed the same family: two CPUs
changing one key at once.

The bad interleaving: CPU A flips the key on; CPU B flips it off and patches
its nop; A's patch of the branch lands after B's. The key is off and its site
branches -- unless A's store comes first, so the order of the two stores,
each some ten emulated steps after its flip, decides.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import down_read, up_read

from ..jump_label import JUMP_LABEL_C


@routine("static_key_enable", JUMP_LABEL_C, override=True)
def static_key_toggle(cpu: Cpu, key: int) -> Generator[Any, None, Any]:
    """static_key_enable/disable under cpus_read_lock only."""
    m = cpu.m
    s = m.state["jump_label"]
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    m.note_access(cpu, ("static key", key), True)
    s["enabled"][key] = not s["enabled"][key]
    yield from cpu.k.arch_jump_label_transform(cpu, key, s["enabled"][key])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [static_key_toggle]
