"""c28c15b6d28a's cached-PTE mistake put back into v6.12.

``text_area_cpu_up_mm`` keeps the PTE pointer it pre-allocated (and
unlocked), and ``__do_patch_mem_mm`` uses it without taking the PTE lock.
On a real 6.12 powernv boot with CONFIG_DEBUG_VM this dies with ``kernel
BUG at arch/powerpc/mm/pgtable.c:403!`` in ``assert_pte_locked``, reached
from ``patch_mem`` <- ``ftrace_init_nop`` <- ``ftrace_init`` <-
``start_kernel``: in 6.12 ftrace's boot-time patching is the first user
after poking_init. Without DEBUG_VM it boots.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import PAGE_KERNEL, Cpu, Pte, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, ENOMEM, context, get_patch_pfn, random_patching_addr

V612 = ("v6.12",)


@routine("text_area_cpu_up_mm", CP, versions=V612, override=True)
def text_area_cpu_up_mm(cpu: Cpu) -> Generator[Any, None, Any]:
    """v6.12's text_area_cpu_up_mm, caching the PTE pointer as c28c15b6d28a did."""
    k = cpu.k
    mm = yield from k.mm_alloc(cpu)
    if mm is None:
        return -ENOMEM  # fault injection (the error paths as v6.12 has them)
    addr = random_patching_addr(cpu)
    got = yield from k.__get_locked_pte(cpu, mm, addr)
    if got is None:
        yield from k.put_patching_mm(cpu, mm, addr)
        return -ENOMEM
    pte, ptl = got
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    ctx = context(cpu)
    ctx.mm, ctx.addr, ctx.pte = mm, addr, pte
    return 0


@routine("__do_patch_mem_mm", CP, versions=V612, override=True, inlined=True)
def __do_patch_mem_mm(cpu: Cpu, addr: int, val: int, is_dword: bool) -> Generator[Any, None, Any]:
    """v6.12's __do_patch_mem_mm using the cached PTE with no PTE lock."""
    m, k = cpu.m, cpu.k
    ctx = context(cpu)
    mm, text_poke_addr, pte = ctx.mm, ctx.addr, ctx.pte
    assert mm is not None and pte is not None
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    yield from k.__set_pte_at(cpu, mm, text_poke_addr, pte, Pte(get_patch_pfn(m, addr), PAGE_KERNEL))
    yield
    m.mmu.ptesync(cpu)
    yield
    m.mmu.isync(cpu)
    orig = yield from k.start_using_temp_mm(cpu, mm)
    err = yield from k.__patch_mem(cpu, addr, val, patch_addr, is_dword)
    yield from k.stop_using_temp_mm(cpu, mm, orig)
    yield from k.pte_clear(cpu, mm, text_poke_addr, pte)
    yield from k.local_flush_tlb_page_psize(cpu, mm, text_poke_addr)
    return err


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [text_area_cpu_up_mm, __do_patch_mem_mm]
