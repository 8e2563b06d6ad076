"""The patching address drawn without its ``1 +``: page 0 becomes a possible choice.

``text_area_cpu_up_mm()`` (arch/powerpc/lib/code-patching.c:163-167, v6.12)
picks the patching address as ``(1 + get_random_long() % (DEFAULT_MAP_WINDOW /
PAGE_SIZE - 2)) << PAGE_SHIFT``: a page of [PAGE_SIZE, DEFAULT_MAP_WINDOW -
PAGE_SIZE), never the NULL page. The variant drops the ``1 +``, so one draw
in about 2^31 (64K pages) maps kernel text writable at address 0 of the
patching mm.

Not a two-CPU bug: one CPU coming online (or the boot CPU) shows it, but
only when the kernel's random draw is the lowest value of its range -- a
chance near 5e-10 per CPU brought up when the draw is a seeded random
number, and a boundary value the search favours once it chooses the draw.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, KernelWarning, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, ENOMEM, V62, V612, context, default_map_window, line


@routine("text_area_cpu_up_mm", CP, versions=V62 + V612, override=True)
def text_area_cpu_up_mm(cpu: Cpu) -> Generator[Any, None, Any]:
    """text_area_cpu_up_mm drawing from [0, DEFAULT_MAP_WINDOW - 2 pages)."""
    k, m = cpu.k, cpu.m
    mm = yield from k.mm_alloc(cpu)
    if mm is None:
        raise KernelWarning(line(cpu, "mm_alloc_warn"), detail="mm_alloc failed")
    pages = default_map_window(m) // m.run.page_size
    addr = m.random_below(pages - 2) << m.run.page_shift
    got = yield from k.__get_locked_pte(cpu, mm, addr)
    if got is None:
        yield from k.put_patching_mm(cpu, mm, addr)
        return -ENOMEM
    pte, ptl = got
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    ctx = context(cpu)
    ctx.mm, ctx.addr = mm, addr
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [text_area_cpu_up_mm]
