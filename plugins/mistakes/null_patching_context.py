"""CPU online allocates a patching mm but never stores it in the per-CPU context (v6.2).

``text_area_cpu_up_mm`` writes ``cpu_patching_context.addr`` and forgets
``.mm``: the CPU never gets its patching context, and its first patch hands a
NULL mm to ``get_locked_pte``. The kernel oopses there ("BUG: Kernel NULL
pointer dereference on read at 0x00000000"); the model must report that
oops, never crash on the ``None`` (the first patch is at boot, so boot alone
shows it).
"""

from __future__ import annotations

from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, ENOMEM, Gen, context, random_patching_addr


@routine("text_area_cpu_up_mm", CP, versions=("v6.2",), override=True)
def text_area_cpu_up_mm(cpu: Cpu) -> Gen:
    """text_area_cpu_up_mm storing the address but not the mm."""
    k = cpu.k
    mm = yield from k.mm_alloc(cpu)
    addr = random_patching_addr(cpu)
    got = yield from k.__get_locked_pte(cpu, mm, addr)
    if got is None:
        yield from k.put_patching_mm(cpu, mm, addr)
        return -ENOMEM
    pte, ptl = got
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    context(cpu).addr = addr  # this_cpu_write(cpu_patching_context.mm, mm) is missing
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [text_area_cpu_up_mm]
