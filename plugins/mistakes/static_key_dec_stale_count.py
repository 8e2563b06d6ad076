"""static_key_slow_dec's slow path trusts the count it read before taking the mutex.

``__static_key_slow_dec_cpuslocked()`` (kernel/jump_label.c:292-316, v6.12)
goes to the slow path when ``static_key_dec_not_one`` saw a count of one,
takes ``jump_label_mutex`` and reads the count again: another CPU may have
added a user in between, through ``static_key_fast_inc_not_disabled``,
without the mutex. The variant decrements from the value the fast path saw
("by the time this task acquires the jump label lock the value is back to
one", :282-285, read as a promise rather than a case to re-check), so it
stores 0 and patches the sites off.

The bad interleaving: CPU B, dropping the last reference, reads a count of
one and heads for the mutex; CPU A takes a reference on the fast path, one
becomes two; B takes the mutex and writes 0 and nops over A's increment.
A holds a reference to a key that is off. A's increment has to fall in the
two or three steps between B's read and B's lock.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import warn

from ..jump_label import JUMP_LABEL_C, StaticKey, _line, jl_state


@routine("__static_key_slow_dec_cpuslocked", JUMP_LABEL_C, override=True)
def static_key_slow_dec_cpuslocked(cpu: Cpu, k: StaticKey) -> Generator[Any, None, Any]:
    """__static_key_slow_dec_cpuslocked using the fast path's count under the mutex."""
    s = jl_state(cpu.m)
    yield  # atomic_read + atomic_try_cmpxchg
    cpu.m.note_access(cpu, ("static key", k.name), True)
    v = k.enabled
    if v < 0:
        warn(cpu, _line(cpu, "dec_negative"), function="static_key_dec_not_one",
             detail=f"{k.name}->enabled is {v}")
    elif v == 0:
        warn(cpu, _line(cpu, "dec_zero"), function="static_key_dec_not_one",
             detail=f"{k.name}: decrement of a disabled key")
        return
    elif v > 1:
        k.enabled = v - 1
        return
    yield from mutex_lock(cpu, s.mutex)
    k.enabled = v - 1  # was: read again under the mutex, then atomic_dec_and_test
    if k.enabled == 0:
        yield from cpu.k.jump_label_update(cpu, k)
    yield from mutex_unlock(cpu, s.mutex)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [static_key_slow_dec_cpuslocked]
