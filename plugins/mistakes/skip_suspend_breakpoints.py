"""start_using_temp_mm forgets suspend_breakpoints() (v6.2).

A watchpoint a user set on its own address -- which the patching mm maps
to kernel text -- stays live in the patch window.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import MM, Cpu, RunConfig, hookimpl, lockdep_assert_irqs_disabled, routine
from fuzzer.kernel import CP


@routine("start_using_temp_mm", CP, versions=("v6.2",), override=True, inlined=True)
def start_using_temp_mm(cpu: Cpu, temp_mm: MM) -> Generator[Any, None, Any]:
    """start_using_temp_mm without suspend_breakpoints."""
    orig = cpu.current.active_mm
    lockdep_assert_irqs_disabled(cpu, f"{CP}:85")
    yield from cpu.k.switch_mm_irqs_off(cpu, orig, temp_mm)
    return orig


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [start_using_temp_mm]
