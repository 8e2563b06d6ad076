"""What every version's code patching shares: constants, the per-CPU context, helpers, and
the routines unchanged from v6.1 to v6.12."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._errors import HardwareViolation, ModelLimitation
from fuzzer._mm import MM, PAGE_KERNEL, PtePtr
from fuzzer._routines import routine
from fuzzer.kernel.bug import warn

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine
    from fuzzer.kernel.mm import VmArea

#: A modelled kernel routine's generator type (what ``@fuzzer.routine`` functions return).
Gen = Generator[Any, None, Any]
CP = "arch/powerpc/lib/code-patching.c"
PROCESS_C = "arch/powerpc/kernel/process.c"
V61 = ("v6.1",)
NEXT = ("next-20221215",)
V62 = ("v6.2",)
V612 = ("v6.12",)
#: v6.12 with the fixes of the model's findings on it: ``tlb_finish_mmu()`` in
#: ``put_patching_mm()`` and 21641bd9a7a7 (lazy TLB switched off before the CPU goes).
V612_FIXED = ("v6.12-fixed",)
TEMP_MM = NEXT + V62
#: Routines unchanged from the temp-mm series to 6.12.
SINCE_TEMP_MM = NEXT + V62 + V612
EPERM, ENOMEM, EINVAL = 1, 12, 22

#: Line numbers per version for the WARNs and BUGs the model can hit.
LINES: dict[str, dict[str, int]] = {
    "v6.1": {"cpu_up_warn": 58, "poking_bug": 91, "unmap_pte_none": 140},
    "next-20221215": {
        "irqs_start": 85, "thread_local": 88, "irqs_stop": 97, "cpu_up_warn": 110,
        "mm_alloc_warn": 156, "poking_warn": 224, "unmap_pte_none": 273,
    },
    # 980411a4d1bb made text_area_cpu_up_mm two lines shorter: everything after it moves up.
    "v6.2": {
        "irqs_start": 85, "thread_local": 88, "irqs_stop": 97, "cpu_up_warn": 110,
        "mm_alloc_warn": 156, "poking_warn": 222, "unmap_pte_none": 271,
    },
    "v6.12": {
        "irqs_start": 88, "thread_local": 91, "irqs_stop": 100, "cpu_up_warn": 113,
        "mm_alloc_warn": 159, "poking_warn": 222, "unmap_pte_none": 271,
    },
}


def line(cpu: Cpu, what: str) -> str:
    """``code-patching.c:N`` of the WARN/BUG named ``what`` at the running version (along its
    ``based_on`` chain)."""
    return f"{CP}:{cpu.m.version.lookup(LINES, 'code-patching.c line numbers')[what]}"


@attrs.define(eq=False)
class PatchingContext:
    """``cpu_patching_context`` (next-20221215 and later; v6.1 keeps only ``text_poke_area``)."""

    area: VmArea | None = None
    mm: MM | None = None
    addr: int = 0
    pte: PtePtr | None = None


def context(cpu: Cpu) -> PatchingContext:
    ctx = cpu.state.get("cpu_patching_context")
    if ctx is None:
        ctx = cpu.state["cpu_patching_context"] = PatchingContext()
    return ctx


def mm_patch_enabled(m: Machine) -> bool:
    """``mm_patch_enabled()`` (next-20221215 on): ``IS_ENABLED(CONFIG_SMP) && radix_enabled()``."""
    if m.version.is_(*V61):
        return False
    return m.config.enabled("CONFIG_SMP") and m.mmu.radix


def default_map_window(m: Machine) -> int:
    """``DEFAULT_MAP_WINDOW_USER64``: 128TB with 64K pages, 64TB with 4K pages."""
    return 1 << 47 if m.run.page_shift == 16 else 1 << 46


def is_prefixed(instr: int) -> bool:
    """``ppc_inst_prefixed()``: the model carries a prefixed instruction as one 64-bit value."""
    return instr > 0xFFFF_FFFF


def instr_words(instr: int) -> tuple[int, ...]:
    """The words an instruction occupies in memory, lowest address first (little-endian)."""
    if is_prefixed(instr):
        return (instr & 0xFFFF_FFFF, instr >> 32)
    return (instr,)


def random_patching_addr(cpu: Cpu) -> int:
    """``(1 + get_random_long() % (DEFAULT_MAP_WINDOW / PAGE_SIZE - 2)) << PAGE_SHIFT``.

    So pages from PAGE_SIZE to DEFAULT_MAP_WINDOW - 2 * PAGE_SIZE.
    """
    m = cpu.m
    pages = default_map_window(m) // m.run.page_size
    return (1 + m.random_below(pages - 2)) << m.run.page_shift

def get_patch_pfn(m: Machine, addr: int) -> int:
    """``get_patch_pfn()``: ``vmalloc_to_pfn`` for vmalloc/module addresses (kprobe insn
    slots), else ``__pa_symbol(addr) >> PAGE_SHIFT`` for core kernel text."""
    lay = m.layout
    if lay.vmalloc_start <= addr < lay.vmalloc_end:
        pte = m.init_mm.lookup(addr)
        if pte is None:
            raise ModelLimitation(f"vmalloc_to_pfn({addr:#x}): nothing mapped there")
        return pte.pfn
    return (addr - lay.page_offset) >> m.run.page_shift

@routine("map_patch_area", CP, inlined=True)
def map_patch_area(cpu: Cpu, addr: int, text_poke_addr: int) -> Gen:
    """``map_patch_area()`` (code-patching.c:108 v6.1): ``map_kernel_page(.., PAGE_KERNEL)``."""
    pfn = get_patch_pfn(cpu.m, addr)
    return (yield from cpu.k.map_kernel_page(cpu, text_poke_addr, pfn, PAGE_KERNEL))

@routine("unmap_patch_area", CP)
def unmap_patch_area(cpu: Cpu, addr: int) -> Gen:
    """``unmap_patch_area()`` (code-patching.c:115 v6.1, :246 v6.12): WARN and return on a
    missing level, else ``pte_clear(&init_mm)`` and ``flush_tlb_kernel_range`` ("in hash,
    pte_clear flushes the tlb, in radix, we have to"). The model reaches only the last
    WARN, ``pte_none`` (:140 v6.1, :273 next-20221215, :271 v6.2 and v6.12): a ``WARN_ON``,
    after which it returns and the caller goes on."""
    ptr = yield from cpu.k.virt_to_kpte(cpu, addr)
    if ptr is None or ptr.get() is None:  # WARN_ON, then return: nothing to clear or flush
        warn(cpu, line(cpu, "unmap_pte_none"), once=False,
             detail=f"no kernel PTE for the patch area {addr:#x}")
        return
    yield from cpu.k.pte_clear(cpu, cpu.m.init_mm, addr, ptr)
    yield from cpu.k.flush_tlb_kernel_range(cpu, addr, addr + cpu.m.run.page_size)

@routine("__patch_instruction", CP, inlined=True)
def __patch_instruction(cpu: Cpu, exec_addr: int, instr: int, patch_addr: int) -> Gen:
    """``__patch_instruction()`` (code-patching.c:18 v6.1, :23 next/v6.2).

    One ``__put_kernel_nofault`` store through ``patch_addr`` (4 bytes, or 8
    for a prefixed instruction); on success ``dcbst; sync; icbi; sync; isync``
    and 0; a fault returns -EPERM (the exception is context synchronising).
    """
    m = cpu.m
    m.expect_text(exec_addr, instr_words(instr))
    yield  # the store
    if not m.store(cpu, patch_addr, instr, 8 if is_prefixed(instr) else 4):
        m.mmu.isync(cpu)
        return -EPERM
    yield  # dcbst; sync; icbi; sync; isync
    m.mmu.sync(cpu)
    m.mmu.isync(cpu)
    return 0

@routine("raw_patch_instruction", CP)
def raw_patch_instruction(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``raw_patch_instruction()`` (code-patching.c:39 v6.1, :44 next/v6.2): write in place."""
    return (yield from cpu.k.__patch_instruction(cpu, addr, instr, addr))

@routine("set_hw_breakpoint", PROCESS_C)
def set_hw_breakpoint(cpu: Cpu, nr: int, brk: Any) -> Gen:
    """``set_hw_breakpoint()`` (arch/powerpc/kernel/process.c): program DAWR/DAWRX slot ``nr``.

    The architecture does not allow a DAWR range across a 512-byte boundary
    (3190ecbfeeb2): callers must have validated it.
    """
    yield  # mtspr DAWR, DAWRX
    if brk is not None and brk.addr >> 9 != (brk.addr + brk.length - 1) >> 9:
        raise HardwareViolation(
            "DAWR within 512 bytes",
            f"CPU {cpu.n} programmed DAWR{nr} with {brk.addr:#x}+{brk.length}, which crosses a"
            " 512-byte boundary",
        )
    cpu.dawr[nr] = brk
