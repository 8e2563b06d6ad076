"""static_key_enable/disable updating the text after dropping jump_label_mutex.

``static_key_enable_cpuslocked()`` and ``static_key_disable_cpuslocked()``
(kernel/jump_label.c:197-242, v6.12) change ``key->enabled`` and call
``jump_label_update()`` inside ``jump_label_lock()``; ``jump_label_update``
asserts the mutex is held. The variant flips the key under the mutex but
patches the site after unlocking, a refactoring that looks harmless because
each CPU patches through its own patching context.

The bad interleaving: CPU A flips the key on and unlocks; CPU B takes the
mutex, flips it off, patches its nop and finishes; then A's patch stores the
branch. The key is off and its site branches. B must run its whole toggle,
some fifteen emulated steps, between A's unlock and A's patching store.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import down_read, up_read

from ..jump_label import JUMP_LABEL_C


@routine("static_key_enable", JUMP_LABEL_C, override=True)
def static_key_toggle(cpu: Cpu, key: int) -> Generator[Any, None, Any]:
    """static_key_enable/disable with jump_label_update after jump_label_unlock."""
    m = cpu.m
    s = m.state["jump_label"]
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, s["mutex"])
    m.note_access(cpu, ("static key", key), True)
    s["enabled"][key] = not s["enabled"][key]
    enable = s["enabled"][key]
    yield from mutex_unlock(cpu, s["mutex"])
    yield from cpu.k.arch_jump_label_transform(cpu, key, enable)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [static_key_toggle]
