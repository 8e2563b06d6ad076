"""CPU offline forgets to free the patching mm (v6.2).

``text_area_cpu_down_mm`` clears the per-CPU context but never calls
``put_patching_mm``: every offline/online cycle leaks an mm and its page
tables. Needs a CPU to go offline, so boot alone never shows it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, context


@routine("text_area_cpu_down_mm", CP, versions=("v6.2",), override=True)
def text_area_cpu_down_mm(cpu: Cpu) -> Generator[Any, None, Any]:
    """text_area_cpu_down_mm without ``put_patching_mm``."""
    ctx = context(cpu)
    yield
    ctx.mm, ctx.addr, ctx.pte = None, 0, None
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [text_area_cpu_down_mm]
