"""The last ``static_key_slow_dec`` drops the count to zero but leaves the branches (v6.2).

``__static_key_slow_dec_cpuslocked`` decrements under ``jump_label_mutex``
but skips ``jump_label_update`` when the count reaches zero (an
``atomic_dec`` where ``atomic_dec_and_test`` belongs): the key reads as off
while its sites still jump. Executing a site sees a legitimate branch, so only
the check of each key against its sites shows it; it needs a user to take and
drop the counted key.
"""

from __future__ import annotations

from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, mutex_lock, mutex_unlock, routine
from fuzzer.kernel import Gen
from fuzzer_plugins.jump_label import JUMP_LABEL_C, StaticKey, jl_state


@routine("__static_key_slow_dec_cpuslocked", JUMP_LABEL_C, versions=("v6.2",), override=True)
def static_key_slow_dec_cpuslocked(cpu: Cpu, k: StaticKey) -> Gen:
    """__static_key_slow_dec_cpuslocked without the update at zero."""
    s = jl_state(cpu.m)
    yield
    if k.enabled > 1:
        k.enabled -= 1
        return
    yield from mutex_lock(cpu, s.mutex)
    k.enabled -= 1  # if (atomic_dec_and_test(&key->enabled)) jump_label_update(key); is missing
    yield from mutex_unlock(cpu, s.mutex)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [static_key_slow_dec_cpuslocked]
