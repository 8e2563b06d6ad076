"""Code patching through a temporary mm: next-20221215 (c28c15b6d28a) and v6.2 (980411a4d1bb).

The routines marked ``SINCE_TEMP_MM`` are unchanged up to 6.12 and serve it too.
next-20221215 is c28c15b6d28a plus the three powerpc/next patches on top of it
(blob 73ce4b90bb1b, the pre-image of the fix); v6.2 is that file with
980411a4d1bb applied (blob b00112d7ad46).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuzzer._mm import MM, PAGE_KERNEL, Pte
from fuzzer._routines import routine
from fuzzer.kernel.bug import warn
from fuzzer.kernel.faults import warn_on_alloc_failure
from fuzzer.kernel.locking import lockdep_assert_irqs_disabled
from fuzzer.kernel.patching.common import (
    CP,
    ENOMEM,
    NEXT,
    PROCESS_C,
    SINCE_TEMP_MM,
    TEMP_MM,
    V62,
    V612,
    V612_FIXED,
    Gen,
    context,
    get_patch_pfn,
    line,
    mm_patch_enabled,
    random_patching_addr,
)

if TYPE_CHECKING:
    from fuzzer._machine import Cpu


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
    if ret < 0:  # WARN_ON, then return without enabling poking_init_done
        warn(cpu, line(cpu, "poking_warn"), once=False, detail=f"cpuhp_setup_state returned {ret}")
        return
    m.static_keys["poking_init_done"] = True
    yield

@routine("text_area_cpu_up", CP, versions=SINCE_TEMP_MM)
def text_area_cpu_up(cpu: Cpu) -> Gen:
    """``text_area_cpu_up()`` (code-patching.c:102, next-20221215 and v6.2).

    As in v6.1, and also cache the area's address and its init_mm PTE
    pointer in ``cpu_patching_context`` (init_mm's PTEs are not lock-checked).
    """
    k = cpu.k
    area = yield from k.get_vm_area(cpu, cpu.m.run.page_size)
    if area is None:
        warn_on_alloc_failure(cpu, "get_vm_area", line(cpu, "cpu_up_warn"), function="text_area_cpu_up",
                              detail=f"Failed to create text area for cpu {cpu.n}")
        return -1
    err = yield from k.map_patch_area(cpu, cpu.m.state["empty_zero_page"], area.addr)
    if err:
        return err
    yield from k.unmap_patch_area(cpu, area.addr)
    ctx = context(cpu)
    ctx.area = area
    ctx.addr = area.addr
    ctx.pte = yield from k.virt_to_kpte(cpu, area.addr)
    return 0

@routine("text_area_cpu_down", CP, versions=SINCE_TEMP_MM)
def text_area_cpu_down(cpu: Cpu) -> Gen:
    """``text_area_cpu_down()`` (code-patching.c:130): free the area, clear area/addr/pte."""
    ctx = context(cpu)
    yield from cpu.k.free_vm_area(cpu, ctx.area)  # NULL if this CPU never got one
    ctx.area, ctx.addr, ctx.pte = None, 0, None
    return 0

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
        warn_on_alloc_failure(cpu, "mm_alloc", line(cpu, "mm_alloc_warn"),
                              function="text_area_cpu_up_mm", detail="WARN_ON(!mm)")
        return -ENOMEM
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

@routine("text_area_cpu_up_mm", CP, versions=V62 + V612)
def text_area_cpu_up_mm(cpu: Cpu) -> Gen:
    """``text_area_cpu_up_mm()`` (code-patching.c:148, v6.2 with 980411a4d1bb).

    As in next-20221215 but the PTE pointer is not kept: only mm and addr.
    """
    k = cpu.k
    mm = yield from k.mm_alloc(cpu)
    if mm is None:
        warn_on_alloc_failure(cpu, "mm_alloc", line(cpu, "mm_alloc_warn"),
                              function="text_area_cpu_up_mm", detail="WARN_ON(!mm)")
        return -ENOMEM
    addr = random_patching_addr(cpu)
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
    yield from cpu.k.put_patching_mm(cpu, ctx.mm, ctx.addr)  # NULL if never allocated
    ctx.mm, ctx.addr, ctx.pte = None, 0, None
    return 0

@routine("put_patching_mm", CP, versions=SINCE_TEMP_MM, inlined=True)
def put_patching_mm(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``put_patching_mm()`` (code-patching.c:139-146 next-20221215 and v6.2, :142-149 v6.12).

    ``tlb_gather_mmu`` (:143 / :146), ``free_pgd_range`` of the one page
    (:144 / :147), ``mmput`` (:145 / :148) -- and no ``tlb_finish_mmu``: the
    gather dies on the stack with its batch, so the PTE, PMD and PUD tables
    ``free_pgd_range`` handed to ``tlb_remove_table``, and the batch page,
    are never freed. A real 6.12.117 powernv kernel leaks 128 kB of
    ``PageTables`` (two 64K fragment pages) per CPU offline/online cycle.
    """
    k = cpu.k
    tlb = yield from k.tlb_gather_mmu(cpu, mm)
    yield from k.free_pgd_range(cpu, tlb, addr, addr + cpu.m.run.page_size)
    yield from k.mmput(cpu, mm)


@routine("put_patching_mm", CP, versions=V612_FIXED, inlined=True)
def put_patching_mm_fixed(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``put_patching_mm()`` with the one-line fix: ``tlb_finish_mmu(&tlb)`` after
    ``free_pgd_range`` (before ``mmput``, code-patching.c:148 in v6.12), as in
    cpuhp-leak-fix.patch; the real kernel's page-table counters then stay flat."""
    k = cpu.k
    tlb = yield from k.tlb_gather_mmu(cpu, mm)
    yield from k.free_pgd_range(cpu, tlb, addr, addr + cpu.m.run.page_size)
    yield from k.tlb_finish_mmu(cpu, tlb)
    yield from k.mmput(cpu, mm)


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
    lockdep_assert_irqs_disabled(cpu, line(cpu, "irqs_start"))
    yield from cpu.k.switch_mm_irqs_off(cpu, orig_mm, temp_mm)
    if temp_mm.cpumask != {cpu.n}:
        warn(cpu, line(cpu, "thread_local"), once=False,
             detail=f"patching mm used by CPUs {sorted(temp_mm.cpumask)}, not thread-local")
    yield from cpu.k.suspend_breakpoints(cpu)
    return orig_mm

@routine("stop_using_temp_mm", CP, versions=SINCE_TEMP_MM, inlined=True)
def stop_using_temp_mm(cpu: Cpu, temp_mm: MM, orig_mm: MM) -> Gen:
    """``stop_using_temp_mm()`` (code-patching.c:94): switch back, ``restore_breakpoints()``."""
    lockdep_assert_irqs_disabled(cpu, line(cpu, "irqs_stop"))
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
