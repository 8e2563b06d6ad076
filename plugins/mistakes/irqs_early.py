"""Interrupts re-enabled before switching back from the patching mm (v6.2).

An interrupt taken then would run with the patching mm loaded, its
writable alias of kernel text reachable from interrupt context.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import PAGE_KERNEL, Cpu, Pte, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, context, get_patch_pfn


@routine("__do_patch_instruction_mm", CP, versions=("v6.2",), override=True, inlined=True)
def __do_patch_instruction_mm(cpu: Cpu, addr: int, instr: int) -> Generator[Any, None, Any]:
    """v6.2's __do_patch_instruction_mm with ``local_irq_enable()`` before ``stop_using_temp_mm``."""
    m, k = cpu.m, cpu.k
    ctx = context(cpu)
    mm, text_poke_addr = ctx.mm, ctx.addr
    assert mm is not None
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pte, ptl = yield from k.__get_locked_pte(cpu, mm, text_poke_addr)
    yield from k.__set_pte_at(cpu, mm, text_poke_addr, pte, Pte(get_patch_pfn(m, addr), PAGE_KERNEL))
    yield
    m.mmu.ptesync(cpu)
    yield
    m.mmu.isync(cpu)
    orig = yield from k.start_using_temp_mm(cpu, mm)
    err = yield from k.__patch_instruction(cpu, addr, instr, patch_addr)
    cpu.irqs_enabled = True  # the mistake: IRQs back on with the patching mm loaded
    yield
    yield from k.stop_using_temp_mm(cpu, mm, orig)
    yield from k.pte_clear(cpu, mm, text_poke_addr, pte)
    yield from k.local_flush_tlb_page_psize(cpu, mm, text_poke_addr)
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    return err


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [__do_patch_instruction_mm]
