"""stop_using_temp_mm forgets restore_breakpoints() (v6.2).

After a patch the DAWRs stay cleared: the user's watchpoints silently stop
working on that CPU.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import MM, Cpu, RunConfig, hookimpl, lockdep_assert_irqs_disabled, routine
from fuzzer.kernel import CP


@routine("stop_using_temp_mm", CP, versions=("v6.2",), override=True, inlined=True)
def stop_using_temp_mm(cpu: Cpu, temp_mm: MM, orig_mm: MM) -> Generator[Any, None, Any]:
    """stop_using_temp_mm without restore_breakpoints."""
    lockdep_assert_irqs_disabled(cpu, f"{CP}:97")
    yield from cpu.k.switch_mm_irqs_off(cpu, temp_mm, orig_mm)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [stop_using_temp_mm]
