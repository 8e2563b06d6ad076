"""Generic mm code the patching model uses: page tables, PTE locks, mm lifetime.

Follows mm/memory.c, kernel/fork.c and arch/powerpc/mm/pgtable.c; the
MMU-specific halves (``pte_update``, ``switch_mmu_context``, TLB flushes,
``map_kernel_page``) come from the MMU plugin.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._config import RunConfig
from fuzzer._errors import KernelBug, KernelWarning
from fuzzer._mm import MM, Pte, PtePage, PtePtr, SpinLock, Table
from fuzzer._oops import deref, kernel_struct
from fuzzer._plugins import hookimpl
from fuzzer._routines import routine
from fuzzer.kernel.locking import might_sleep, spin_lock, spin_unlock

if TYPE_CHECKING:
    from fuzzer._machine import Cpu

Gen = Generator[Any, None, Any]
PGTABLE_C = "arch/powerpc/mm/pgtable.c"

#: Line of each check in assert_pte_locked, per kernel version. v6.1, the
#: next-20221215 tree and v6.2 share one pgtable.c blob (cb2dcdb18f8e).
ASSERT_PTE_LOCKED_LINES = {
    "pgd": 318,
    "pud": 322,
    "pmd_present": 332,
    "locked": 333,
}
#: The same in 6.12's shape: ``BUG_ON(!pte)`` after ``pte_offset_map_nolock`` takes
#: the place of the ``!pmd_present`` check.
ASSERT_PTE_LOCKED_LINES_612 = {"pgd": 387, "pud": 391, "pmd_present": 402, "locked": 403}


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    generic = [mm_alloc, mmput, get_locked_pte, pte_unmap_unlock, free_pgd_range, get_vm_area, free_vm_area]
    if config.arch != "powerpc":
        return generic  # another architecture brings its own PTE accessors and switch_mm
    return [
        *generic,
        __set_pte_at,
        set_pte_at,
        pte_clear,
        assert_pte_locked,
        assert_pte_locked_612,
        switch_mm_irqs_off,
        virt_to_kpte,
    ]


@routine("mm_alloc", "kernel/fork.c")
def mm_alloc(cpu: Cpu, name: str = "patching_mm") -> Gen:
    """``mm_alloc()`` (kernel/fork.c, v6.1-v6.12): a fresh mm with an empty pgd, GFP_KERNEL.

    ``name`` only labels it in reports (x86's ``poking_mm``)."""
    might_sleep(cpu, "mm/slab.h:723")
    yield
    return cpu.m.new_mm(name)


@routine("mmput", "kernel/fork.c")
def mmput(cpu: Cpu, mm: MM) -> Gen:
    """``mmput()`` (kernel/fork.c): the last user frees the page tables and the mm.

    ``atomic_dec_and_test(&mm->mm_users)`` on a NULL or already freed mm oopses.
    """
    might_sleep(cpu, "kernel/fork.c:1240")
    mm = deref(mm, "struct mm_struct", member="mm_users", write=True)
    mm.users -= 1
    yield
    if mm.users == 0:
        for page in mm.pte_pages():
            page.freed = True
        _free_tables(mm.pgd)
        mm.freed = True


def _free_tables(t: Table) -> None:
    for e in t.entries.values():
        if isinstance(e, Table):
            _free_tables(e)
        else:
            e.freed = True
    t.freed = True


@routine("__get_locked_pte", "mm/memory.c")
def get_locked_pte(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``get_locked_pte()`` -> ``__get_locked_pte()`` (mm/memory.c, v6.1-v6.12).

    ``walk_to_pmd`` allocates the missing PUD/PMD pages and
    ``pte_alloc_map_lock`` the PTE page (each allocation is GFP_KERNEL and may
    sleep, which is why patching pre-allocates at CPU online), then takes the
    PTE page's split lock. Returns ``(pte pointer, ptl)``.
    """
    ptr = yield from pte_alloc(cpu, mm, addr)
    yield from spin_lock(cpu, ptr.page.ptl)
    return ptr, ptr.page.ptl


@routine("walk_to_pmd", "mm/memory.c", inlined=True)
def pte_alloc(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``walk_to_pmd()`` + ``__pte_alloc()`` (mm/memory.c; ``pud_alloc``/``pmd_alloc``).

    Walk to ``addr``'s PTE page, allocating each missing level (GFP_KERNEL:
    may sleep, so never with IRQs off or a spinlock held). Returns the PTE
    pointer, taking no lock. The MMUs' ``map_kernel_page`` use it for init_mm.
    ``pgd_offset(mm, addr)`` reads ``mm->pgd``: a NULL or freed mm oopses here.
    """
    mm = deref(mm, "struct mm_struct", member="pgd")
    idx = mm.geometry.indices(addr)
    node: Table | PtePage = mm.pgd
    for level in range(3):
        assert isinstance(node, Table)
        nxt = node.entries.get(idx[level])
        if nxt is None:
            might_sleep(cpu, "mm/page_alloc.c:5280")
            yield  # page allocation
            if level < 2:
                nxt = Table(level + 1)
            else:
                nxt = PtePage(SpinLock(f"ptl({mm.name}, {addr >> mm.geometry.shifts[2]:#x})"))
            node.entries[idx[level]] = nxt
        node = nxt
    assert isinstance(node, PtePage)
    return PtePtr(node, idx[3], mm, addr)


@routine("pte_unmap_unlock", "include/linux/mm.h", inlined=True)
def pte_unmap_unlock(cpu: Cpu, ptr: PtePtr, ptl: SpinLock) -> Gen:
    """``pte_unmap_unlock()`` (include/linux/mm.h): drop the split PTE lock."""
    yield from spin_unlock(cpu, ptl)


@routine("__set_pte_at", "arch/powerpc/include/asm/book3s/64/pgtable.h", inlined=True)
def __set_pte_at(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr, pte: Pte) -> Gen:
    """``__set_pte_at()`` (book3s/64/pgtable.h, v6.1-v6.12): a plain store, no lock assert.

    radix__set_pte_at has no ptesync of its own: callers that use the
    mapping at once (code patching, __map_kernel_page) issue one.
    """
    yield  # the PTE store
    ptr = deref(ptr, "pte_t", write=True)  # *ptep = pte
    old = ptr.set(pte)
    cpu.m.mmu.pte_stored(cpu, ptr, old, pte)


#: Where set_pte_at's VM_WARN_ON is, per version: (function, line of arch/powerpc/mm/pgtable.c).
#: In 6.12 set_pte_at is ``set_ptes(mm, addr, ptep, pte, 1)`` (include/linux/pgtable.h).
SET_PTE_WARN = {
    "v6.1": ("set_pte_at", 197), "next-20221215": ("set_pte_at", 197), "v6.2": ("set_pte_at", 197),
    "v6.12": ("set_ptes", 215),
}


@routine("set_pte_at", PGTABLE_C)
def set_pte_at(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr, pte: Pte) -> Gen:
    """``set_pte_at()`` (arch/powerpc/mm/pgtable.c:190, v6.1/v6.2; ``set_ptes()``, :192 v6.12).

    Under DEBUG_VM ``VM_WARN_ON`` when it overwrites a hardware-valid PTE (no
    TLB flush is done here; pgtable.c:197 v6.1, :215 v6.12), then ``__set_pte_at``.
    """
    if cpu.m.config.enabled("CONFIG_DEBUG_VM") and ptr.get() is not None:
        function, n = cpu.m.version.lookup(SET_PTE_WARN, "pgtable.c line numbers")
        raise KernelWarning(f"{PGTABLE_C}:{n}", function=function,
                            detail=f"overwriting a valid PTE at {addr:#x}")
    yield from cpu.k.__set_pte_at(cpu, mm, addr, ptr, pte)


@routine("pte_clear", "arch/powerpc/include/asm/book3s/64/pgtable.h", inlined=True)
def pte_clear(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr) -> Gen:
    """``pte_clear()`` (book3s/64/pgtable.h:462 in v6.1): ``pte_update(mm, addr, ptep, ~0, 0, 0)``."""
    return (yield from cpu.k.pte_update(cpu, mm, addr, ptr, clear_all=True, huge=False))


@routine("assert_pte_locked", PGTABLE_C)
def assert_pte_locked(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``assert_pte_locked()`` (arch/powerpc/mm/pgtable.c:308, v6.1, next-20221215, v6.2).

    Empty without CONFIG_DEBUG_VM. In order: return for init_mm; BUG if the
    pgd, p4d or pud entry is none; return if the pmd is none (khugepaged);
    BUG if the pmd is not present; BUG unless the PTE page's split lock is
    held by anyone (``assert_spin_locked(pte_lockptr(mm, pmd))``, line 333,
    the line of the crash report).
    """
    yield from _assert_pte_locked(cpu, mm, addr, ASSERT_PTE_LOCKED_LINES, "!pmd_present")


@routine("assert_pte_locked", PGTABLE_C, versions=("v6.12",))
def assert_pte_locked_612(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``assert_pte_locked()`` (arch/powerpc/mm/pgtable.c:375, v6.12).

    Hugh Dickins' shape: init_mm returns; BUG on a none pgd (387), p4d
    (389) or pud (391); return on a none pmd (399); ``pte_offset_map_nolock``
    and ``BUG_ON(!pte)`` (402, no PTE table there); ``assert_spin_locked(ptl)``
    at line 403 -- the line of the real 6.12 boot crash; ``pte_unmap``.
    """
    yield from _assert_pte_locked(cpu, mm, addr, ASSERT_PTE_LOCKED_LINES_612,
                                  "pte_offset_map_nolock returned NULL")


def _assert_pte_locked(cpu: Cpu, mm: MM, addr: int, lines: dict[str, int], no_table: str) -> Gen:
    """The checks both shapes make, in the kernel's order, with each version's lines.

    The p4d level is folded into the pgd on book3s64, so its BUG (between the
    pgd and pud ones) can only fire where the pgd one already did.
    """
    if not cpu.m.config.enabled("CONFIG_DEBUG_VM"):
        return
    yield
    if mm.is_init:
        return
    idx = mm.geometry.indices(addr)
    pud = mm.pgd.entries.get(idx[0])
    if pud is None:
        raise KernelBug(f"{PGTABLE_C}:{lines['pgd']}", detail="pgd_none")
    assert isinstance(pud, Table)
    pmd = pud.entries.get(idx[1])
    if pmd is None:
        raise KernelBug(f"{PGTABLE_C}:{lines['pud']}", detail="pud_none")
    assert isinstance(pmd, Table)
    page = pmd.entries.get(idx[2])
    if page is None:
        return
    if not isinstance(page, PtePage) or page.freed:
        raise KernelBug(f"{PGTABLE_C}:{lines['pmd_present']}", detail=no_table)
    if page.ptl.owner is None:
        raise KernelBug(
            f"{PGTABLE_C}:{lines['locked']}",
            detail=f"assert_spin_locked({page.ptl.name}): PTE lock for {addr:#x} not held",
        )


@routine("free_pgd_range", "mm/memory.c")
def free_pgd_range(cpu: Cpu, mm: MM, addr: int, end: int) -> Gen:
    """``free_pgd_range(tlb, addr, end, 0, 0)`` (mm/memory.c): free the tables of [addr, end).

    With floor and ceiling 0 every table level that maps only this range is
    freed: for the patching mm, whose only mapping is the patching page, that
    is the PTE, PMD and PUD pages on the way to it. ``pgd_offset(tlb->mm, addr)``
    follows the mm: NULL or freed oopses.
    """
    yield
    mm = deref(mm, "struct mm_struct", member="pgd")
    idx = mm.geometry.indices(addr)
    path: list[tuple[Table, int]] = []
    node: Table | PtePage = mm.pgd
    for level in range(3):
        assert isinstance(node, Table)
        nxt = node.entries.get(idx[level])
        if nxt is None:
            return
        path.append((node, idx[level]))
        node = nxt
    assert isinstance(node, PtePage)
    node.freed = True
    for parent, i in reversed(path):
        child = parent.entries.pop(i)
        child.freed = True
        if parent.entries or parent is mm.pgd:
            break


@routine("switch_mm_irqs_off", "arch/powerpc/mm/mmu_context.c")
def switch_mm_irqs_off(cpu: Cpu, prev: MM | None, next_mm: MM) -> Gen:
    """``switch_mm_irqs_off()`` (arch/powerpc/mm/mmu_context.c:43, v6.1-v6.2).

    Adds this CPU to ``mm_cpumask(next)`` the first time (never clears it
    from prev), returns if prev == next, else ``switch_mmu_context`` (the
    MMU's: radix writes the PID and isyncs). ``mm_cpumask(next)`` dereferences
    ``next``: a NULL or freed mm oopses.
    """
    next_mm = deref(next_mm, "struct mm_struct", member="cpu_bitmap")
    if cpu.n not in next_mm.cpumask:
        next_mm.cpumask.add(cpu.n)
    yield
    if prev is next_mm:
        return
    yield from cpu.k.switch_mmu_context(cpu, prev, next_mm)
    cpu.loaded_mm = next_mm


@kernel_struct("struct vm_struct")
@attrs.define(eq=False)
class VmArea:
    """A ``vm_struct`` from get_vm_area: a kernel virtual range of its own."""

    addr: int
    size: int
    freed: bool = False


@routine("get_vm_area", "mm/vmalloc.c")
def get_vm_area(cpu: Cpu, size: int) -> Gen:
    """``get_vm_area(size, VM_ALLOC)`` (mm/vmalloc.c): a fresh vmalloc range plus a guard page."""
    might_sleep(cpu, "mm/vmalloc.c:2481")
    yield
    addr = cpu.m.alloc_vmalloc(size)
    return None if addr is None else VmArea(addr, size)


@routine("free_vm_area", "mm/vmalloc.c")
def free_vm_area(cpu: Cpu, area: VmArea) -> Gen:
    """``free_vm_area()`` (mm/vmalloc.c): unmaps and frees the range.

    ``remove_vm_area(area->addr)``: a NULL area oopses.
    """
    might_sleep(cpu, "mm/vmalloc.c:2700")
    area = deref(area, "struct vm_struct", member="addr", freed=False)
    yield
    area.freed = True


@routine("virt_to_kpte", "arch/powerpc/include/asm/pgtable.h", inlined=True)
def virt_to_kpte(cpu: Cpu, addr: int) -> Gen:
    """``virt_to_kpte()``: the init_mm PTE pointer for a kernel address, or None."""
    yield from ()  # a routine, with no interleaving point of its own
    mm = cpu.m.init_mm
    _, page = mm.walk(addr)
    if page is None:
        return None
    return PtePtr(page, mm.geometry.indices(addr)[3], mm, addr)
