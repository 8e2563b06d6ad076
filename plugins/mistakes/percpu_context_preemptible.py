"""patch_mem reads this CPU's patching context before disabling interrupts (v6.12).

A refactoring that keeps the IRQ-off window short: look up the patching mm,
its address and the target's pfn first, then ``local_irq_save``. But with
preemption on (``CONFIG_PREEMPT=y``) the task can be preempted between the
per-CPU read and ``local_irq_save`` and resume on another CPU, which then
patches through the first CPU's patching mm -- loaded on two CPUs, its PTE
and TLB entry no longer private. Without preemption, or without migration,
nothing shows: the task reads and uses its own CPU's context. Load with
``--config CONFIG_PREEMPT=y``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import PAGE_KERNEL, Cpu, Pte, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, ENOMEM, V612, context, get_patch_pfn, mm_patch_enabled


@routine("patch_mem", CP, versions=V612, override=True)
def patch_mem(cpu: Cpu, addr: int, val: int, is_dword: bool) -> Generator[Any, None, Any]:
    """v6.12's patch_mem with ``__do_patch_mem_mm``'s per-CPU reads hoisted above
    ``local_irq_save``."""
    m, k = cpu.m, cpu.k
    if not m.config.enabled("CONFIG_STRICT_KERNEL_RWX") or not m.static_keys.get("poking_init_done"):
        return (yield from k.__patch_mem(cpu, addr, val, addr, is_dword))
    if not mm_patch_enabled(m):
        flags = cpu.local_irq_save()
        err = yield from k.__do_patch_mem(cpu, addr, val, is_dword)
        cpu.local_irq_restore(flags)
        return err
    ctx = context(cpu)  # the mistake: __this_cpu_read with preemption enabled
    mm, text_poke_addr = ctx.mm, ctx.addr
    assert mm is not None
    yield  # vmalloc_to_pfn() walks the kernel page tables: preemptible
    pfn = get_patch_pfn(m, addr)
    flags = cpu.local_irq_save()
    err = yield from _patch_with(cpu, mm, text_poke_addr, pfn, addr, val, is_dword)
    cpu.local_irq_restore(flags)
    return err


def _patch_with(cpu: Cpu, mm: Any, text_poke_addr: int, pfn: int, addr: int, val: int,
                is_dword: bool) -> Generator[Any, None, Any]:
    """The rest of v6.12's __do_patch_mem_mm, with the values read above."""
    m, k = cpu.m, cpu.k
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    got = yield from k.__get_locked_pte(cpu, mm, text_poke_addr)
    if got is None:
        return -ENOMEM
    pte, ptl = got
    yield from k.__set_pte_at(cpu, mm, text_poke_addr, pte, Pte(pfn, PAGE_KERNEL))
    yield
    m.mmu.ptesync(cpu)
    yield
    m.mmu.isync(cpu)
    orig_mm = yield from k.start_using_temp_mm(cpu, mm)
    err = yield from k.__patch_mem(cpu, addr, val, patch_addr, is_dword)
    yield from k.stop_using_temp_mm(cpu, mm, orig_mm)
    yield from k.pte_clear(cpu, mm, text_poke_addr, pte)
    yield from k.local_flush_tlb_page_psize(cpu, mm, text_poke_addr)
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    return err


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [patch_mem]
