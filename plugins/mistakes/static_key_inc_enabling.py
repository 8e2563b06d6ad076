"""static_key_slow_inc's fast path counts a key that is still being enabled.

``static_key_fast_inc_not_disabled()`` (kernel/jump_label.c:127-147, v6.12)
adds a user without the mutex only to a key already enabled: ``if (v <= 0
...) return false``. A negative count is the first ``static_key_slow_inc``
at work -- it set -1 under ``jump_label_mutex``, patches the sites and then
``atomic_set_release(&key->enabled, 1)`` -- and "sends static_key_slow_inc/dec()
down the slow path" (:132-135). The variant tests ``v == 0``, as if -1 were
just another enabled count.

The bad interleaving: CPU A takes the first reference: the key goes to -1 and
A patches its two sites; CPU B takes another reference through the fast
path, -1 becomes 0 and B returns as if the key were on; A finishes and sets
the count to 1 over B's increment. Two users, a count of one: the second
``static_key_slow_dec`` will switch the sites off under a user. B's
increment must land inside A's patching, and only there.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import warn

from ..jump_label import JUMP_LABEL_C, StaticKey, _line, jl_state


@routine("static_key_slow_inc_cpuslocked", JUMP_LABEL_C, override=True)
def static_key_slow_inc_cpuslocked(cpu: Cpu, k: StaticKey) -> Generator[Any, None, Any]:
    """static_key_slow_inc_cpuslocked whose fast path takes -1 for an enabled key."""
    s = jl_state(cpu.m)
    yield  # atomic_read + atomic_try_cmpxchg
    cpu.m.note_access(cpu, ("static key", k.name), True)
    if k.enabled != 0:  # was: k.enabled > 0
        k.enabled += 1
        return True
    yield from mutex_lock(cpu, s.mutex)
    if k.enabled == 0:
        k.enabled = -1
        yield from cpu.k.jump_label_update(cpu, k)
        k.enabled = 1  # atomic_set_release
    elif k.enabled > 0:
        k.enabled += 1
    else:
        warn(cpu, _line(cpu, "inc_warn"), function="static_key_slow_inc_cpuslocked",
             detail=f"{k.name}->enabled is {k.enabled} under jump_label_mutex")
        yield from mutex_unlock(cpu, s.mutex)
        return False
    yield from mutex_unlock(cpu, s.mutex)
    return True


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [static_key_slow_inc_cpuslocked]
