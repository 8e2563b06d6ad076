"""Code patching at v6.12 (linux-source-6.12, 6.12.117): patch_mem, patch_uint/ulong, patch_instructions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuzzer._mm import PAGE_KERNEL, Pte
from fuzzer._routines import routine
from fuzzer.kernel.patching.common import (
    CP,
    EINVAL,
    ENOMEM,
    EPERM,
    V612,
    Gen,
    context,
    get_patch_pfn,
    is_prefixed,
    mm_patch_enabled,
)
from fuzzer.kernel.patching.temp_mm import _setup_contexts_then_enable

if TYPE_CHECKING:
    from fuzzer._machine import Cpu


@routine("poking_init", CP, versions=V612)
def poking_init_612(cpu: Cpu) -> Gen:
    """``poking_init()`` (code-patching.c:206, v6.12).

    As in v6.2 but without the early return for !STRICT_KERNEL_RWX: the
    contexts are set up either way (patch_mem still writes in place then).
    """
    yield from _setup_contexts_then_enable(cpu)


def _words(val: int, is_dword: bool) -> tuple[int, ...]:
    return (val & 0xFFFF_FFFF, val >> 32) if is_dword else (val & 0xFFFF_FFFF,)


@routine("__patch_mem", CP, versions=V612, inlined=True)
def __patch_mem(cpu: Cpu, exec_addr: int, val: int, patch_addr: int, is_dword: bool) -> Gen:
    """``__patch_mem()`` (code-patching.c:23, v6.12): one u32 or u64 store through
    ``patch_addr``, then ``dcbst; sync; icbi; sync; isync``; on a fault ``mb()`` and -EPERM."""
    m = cpu.m
    m.expect_text(exec_addr, _words(val, is_dword))
    yield  # the store
    if not m.store(cpu, patch_addr, val, 8 if is_dword else 4):
        m.mmu.isync(cpu)  # the exception
        yield
        m.mmu.sync(cpu)  # mb()
        return -EPERM
    yield  # dcbst; sync; icbi; sync; isync
    m.mmu.sync(cpu)
    m.mmu.isync(cpu)
    return 0


@routine("raw_patch_instruction", CP, versions=V612)
def raw_patch_instruction_612(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``raw_patch_instruction()`` (code-patching.c:44, v6.12): ``__patch_mem`` in place."""
    return (yield from cpu.k.__patch_mem(cpu, addr, instr, addr, is_prefixed(instr)))


@routine("patch_mem", CP, versions=V612)
def patch_mem(cpu: Cpu, addr: int, val: int, is_dword: bool) -> Gen:
    """``patch_mem()`` (code-patching.c:352, v6.12): v6.2's patch_instruction body.

    In place without STRICT_KERNEL_RWX or before ``poking_init_done``;
    otherwise, interrupts saved and disabled, ``__do_patch_mem_mm`` on Radix
    with SMP, else ``__do_patch_mem`` (the alias).
    """
    m = cpu.m
    if not m.config.enabled("CONFIG_STRICT_KERNEL_RWX") or not m.static_keys.get("poking_init_done"):
        return (yield from cpu.k.__patch_mem(cpu, addr, val, addr, is_dword))
    flags = cpu.local_irq_save()
    if mm_patch_enabled(m):
        err = yield from cpu.k.__do_patch_mem_mm(cpu, addr, val, is_dword)
    else:
        err = yield from cpu.k.__do_patch_mem(cpu, addr, val, is_dword)
    cpu.local_irq_restore(flags)
    return err


@routine("patch_instruction", CP, versions=V612, inlined=True)
def patch_instruction_612(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``patch_instruction()`` (code-patching.c:378, v6.12, PPC64): ``patch_mem`` of the
    instruction, as a doubleword when prefixed (a tail call: absent from real traces)."""
    return (yield from cpu.k.patch_mem(cpu, addr, instr, is_prefixed(instr)))


@routine("patch_uint", CP, versions=V612)
def patch_uint(cpu: Cpu, addr: int, val: int) -> Gen:
    """``patch_uint()`` (code-patching.c:387, v6.12): -EINVAL unless 4-byte aligned."""
    if addr % 4:
        return -EINVAL
    return (yield from cpu.k.patch_mem(cpu, addr, val & 0xFFFF_FFFF, False))


@routine("patch_ulong", CP, versions=V612)
def patch_ulong(cpu: Cpu, addr: int, val: int) -> Gen:
    """``patch_ulong()`` (code-patching.c:396, v6.12): -EINVAL unless 8-byte aligned."""
    if addr % 8:
        return -EINVAL
    return (yield from cpu.k.patch_mem(cpu, addr, val, True))


@routine("__do_patch_mem", CP, versions=V612, inlined=True)
def __do_patch_mem(cpu: Cpu, addr: int, val: int, is_dword: bool) -> Gen:
    """``__do_patch_mem()`` (code-patching.c:327, v6.12): the alias path, as v6.2's
    ``__do_patch_instruction``."""
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    text_poke_addr = ctx.addr & ~(m.run.page_size - 1)
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pte = ctx.pte
    pfn = get_patch_pfn(m, addr)
    yield from k.__set_pte_at(cpu, m.init_mm, text_poke_addr, pte, Pte(pfn, PAGE_KERNEL))
    if m.mmu.radix:
        yield
        m.mmu.ptesync(cpu)
    err = yield from k.__patch_mem(cpu, addr, val, patch_addr, is_dword)
    yield from k.pte_clear(cpu, m.init_mm, text_poke_addr, pte)
    yield from k.flush_tlb_kernel_range(cpu, text_poke_addr, text_poke_addr + m.run.page_size)
    return err


@routine("__do_patch_mem_mm", CP, versions=V612, inlined=True)
def __do_patch_mem_mm(cpu: Cpu, addr: int, val: int, is_dword: bool) -> Gen:
    """``__do_patch_mem_mm()`` (code-patching.c:281, v6.12): v6.2's temp-mm patch.

    ``get_locked_pte`` (line 296), set PTE, ptesync, isync, switch to the
    patching mm, ``__patch_mem`` (which does the ``mb()`` on a fault
    itself), switch back, ``pte_clear`` (315), local flush (320), unlock (322).
    """
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    patching_mm, text_poke_addr = ctx.mm, ctx.addr
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pfn = get_patch_pfn(m, addr)
    got = yield from k.__get_locked_pte(cpu, patching_mm, text_poke_addr)
    if got is None:
        return -ENOMEM
    pte, ptl = got
    yield from k.__set_pte_at(cpu, patching_mm, text_poke_addr, pte, Pte(pfn, PAGE_KERNEL))
    yield  # ptesync
    m.mmu.ptesync(cpu)
    yield  # isync
    m.mmu.isync(cpu)
    orig_mm = yield from k.start_using_temp_mm(cpu, patching_mm)
    err = yield from k.__patch_mem(cpu, addr, val, patch_addr, is_dword)
    yield from k.stop_using_temp_mm(cpu, patching_mm, orig_mm)
    yield from k.pte_clear(cpu, patching_mm, text_poke_addr, pte)
    yield from k.local_flush_tlb_page_psize(cpu, patching_mm, text_poke_addr)
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    return err


EFAULT = 14


@routine("__patch_instructions", CP, versions=V612, inlined=True)
def __patch_instructions(cpu: Cpu, exec_addr: int, patch_addr: int, code: tuple[int, ...],
                         repeat: bool, nwords: int) -> Gen:
    """``__patch_instructions()`` (code-patching.c:437-462, v6.12).

    Repeating one instruction, ``patch_memset32`` (:426): one 4-byte store per
    word, -EPERM on a fault. Otherwise ``copy_to_kernel_nofault`` (mm/maccess.c:58;
    powerpc has efficient unaligned access, so no alignment check): 8-byte stores
    while 8 bytes are left (:67), then a 4-byte one (:69), -EFAULT on a fault.
    Each store is visible to other CPUs on its own. Fault or not, ``smp_wmb``
    (:459) and ``flush_icache_range`` (:460) follow.
    """
    m = cpu.m
    words = [code[0]] * nwords if repeat else list(code[:nwords])
    m.expect_text(exec_addr, words)
    err, i = 0, 0
    while i < len(words):
        size = 8 if not repeat and len(words) - i >= 2 else 4
        value = words[i] | (words[i + 1] << 32) if size == 8 else words[i]
        yield  # one __put_kernel_nofault
        if not m.store(cpu, patch_addr + 4 * i, value, size):
            m.mmu.isync(cpu)  # the fault is context synchronising
            err = -EPERM if repeat else -EFAULT
            break
        i += size // 4
    yield  # smp_wmb; flush_icache_range
    m.mmu.sync(cpu)
    m.mmu.isync(cpu)
    return err


@routine("__do_patch_instructions_mm", CP, versions=V612, inlined=True)
def __do_patch_instructions_mm(cpu: Cpu, addr: int, code: tuple[int, ...], repeat: bool,
                               nwords: int) -> Gen:
    """``__do_patch_instructions_mm()`` (code-patching.c:468, v6.12): as ``__do_patch_mem_mm``
    with ``__patch_instructions`` for a run of words within one page."""
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    patching_mm, text_poke_addr = ctx.mm, ctx.addr
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    got = yield from k.__get_locked_pte(cpu, patching_mm, text_poke_addr)
    if got is None:
        return -ENOMEM
    pte, ptl = got
    pfn = get_patch_pfn(m, addr)
    yield from k.__set_pte_at(cpu, patching_mm, text_poke_addr, pte, Pte(pfn, PAGE_KERNEL))
    yield
    m.mmu.ptesync(cpu)
    yield
    m.mmu.isync(cpu)
    orig_mm = yield from k.start_using_temp_mm(cpu, patching_mm)
    err = yield from k.__patch_instructions(cpu, addr, patch_addr, code, repeat, nwords)
    yield from k.stop_using_temp_mm(cpu, patching_mm, orig_mm)
    yield from k.pte_clear(cpu, patching_mm, text_poke_addr, pte)
    yield from k.local_flush_tlb_page_psize(cpu, patching_mm, text_poke_addr)
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    return err


@routine("__do_patch_instructions", CP, versions=V612, inlined=True)
def __do_patch_instructions(cpu: Cpu, addr: int, code: tuple[int, ...], repeat: bool,
                            nwords: int) -> Gen:
    """``__do_patch_instructions()`` (code-patching.c:519, v6.12): the alias path for a run."""
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    text_poke_addr = ctx.addr & ~(m.run.page_size - 1)
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pte = ctx.pte
    yield from k.__set_pte_at(cpu, m.init_mm, text_poke_addr, pte,
                              Pte(get_patch_pfn(m, addr), PAGE_KERNEL))
    if m.mmu.radix:
        yield
        m.mmu.ptesync(cpu)
    err = yield from k.__patch_instructions(cpu, addr, patch_addr, code, repeat, nwords)
    yield from k.pte_clear(cpu, m.init_mm, text_poke_addr, pte)
    yield from k.flush_tlb_kernel_range(cpu, text_poke_addr, text_poke_addr + m.run.page_size)
    return err


@routine("patch_instructions", CP, versions=V612)
def patch_instructions(cpu: Cpu, addr: int, code: tuple[int, ...], repeat: bool,
                       nwords: int) -> Gen:
    """``patch_instructions()`` (code-patching.c:550, v6.12; added in 6.7).

    Page by page: interrupts off, map that page, write its part of the run,
    unmap, interrupts back on. Another CPU can run the words already written
    before the rest are.
    """
    m = cpu.m
    page = m.run.page_size
    done = 0
    while done < nwords:
        here = min((page - ((addr + 4 * done) & (page - 1))) // 4, nwords - done)
        chunk = code if repeat else code[done:done + here]
        flags = cpu.local_irq_save()
        if mm_patch_enabled(m):
            err = yield from cpu.k.__do_patch_instructions_mm(cpu, addr + 4 * done, chunk,
                                                              repeat, here)
        else:
            err = yield from cpu.k.__do_patch_instructions(cpu, addr + 4 * done, chunk,
                                                           repeat, here)
        cpu.local_irq_restore(flags)
        if err:
            return err
        done += here
    return 0
