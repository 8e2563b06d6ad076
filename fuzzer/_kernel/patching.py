"""Code patching (arch/powerpc/lib/code-patching.c) at v6.1, next-20221215 and v6.2.

Line numbers in docstrings and reports are those of each version's file:
v6.1 from linux-source-6.1; next-20221215 is c28c15b6d28a plus the three
powerpc/next patches on top of it (blob 73ce4b90bb1b, the pre-image of the
fix); v6.2 is that file with 980411a4d1bb applied (blob b00112d7ad46).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._config import RunConfig
from fuzzer._errors import HardwareViolation, KernelBug, KernelWarning, ModelLimitation
from fuzzer._kernel.locking import lockdep_assert_irqs_disabled
from fuzzer._mm import MM, PAGE_KERNEL, Pte, PtePtr
from fuzzer._mmu import PAGE_OFFSET, VMALLOC_END, VMALLOC_START
from fuzzer._plugins import hookimpl
from fuzzer._routines import routine
from fuzzer._specs import Invariant

if TYPE_CHECKING:
    from fuzzer._kernel.mm import VmArea
    from fuzzer._machine import Cpu, Machine

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]
CP = "arch/powerpc/lib/code-patching.c"
PROCESS_C = "arch/powerpc/kernel/process.c"
V61 = ("v6.1",)
NEXT = ("next-20221215",)
V62 = ("v6.2",)
V612 = ("v6.12",)
TEMP_MM = NEXT + V62
#: Routines unchanged from the temp-mm series to 6.12.
SINCE_TEMP_MM = NEXT + V62 + V612
EPERM, ENOMEM, EINVAL = 1, 12, 22

#: Line numbers per version for the WARNs and BUGs the model can hit.
LINES: dict[str, dict[str, int]] = {
    "v6.1": {"cpu_up_warn": 58, "poking_bug": 91},
    "next-20221215": {
        "irqs_start": 85, "thread_local": 88, "irqs_stop": 97, "cpu_up_warn": 110,
        "mm_alloc_warn": 156, "poking_warn": 224,
    },
    "v6.2": {
        "irqs_start": 85, "thread_local": 88, "irqs_stop": 97, "cpu_up_warn": 110,
        "mm_alloc_warn": 156, "poking_warn": 222,
    },
    "v6.12": {
        "irqs_start": 88, "thread_local": 91, "irqs_stop": 100, "cpu_up_warn": 113,
        "mm_alloc_warn": 159, "poking_warn": 222,
    },
}


def _line(cpu: Cpu, what: str) -> str:
    version = cpu.m.model.version
    lines = LINES.get(version.name) or LINES.get(version.based_on or "") or LINES["v6.2"]
    return f"{CP}:{lines[what]}"


@attrs.define(eq=False)
class PatchingContext:
    """``cpu_patching_context`` (next-20221215 and later; v6.1 keeps only ``text_poke_area``)."""

    area: VmArea | None = None
    mm: MM | None = None
    addr: int = 0
    pte: PtePtr | None = None


def context(cpu: Cpu) -> PatchingContext:
    ctx = cpu.percpu.get("cpu_patching_context")
    if ctx is None:
        ctx = cpu.percpu["cpu_patching_context"] = PatchingContext()
    return ctx


def mm_patch_enabled(m: Machine) -> bool:
    """``mm_patch_enabled()`` (next-20221215 on): ``IS_ENABLED(CONFIG_SMP) && radix_enabled()``."""
    if m.run.kernel in V61:
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


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [
        poking_init_v61, poking_init,
        text_area_cpu_up_v61, text_area_cpu_up, text_area_cpu_down_v61, text_area_cpu_down,
        text_area_cpu_up_mm_next, text_area_cpu_up_mm, text_area_cpu_down_mm, put_patching_mm,
        map_patch_area, unmap_patch_area,
        __patch_instruction, raw_patch_instruction,
        patch_instruction_v61, do_patch_instruction_v61, patch_instruction,
        __do_patch_instruction_v61, __do_patch_instruction,
        __do_patch_instruction_mm_next, __do_patch_instruction_mm,
        start_using_temp_mm, stop_using_temp_mm,
        poking_init_612, __patch_mem, raw_patch_instruction_612, patch_mem, patch_instruction_612,
        patch_uint, patch_ulong, __do_patch_mem, __do_patch_mem_mm,
        patch_instructions, __patch_instructions, __do_patch_instructions,
        __do_patch_instructions_mm,
        suspend_breakpoints, restore_breakpoints, set_hw_breakpoint,
    ]


# ---------------------------------------------------------------------------
# poking_init and the cpuhp callbacks
# ---------------------------------------------------------------------------


@routine("poking_init", CP, versions=V61)
def poking_init_v61(cpu: Cpu) -> Gen:
    """``poking_init()`` (code-patching.c:89, v6.1; built only with STRICT_KERNEL_RWX).

    ``BUG_ON(!cpuhp_setup_state(...))``, then enable ``poking_init_done``. For
    a DYN state cpuhp_setup_state returns > 0 or < 0, never 0: the BUG_ON
    cannot fire and a failure still enables the key (fixed by 071c95c1acbd).
    """
    if not cpu.m.config.enabled("CONFIG_STRICT_KERNEL_RWX"):
        return  # the weak, empty poking_init of init/main.c
    k = cpu.k
    ret = yield from k.__cpuhp_setup_state(
        cpu, "powerpc/text_poke:online", k.text_area_cpu_up, k.text_area_cpu_down
    )
    if ret == 0:
        raise KernelBug(_line(cpu, "poking_bug"))
    cpu.m.static_keys["poking_init_done"] = True
    yield


@routine("poking_init", CP, versions=TEMP_MM)
def poking_init(cpu: Cpu) -> Gen:
    """``poking_init()`` (code-patching.c:205 in next-20221215, :203 in v6.2).

    Return early without STRICT_KERNEL_RWX; register the temp-mm callbacks
    ("powerpc/text_poke_mm:online") when mm_patch_enabled(), else the
    vm-area ones; ``WARN_ON(ret < 0)`` and return on failure; only then
    enable the ``poking_init_done`` static key.
    """
    if not cpu.m.config.enabled("CONFIG_STRICT_KERNEL_RWX"):
        return
    yield from _setup_contexts_then_enable(cpu)


def _setup_contexts_then_enable(cpu: Cpu) -> Gen:
    """poking_init's body from the temp-mm series on: register the callbacks that
    fit the MMU, WARN and return on failure, else enable ``poking_init_done``."""
    m = cpu.m
    k = cpu.k
    if mm_patch_enabled(m):
        ret = yield from k.__cpuhp_setup_state(
            cpu, "powerpc/text_poke_mm:online", k.text_area_cpu_up_mm, k.text_area_cpu_down_mm
        )
    else:
        ret = yield from k.__cpuhp_setup_state(
            cpu, "powerpc/text_poke:online", k.text_area_cpu_up, k.text_area_cpu_down
        )
    if ret < 0:
        raise KernelWarning(_line(cpu, "poking_warn"), detail=f"cpuhp_setup_state returned {ret}")
    m.static_keys["poking_init_done"] = True
    yield


@routine("text_area_cpu_up", CP, versions=V61)
def text_area_cpu_up_v61(cpu: Cpu) -> Gen:
    """``text_area_cpu_up()`` (code-patching.c:50, v6.1).

    ``get_vm_area(PAGE_SIZE)``; map and unmap a page there so the init_mm
    page tables exist before patching needs them; store ``text_poke_area``
    for this CPU (this_cpu_write: the callback runs on the CPU coming up).
    """
    k = cpu.k
    area = yield from k.get_vm_area(cpu, cpu.m.run.page_size)
    if area is None:
        raise KernelWarning(_line(cpu, "cpu_up_warn"), detail=f"Failed to create text area for cpu {cpu.n}")
    err = yield from k.map_patch_area(cpu, cpu.m.state["empty_zero_page"], area.addr)
    if err:
        return err
    yield from k.unmap_patch_area(cpu, area.addr)
    context(cpu).area = area
    context(cpu).addr = area.addr
    return 0


@routine("text_area_cpu_up", CP, versions=SINCE_TEMP_MM)
def text_area_cpu_up(cpu: Cpu) -> Gen:
    """``text_area_cpu_up()`` (code-patching.c:102, next-20221215 and v6.2).

    As in v6.1, and also cache the area's address and its init_mm PTE
    pointer in ``cpu_patching_context`` (init_mm's PTEs are not lock-checked).
    """
    k = cpu.k
    area = yield from k.get_vm_area(cpu, cpu.m.run.page_size)
    if area is None:
        raise KernelWarning(_line(cpu, "cpu_up_warn"), detail=f"Failed to create text area for cpu {cpu.n}")
    err = yield from k.map_patch_area(cpu, cpu.m.state["empty_zero_page"], area.addr)
    if err:
        return err
    yield from k.unmap_patch_area(cpu, area.addr)
    ctx = context(cpu)
    ctx.area = area
    ctx.addr = area.addr
    ctx.pte = yield from k.virt_to_kpte(cpu, area.addr)
    return 0


@routine("text_area_cpu_down", CP, versions=V61)
def text_area_cpu_down_v61(cpu: Cpu) -> Gen:
    """``text_area_cpu_down()`` (code-patching.c:76, v6.1): ``free_vm_area`` of this CPU's area."""
    ctx = context(cpu)
    assert ctx.area is not None
    yield from cpu.k.free_vm_area(cpu, ctx.area)
    return 0


@routine("text_area_cpu_down", CP, versions=SINCE_TEMP_MM)
def text_area_cpu_down(cpu: Cpu) -> Gen:
    """``text_area_cpu_down()`` (code-patching.c:130): free the area, clear area/addr/pte."""
    ctx = context(cpu)
    assert ctx.area is not None
    yield from cpu.k.free_vm_area(cpu, ctx.area)
    ctx.area, ctx.addr, ctx.pte = None, 0, None
    return 0


def _random_patching_addr(cpu: Cpu) -> int:
    """``(1 + get_random_long() % (DEFAULT_MAP_WINDOW / PAGE_SIZE - 2)) << PAGE_SHIFT``.

    So pages from PAGE_SIZE to DEFAULT_MAP_WINDOW - 2 * PAGE_SIZE.
    """
    m = cpu.m
    pages = default_map_window(m) // m.run.page_size
    return (1 + m.get_random_long() % (pages - 2)) << m.run.page_shift


@routine("text_area_cpu_up_mm", CP, versions=NEXT)
def text_area_cpu_up_mm_next(cpu: Cpu) -> Gen:
    """``text_area_cpu_up_mm()`` (code-patching.c:148, next-20221215 = c28c15b6d28a).

    ``mm_alloc()``; a random patching address; ``get_locked_pte()`` to
    pre-allocate the page tables (patching runs with IRQs off and cannot
    allocate), ``pte_unmap_unlock()`` at once -- and the PTE pointer is
    cached in ``cpu_patching_context.pte`` for use later without the lock.
    That cached pointer is the mistake 980411a4d1bb fixed.
    """
    k = cpu.k
    mm = yield from k.mm_alloc(cpu)
    if mm is None:
        raise KernelWarning(_line(cpu, "mm_alloc_warn"), detail="mm_alloc failed")
    addr = _random_patching_addr(cpu)
    got = yield from k.__get_locked_pte(cpu, mm, addr)
    if got is None:
        yield from k.put_patching_mm(cpu, mm, addr)
        return -ENOMEM
    pte, ptl = got
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    ctx = context(cpu)
    ctx.mm, ctx.addr, ctx.pte = mm, addr, pte
    return 0


@routine("text_area_cpu_up_mm", CP, versions=V62 + V612)
def text_area_cpu_up_mm(cpu: Cpu) -> Gen:
    """``text_area_cpu_up_mm()`` (code-patching.c:148, v6.2 with 980411a4d1bb).

    As in next-20221215 but the PTE pointer is not kept: only mm and addr.
    """
    k = cpu.k
    mm = yield from k.mm_alloc(cpu)
    if mm is None:
        raise KernelWarning(_line(cpu, "mm_alloc_warn"), detail="mm_alloc failed")
    addr = _random_patching_addr(cpu)
    got = yield from k.__get_locked_pte(cpu, mm, addr)
    if got is None:
        yield from k.put_patching_mm(cpu, mm, addr)
        return -ENOMEM
    pte, ptl = got
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    ctx = context(cpu)
    ctx.mm, ctx.addr = mm, addr
    return 0


@routine("text_area_cpu_down_mm", CP, versions=SINCE_TEMP_MM)
def text_area_cpu_down_mm(cpu: Cpu) -> Gen:
    """``text_area_cpu_down_mm()`` (code-patching.c:191 next, :190 v6.2).

    ``put_patching_mm(mm, addr)``, then clear mm and addr (and, before v6.2, pte).
    """
    ctx = context(cpu)
    assert ctx.mm is not None
    yield from cpu.k.put_patching_mm(cpu, ctx.mm, ctx.addr)
    ctx.mm, ctx.addr, ctx.pte = None, 0, None
    return 0


@routine("put_patching_mm", CP, versions=SINCE_TEMP_MM, inlined=True)
def put_patching_mm(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``put_patching_mm()`` (code-patching.c:139): free_pgd_range of the one page, mmput."""
    yield from cpu.k.free_pgd_range(cpu, mm, addr, addr + cpu.m.run.page_size)
    yield from cpu.k.mmput(cpu, mm)


def get_patch_pfn(m: Machine, addr: int) -> int:
    """``get_patch_pfn()``: ``vmalloc_to_pfn`` for vmalloc/module addresses (kprobe insn
    slots), else ``__pa_symbol(addr) >> PAGE_SHIFT`` for core kernel text."""
    if VMALLOC_START <= addr < VMALLOC_END:
        pte = m.init_mm.lookup(addr)
        if pte is None:
            raise ModelLimitation(f"vmalloc_to_pfn({addr:#x}): nothing mapped there")
        return pte.pfn
    return (addr - PAGE_OFFSET) >> m.run.page_shift


@routine("map_patch_area", CP, inlined=True)
def map_patch_area(cpu: Cpu, addr: int, text_poke_addr: int) -> Gen:
    """``map_patch_area()`` (code-patching.c:108 v6.1): ``map_kernel_page(.., PAGE_KERNEL)``."""
    pfn = get_patch_pfn(cpu.m, addr)
    return (yield from cpu.k.map_kernel_page(cpu, text_poke_addr, pfn, PAGE_KERNEL))


@routine("unmap_patch_area", CP)
def unmap_patch_area(cpu: Cpu, addr: int) -> Gen:
    """``unmap_patch_area()`` (code-patching.c:115 v6.1): WARN and return on a missing
    level, else ``pte_clear(&init_mm)`` and ``flush_tlb_kernel_range`` ("in hash,
    pte_clear flushes the tlb, in radix, we have to")."""
    ptr = yield from cpu.k.virt_to_kpte(cpu, addr)
    if ptr is None or ptr.get() is None:
        raise KernelWarning(f"{CP}:{140 if cpu.m.run.kernel in V61 else 271}",
                            detail=f"no kernel PTE for the patch area {addr:#x}")
    yield from cpu.k.pte_clear(cpu, cpu.m.init_mm, addr, ptr)
    yield from cpu.k.flush_tlb_kernel_range(cpu, addr, addr + cpu.m.run.page_size)


# ---------------------------------------------------------------------------
# Patching
# ---------------------------------------------------------------------------


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


@routine("patch_instruction", CP, versions=V61)
def patch_instruction_v61(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``patch_instruction()`` (code-patching.c:205, v6.1).

    Returns 0 for a freed init section (the model has none), else
    ``do_patch_instruction``.
    """
    return (yield from cpu.k.do_patch_instruction(cpu, addr, instr))


@routine("do_patch_instruction", CP, versions=V61, inlined=True)
def do_patch_instruction_v61(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``do_patch_instruction()`` (code-patching.c:175, v6.1).

    Raw write without STRICT_KERNEL_RWX or before ``poking_init_done``;
    otherwise ``__do_patch_instruction`` with interrupts saved and disabled.
    """
    m = cpu.m
    if not m.config.enabled("CONFIG_STRICT_KERNEL_RWX") or not m.static_keys.get("poking_init_done"):
        return (yield from cpu.k.raw_patch_instruction(cpu, addr, instr))
    flags = cpu.local_irq_save()
    err = yield from cpu.k.__do_patch_instruction(cpu, addr, instr)
    cpu.local_irq_restore(flags)
    return err


@routine("patch_instruction", CP, versions=TEMP_MM)
def patch_instruction(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``patch_instruction()`` (code-patching.c:352 next-20221215, :356 v6.2).

    Raw write without STRICT_KERNEL_RWX or before ``poking_init_done``;
    otherwise, with interrupts saved and disabled, the temp-mm path when
    mm_patch_enabled() (Radix and SMP), else the vm-area alias path.
    """
    m = cpu.m
    if not m.config.enabled("CONFIG_STRICT_KERNEL_RWX") or not m.static_keys.get("poking_init_done"):
        return (yield from cpu.k.raw_patch_instruction(cpu, addr, instr))
    flags = cpu.local_irq_save()
    if mm_patch_enabled(m):
        err = yield from cpu.k.__do_patch_instruction_mm(cpu, addr, instr)
    else:
        err = yield from cpu.k.__do_patch_instruction(cpu, addr, instr)
    cpu.local_irq_restore(flags)
    return err


@routine("__do_patch_instruction", CP, versions=V61, inlined=True)
def __do_patch_instruction_v61(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``__do_patch_instruction()`` (code-patching.c:150, v6.1): the vm-area alias path.

    Set this CPU's alias PTE in init_mm (``virt_to_kpte`` each time) to the
    text page with PAGE_KERNEL; ptesync on Radix; store; ``pte_clear``
    (init_mm is exempt from the lock assert; on Hash the clear flushes the
    HPTE); ``flush_tlb_kernel_range`` -- global, since every CPU could have
    translated the alias.
    """
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    assert ctx.area is not None
    text_poke_addr = ctx.area.addr & ~(m.run.page_size - 1)
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pte = yield from k.virt_to_kpte(cpu, text_poke_addr)
    yield from k.__set_pte_at(cpu, m.init_mm, text_poke_addr, pte, Pte(get_patch_pfn(m, addr), PAGE_KERNEL))
    if m.mmu.radix:
        yield
        m.mmu.ptesync(cpu)
    err = yield from k.__patch_instruction(cpu, addr, instr, patch_addr)
    yield from k.pte_clear(cpu, m.init_mm, text_poke_addr, pte)
    yield from k.flush_tlb_kernel_range(cpu, text_poke_addr, text_poke_addr + m.run.page_size)
    return err


@routine("__do_patch_instruction", CP, versions=TEMP_MM, inlined=True)
def __do_patch_instruction(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``__do_patch_instruction()`` (code-patching.c:327 next, :331 v6.2): the alias path.

    As in v6.1, with the init_mm PTE pointer cached at CPU online.
    """
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    text_poke_addr = ctx.addr & ~(m.run.page_size - 1)
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pte = ctx.pte
    assert pte is not None
    yield from k.__set_pte_at(cpu, m.init_mm, text_poke_addr, pte, Pte(get_patch_pfn(m, addr), PAGE_KERNEL))
    if m.mmu.radix:
        yield
        m.mmu.ptesync(cpu)
    err = yield from k.__patch_instruction(cpu, addr, instr, patch_addr)
    yield from k.pte_clear(cpu, m.init_mm, text_poke_addr, pte)
    yield from k.flush_tlb_kernel_range(cpu, text_poke_addr, text_poke_addr + m.run.page_size)
    return err


@routine("__do_patch_instruction_mm", CP, versions=NEXT, inlined=True)
def __do_patch_instruction_mm_next(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``__do_patch_instruction_mm()`` (code-patching.c:283, next-20221215 = c28c15b6d28a).

    Uses the PTE pointer cached at CPU online, with no PTE lock held:
    ``__set_pte_at``, ptesync, isync, switch to the patching mm, store,
    (``mb()`` on error), switch back, ``pte_clear`` -- whose
    ``assert_pte_locked`` BUGs under DEBUG_VM -- then the local TLB flush.
    """
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    patching_mm, text_poke_addr, pte = ctx.mm, ctx.addr, ctx.pte
    assert patching_mm is not None and pte is not None
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pfn = get_patch_pfn(m, addr)
    yield from k.__set_pte_at(cpu, patching_mm, text_poke_addr, pte, Pte(pfn, PAGE_KERNEL))
    yield  # ptesync: order the PTE update before use, also the hwsync
    m.mmu.ptesync(cpu)
    yield  # isync: order the context switch after arbitrary prior code
    m.mmu.isync(cpu)
    orig_mm = yield from k.start_using_temp_mm(cpu, patching_mm)
    err = yield from k.__patch_instruction(cpu, addr, instr, patch_addr)
    if err:
        yield
        m.mmu.sync(cpu)
    yield from k.stop_using_temp_mm(cpu, patching_mm, orig_mm)
    yield from k.pte_clear(cpu, patching_mm, text_poke_addr, pte)
    yield from k.local_flush_tlb_page_psize(cpu, patching_mm, text_poke_addr)
    return err


@routine("__do_patch_instruction_mm", CP, versions=V62, inlined=True)
def __do_patch_instruction_mm(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``__do_patch_instruction_mm()`` (code-patching.c:281, v6.2 with 980411a4d1bb).

    ``get_locked_pte()`` first (-ENOMEM if NULL), so the PTE lock is held
    from the PTE store to ``pte_unmap_unlock()`` after the local flush:
    set PTE, ptesync, isync, switch to the patching mm, store, ``mb()`` on
    error, switch back, ``pte_clear``, ``local_flush_tlb_page_psize``, unlock.
    """
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    patching_mm, text_poke_addr = ctx.mm, ctx.addr
    assert patching_mm is not None
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pfn = get_patch_pfn(m, addr)
    got = yield from k.__get_locked_pte(cpu, patching_mm, text_poke_addr)
    if got is None:
        return -ENOMEM
    pte, ptl = got
    yield from k.__set_pte_at(cpu, patching_mm, text_poke_addr, pte, Pte(pfn, PAGE_KERNEL))
    yield  # ptesync: order the PTE update before use, also the hwsync
    m.mmu.ptesync(cpu)
    yield  # isync: order the context switch after arbitrary prior code
    m.mmu.isync(cpu)
    orig_mm = yield from k.start_using_temp_mm(cpu, patching_mm)
    err = yield from k.__patch_instruction(cpu, addr, instr, patch_addr)
    if err:
        yield
        m.mmu.sync(cpu)
    yield from k.stop_using_temp_mm(cpu, patching_mm, orig_mm)
    yield from k.pte_clear(cpu, patching_mm, text_poke_addr, pte)
    yield from k.local_flush_tlb_page_psize(cpu, patching_mm, text_poke_addr)
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    return err


@routine("start_using_temp_mm", CP, versions=SINCE_TEMP_MM, inlined=True)
def start_using_temp_mm(cpu: Cpu, temp_mm: MM) -> Gen:
    """``start_using_temp_mm()`` (code-patching.c:81, next-20221215 and v6.2).

    ``lockdep_assert_irqs_disabled()``; ``switch_mm_irqs_off(current->active_mm,
    temp_mm)``; ``WARN_ON(!mm_is_thread_local(temp_mm))``; ``suspend_breakpoints()``.
    Returns the original mm.
    """
    orig_mm = cpu.current.active_mm
    lockdep_assert_irqs_disabled(cpu, _line(cpu, "irqs_start"))
    yield from cpu.k.switch_mm_irqs_off(cpu, orig_mm, temp_mm)
    if temp_mm.cpumask != {cpu.n}:
        raise KernelWarning(
            _line(cpu, "thread_local"),
            detail=f"patching mm used by CPUs {sorted(temp_mm.cpumask)}, not thread-local",
        )
    yield from cpu.k.suspend_breakpoints(cpu)
    return orig_mm


@routine("stop_using_temp_mm", CP, versions=SINCE_TEMP_MM, inlined=True)
def stop_using_temp_mm(cpu: Cpu, temp_mm: MM, orig_mm: MM) -> Gen:
    """``stop_using_temp_mm()`` (code-patching.c:94): switch back, ``restore_breakpoints()``."""
    lockdep_assert_irqs_disabled(cpu, _line(cpu, "irqs_stop"))
    yield from cpu.k.switch_mm_irqs_off(cpu, temp_mm, orig_mm)
    yield from cpu.k.restore_breakpoints(cpu)


@routine("suspend_breakpoints", PROCESS_C, versions=SINCE_TEMP_MM)
def suspend_breakpoints(cpu: Cpu) -> Gen:
    """``suspend_breakpoints()`` (arch/powerpc/kernel/process.c, from the temp-mm series).

    ``set_hw_breakpoint(i, &null_brk)`` for every slot: the hardware is
    cleared, ``current_brk`` (what should be installed) is left alone.
    """
    for i in range(len(cpu.dawr)):
        yield from cpu.k.set_hw_breakpoint(cpu, i, None)


@routine("restore_breakpoints", PROCESS_C, versions=SINCE_TEMP_MM)
def restore_breakpoints(cpu: Cpu) -> Gen:
    """``restore_breakpoints()`` (arch/powerpc/kernel/process.c): ``set_hw_breakpoint(i,
    this_cpu_ptr(&current_brk[i]))`` for every slot."""
    for i in range(len(cpu.dawr)):
        yield from cpu.k.set_hw_breakpoint(cpu, i, cpu.current_brk[i])


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


# ---------------------------------------------------------------------------
# v6.12 (linux-source-6.12, 6.12.117): patch_mem and patch_instructions
# ---------------------------------------------------------------------------


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
    assert pte is not None
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
    assert patching_mm is not None
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


@routine("__patch_instructions", CP, versions=V612, inlined=True)
def __patch_instructions(cpu: Cpu, exec_addr: int, patch_addr: int, code: tuple[int, ...],
                         repeat: bool, nwords: int) -> Gen:
    """``__patch_instructions()`` (code-patching.c:437, v6.12).

    ``patch_memset32`` (repeat) or ``copy_to_kernel_nofault``: one store per
    word, each visible to other CPUs on its own; then ``smp_wmb`` and
    ``flush_icache_range``. -EPERM on a fault.
    """
    m = cpu.m
    words = [code[0]] * nwords if repeat else list(code[:nwords])
    m.expect_text(exec_addr, words)
    for i, w in enumerate(words):
        yield  # one store
        if not m.store(cpu, patch_addr + 4 * i, w, 4):
            m.mmu.isync(cpu)
            return -EPERM
    yield  # smp_wmb; flush_icache_range
    m.mmu.sync(cpu)
    m.mmu.isync(cpu)
    return 0


@routine("__do_patch_instructions_mm", CP, versions=V612, inlined=True)
def __do_patch_instructions_mm(cpu: Cpu, addr: int, code: tuple[int, ...], repeat: bool,
                               nwords: int) -> Gen:
    """``__do_patch_instructions_mm()`` (code-patching.c:468, v6.12): as ``__do_patch_mem_mm``
    with ``__patch_instructions`` for a run of words within one page."""
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    patching_mm, text_poke_addr = ctx.mm, ctx.addr
    assert patching_mm is not None
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
    assert pte is not None
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



# ---------------------------------------------------------------------------
# The properties a correct kernel keeps
# ---------------------------------------------------------------------------


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    # empty_zero_page: a page of the linear map just past kernel text.
    machine.state["empty_zero_page"] = PAGE_OFFSET + 0x0280_0000


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [
        Invariant("patch window", _patch_window,
                  doc="a loaded patching mm means IRQs off, on its own CPU only"),
        Invariant("patching mapping private", _mapping_private,
                  doc="no CPU but its owner holds a translation of a patching address"),
        Invariant("patching mapping removed", _nothing_left_mapped, when="end",
                  doc="no PTE and no TLB entry left at any patching address"),
        Invariant("patching context per online CPU", _contexts_match_cpus, when="end",
                  doc="static key on: every online CPU has a context, an offline CPU none"),
        Invariant("patching mm leak", _no_leaks, when="end",
                  doc="every patching mm allocated is either in use by its CPU or freed"),
        Invariant("patching address bounds", _addr_bounds, when="end",
                  doc="each patching address is page-aligned and within the randomisation bounds"),
        Invariant("breakpoints restored", _breakpoints_restored, when="end",
                  doc="outside the patch window the DAWRs match current_brk"),
    ]


def _owner_of(m: Machine) -> dict[int, int]:
    """id(patching mm) -> owning CPU number."""
    out = {}
    for c in m.cpus:
        ctx = c.percpu.get("cpu_patching_context")
        if ctx is not None and ctx.mm is not None:
            out[id(ctx.mm)] = c.n
    return out


def _patch_window(m: Machine) -> str | None:
    for c in m.cpus:
        mm = c.loaded_mm
        if mm is None or not mm.is_patching:
            continue
        owners = _owner_of(m)
        owner = owners.get(id(mm))
        if owner is not None and owner != c.n:
            return f"CPU {c.n} has loaded {mm.name}, the patching mm of CPU {owner}"
        if c.irqs_enabled:
            return f"CPU {c.n} has interrupts enabled while its patching mm is loaded"
    return None


def _patching_addrs(m: Machine) -> list[tuple[int, MM, int]]:
    """(owner CPU, mm, address) of every patching context with live resources.

    A step check calls it at every emulated step: kept to plain attribute reads
    (``_live_resources`` inlined).
    """
    out = []
    for c in m.cpus:
        ctx = c.percpu.get("cpu_patching_context")
        if ctx is None:
            continue
        mm, area = ctx.mm, ctx.area
        if (mm is not None and not mm.freed) or (area is not None and not area.freed):
            out.append((c.n, mm if mm is not None else m.init_mm, ctx.addr))
    return out


def _mapping_private(m: Machine) -> str | None:
    holders = [c for c in m.cpus if c.tlb]
    if len(holders) < 2:
        return None  # only the owner's own TLB can hold anything
    translations_of = m.mmu.translations_of
    for owner, mm, addr in _patching_addrs(m):
        for c in holders:
            if c.n != owner and translations_of(c, mm, addr):
                return f"CPU {c.n} holds a translation of CPU {owner}'s patching address {addr:#x}"
    return None


def _nothing_left_mapped(m: Machine) -> str | None:
    for owner, mm, addr in _patching_addrs(m):
        if mm.lookup(addr) is not None:
            return f"CPU {owner}'s patching address {addr:#x} is still mapped in {mm.name}"
        for c in m.cpus:
            if m.mmu.translations_of(c, mm, addr):
                return f"CPU {c.n}'s TLB still translates CPU {owner}'s patching address {addr:#x}"
    return None


def _live_resources(ctx: PatchingContext | None) -> bool:
    if ctx is None:
        return False
    if ctx.mm is not None and not ctx.mm.freed:
        return True
    return ctx.area is not None and not ctx.area.freed


def _contexts_match_cpus(m: Machine) -> str | None:
    # v6.1's text_area_cpu_down frees the area but leaves the per-CPU pointer
    # behind; harmless while the CPU is offline, so only live resources count.
    if not m.static_keys.get("poking_init_done"):
        return None
    for c in m.cpus:
        live = _live_resources(c.percpu.get("cpu_patching_context"))
        if c.online and not live:
            return f"CPU {c.n} is online with no patching context"
        if not c.online and live:
            return f"CPU {c.n} is offline but its patching mm or area is still allocated"
    return None


def _no_leaks(m: Machine) -> str | None:
    in_use = {id(mm) for _, mm, _ in _patching_addrs(m)}
    for mm in m.mms.values():
        if mm.is_patching and not mm.freed and id(mm) not in in_use:
            return f"{mm.name} is neither used by a CPU nor freed"
        if mm.freed and any(not p.freed for p in mm.pte_pages()):
            return f"{mm.name} was freed with live page tables"
    return None


def _addr_bounds(m: Machine) -> str | None:
    page = m.run.page_size
    top = default_map_window(m) - 2 * page
    for owner, mm, addr in _patching_addrs(m):
        if mm.is_init:
            continue
        if addr % page or not page <= addr <= top:
            return f"CPU {owner}'s patching address {addr:#x} is outside [{page:#x}, {top:#x}] or unaligned"
    return None


def _breakpoints_restored(m: Machine) -> str | None:
    for c in m.cpus:
        if c.online and c.dawr != c.current_brk:
            return f"CPU {c.n}: DAWR {c.dawr} differs from current_brk {c.current_brk}"
    return None
