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
from fuzzer._errors import KernelBug, ModelLimitation
from fuzzer._mm import MM, PTLOCK_CLASS, Pte, PtePage, PtePtr, SpinLock, Table
from fuzzer._oops import deref, kernel_struct
from fuzzer._plugins import hookimpl
from fuzzer._routines import routine
from fuzzer._specs import Invariant
from fuzzer.kernel import pgalloc, rcu
from fuzzer.kernel.bug import warn
from fuzzer.kernel.faults import should_fail
from fuzzer.kernel.locking import might_sleep, spin_lock, spin_unlock

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine

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
    generic = [mm_alloc, mmput, get_locked_pte, pte_unmap_unlock, free_pgd_range, get_vm_area, free_vm_area,
               tlb_gather_mmu, tlb_remove_table, tlb_flush_mmu, tlb_finish_mmu]
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
        switch_mm_irqs_off_612,
        virt_to_kpte,
    ]


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [Invariant("page-table memory freed", pgalloc.leaked, when="end",
                      doc="a freed mm leaves no page-table page, PUD object or mmu_gather batch"
                          " page behind (after RCU)")]


@routine("mm_alloc", "kernel/fork.c")
def mm_alloc(cpu: Cpu, name: str = "patching_mm") -> Gen:
    """``mm_alloc()`` (kernel/fork.c, v6.1-v6.12): a fresh mm with an empty pgd, GFP_KERNEL.

    ``mm_init`` -> ``mm_alloc_pgd`` -> ``pgd_alloc`` (book3s/64/pgalloc.h:48):
    the PGD is recorded in the page-table ledger. ``name`` only labels it in
    reports (x86's ``poking_mm``). NULL when fault injection fails its
    ``allocate_mm`` (site ``mm_alloc``), before any PGD is allocated."""
    might_sleep(cpu, "mm/slab.h:723")
    yield
    if should_fail(cpu, "mm_alloc"):
        return None
    mm = cpu.m.new_mm(name)
    mm.pgd.desc = pgalloc.whole_alloc(cpu.m, mm, "pgd")
    return mm


@routine("mmput", "kernel/fork.c")
def mmput(cpu: Cpu, mm: MM) -> Gen:
    """``mmput()`` (kernel/fork.c:1368 v6.12): the last user runs ``__mmput`` and ``mmdrop``.

    ``exit_mmap`` frees the tables under the mm's VMAs (a patching mm has none:
    its tables must already be gone, through ``free_pgd_range``; another mm's
    linked tables stand for VMA-backed ones and are freed here); ``__mmdrop``
    (fork.c:930) frees the PGD (``mm_free_pgd``), drops the fragments the mm
    still caches (``destroy_context``) and frees the mm. Tables still linked
    in a patching mm are never freed, as in the kernel.

    ``atomic_dec_and_test(&mm->mm_users)`` on a NULL or already freed mm oopses.
    """
    might_sleep(cpu, "kernel/fork.c:1240")
    mm = deref(mm, "struct mm_struct", member="mm_users", write=True)
    mm.users -= 1
    yield
    if mm.users == 0:
        if not mm.is_patching:
            for page in mm.pte_pages():
                page.freed = True
            _free_tables(mm.pgd)
        m = cpu.m
        if mm.pgd.desc is not None:
            pgalloc.pgtable_free_whole(m, mm.pgd.desc)
        pgalloc.destroy_pagetable_cache(m, mm)
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
    PTE page's split lock. Returns ``(pte pointer, ptl)``, or None when an
    allocation failed (the tables already allocated stay, as in the kernel).
    """
    ptr = yield from pte_alloc(cpu, mm, addr)
    if ptr is None:
        return None
    yield from spin_lock(cpu, ptr.page.ptl)
    return ptr, ptr.page.ptl


@routine("walk_to_pmd", "mm/memory.c", inlined=True)
def pte_alloc(cpu: Cpu, mm: MM, addr: int) -> Gen:
    """``walk_to_pmd()`` + ``__pte_alloc()`` (mm/memory.c; ``pud_alloc``/``pmd_alloc``).

    Walk to ``addr``'s PTE page, allocating each missing level (GFP_KERNEL:
    may sleep, so never with IRQs off or a spinlock held). Returns the PTE
    pointer, taking no lock, or None when fault injection fails a table
    allocation (site ``pgtable_alloc``). The MMUs' ``map_kernel_page`` use it
    for init_mm. ``pgd_offset(mm, addr)`` reads ``mm->pgd``: a NULL or freed
    mm oopses here.
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
            if should_fail(cpu, "pgtable_alloc"):
                return None
            if level < 2:
                nxt = Table(level + 1)
            else:
                nxt = PtePage(SpinLock(f"ptl({mm.name}, {addr >> mm.geometry.shifts[2]:#x})",
                                       PTLOCK_CLASS))
            nxt.desc = _table_alloc(cpu.m, mm, level)
            node.entries[idx[level]] = nxt
        node = nxt
    assert isinstance(node, PtePage)
    return PtePtr(node, idx[3], mm, addr)


#: The table each level of the walk allocates: ``pud_alloc_one``, ``pmd_alloc_one``
#: (``pmd_fragment_alloc``), ``pte_alloc_one`` (``pte_fragment_alloc``).
_LEVEL_KIND = ("pud", "pmd", "pte")


def _table_alloc(m: Machine, mm: MM, level: int) -> pgalloc.PgtablePage:
    """Record a new table's memory and ``mm_inc_nr_ptes``/``pmds``/``puds``."""
    kind = _LEVEL_KIND[level]
    led = pgalloc.ledger(m)
    led.pgtables_bytes[mm] = led.pgtables_bytes.get(mm, 0) + 1
    if kind == "pud":
        return pgalloc.whole_alloc(m, mm, kind)
    return pgalloc.fragment_alloc(m, mm, kind)


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
        warn(cpu, f"{PGTABLE_C}:{n}", function=function, once=False,
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


# ---------------------------------------------------------------------------
# Freeing page tables: free_pgd_range into an mmu_gather (MMU_GATHER_RCU_TABLE_FREE)
# ---------------------------------------------------------------------------

MMU_GATHER_C = "mm/mmu_gather.c"


@attrs.define(eq=False)
class TableBatch:
    """``struct mmu_table_batch`` (asm-generic/tlb.h:200): one page of tables waiting to be freed."""

    page: pgalloc.PgtablePage
    tables: list[Table | PtePage] = attrs.Factory(list)


@attrs.define(eq=False)
class MmuGather:
    """``struct mmu_gather`` (include/asm-generic/tlb.h), as powerpc builds it:
    MMU_GATHER_RCU_TABLE_FREE, so freed tables go to a batch freed after RCU.

    It lives on its caller's stack: a gather nobody finishes takes its batch
    page and every table in it with it.
    """

    mm: MM
    fullmm: bool = False
    freed_tables: bool = False
    """Set by ``p*_free_tlb``: the flush must also invalidate page-walk caches."""
    batch: TableBatch | None = None
    """``tlb->batch``: tables queued for an RCU-deferred free, or None."""


def max_table_batch(m: Machine) -> int:
    """``MAX_TABLE_BATCH`` (asm-generic/tlb.h:208): (PAGE_SIZE - header) / sizeof(void *)."""
    return (m.run.page_size - 24) // 8


@routine("tlb_gather_mmu", MMU_GATHER_C)
def tlb_gather_mmu(cpu: Cpu, mm: MM) -> Gen:
    """``tlb_gather_mmu()`` -> ``__tlb_gather_mmu()`` (mm/mmu_gather.c:411/377, v6.12;
    the same shape since 6.1): no batch yet (``tlb_table_init``), an empty range,
    ``inc_tlb_flush_pending(mm)``."""
    yield from ()
    return MmuGather(mm)


@routine("free_pgd_range", "mm/memory.c")
def free_pgd_range(cpu: Cpu, tlb: MmuGather, addr: int, end: int, floor: int = 0,
                   ceiling: int = 0) -> Gen:
    """``free_pgd_range(tlb, addr, end, floor, ceiling)`` (mm/memory.c:303, v6.12; :292-348 v6.1).

    With floor and ceiling 0 (code patching's only call) every level on the
    way to ``[addr, end)`` is freed whatever else it maps: ``free_pte_range``
    (:190) clears the pmd entry, ``pte_free_tlb`` and ``mm_dec_nr_ptes``;
    ``free_pmd_range`` (:199) clears the pud entry, ``pmd_free_tlb``,
    ``mm_dec_nr_pmds``; ``free_pud_range`` (:233) clears the p4d (= pgd, folded)
    entry, ``pud_free_tlb``, ``mm_dec_nr_puds``. Each ``p*_free_tlb`` sets
    ``tlb->freed_tables`` and hands the table to ``tlb_remove_table``: nothing
    is freed here. The model handles one PMD's range (a single page here).
    """
    mm = deref(tlb.mm, "struct mm_struct", member="pgd")  # pgd_offset(tlb->mm, addr)
    geo = mm.geometry
    if floor or ceiling or (addr >> geo.shifts[2]) != ((end - 1) >> geo.shifts[2]):
        raise ModelLimitation("free_pgd_range beyond one PMD range or with a floor/ceiling")
    yield
    idx = geo.indices(addr)
    pud = mm.pgd.entries.get(idx[0])
    if pud is None:
        return
    assert isinstance(pud, Table)
    pmd = pud.entries.get(idx[1])
    if pmd is not None:
        assert isinstance(pmd, Table)
        pte = pmd.entries.pop(idx[2], None)
        if pte is not None:
            yield from _free_table_tlb(cpu, tlb, pte)
        pud.entries.pop(idx[1])
        yield from _free_table_tlb(cpu, tlb, pmd)
    mm.pgd.entries.pop(idx[0])
    yield from _free_table_tlb(cpu, tlb, pud)


def _free_table_tlb(cpu: Cpu, tlb: MmuGather, table: Table | PtePage) -> Gen:
    """``pte_free_tlb``/``pmd_free_tlb``/``pud_free_tlb`` (asm-generic/tlb.h:717-741) ->
    ``__p*_free_tlb`` -> ``pgtable_free_tlb`` (book3s64/pgtable.c:495), then
    ``mm_dec_nr_*``: the mm's ``pgtables_bytes`` drops now, the memory later."""
    tlb.freed_tables = True
    yield from cpu.k.tlb_remove_table(cpu, tlb, table)
    led = pgalloc.ledger(cpu.m)
    led.pgtables_bytes[tlb.mm] = led.pgtables_bytes.get(tlb.mm, 0) - 1


@routine("tlb_remove_table", MMU_GATHER_C)
def tlb_remove_table(cpu: Cpu, tlb: MmuGather, table: Table | PtePage) -> Gen:
    """``tlb_remove_table()`` (mm/mmu_gather.c:332, v6.12).

    The first table takes a batch page (``__get_free_page(GFP_NOWAIT)``,
    :337); if there is none, invalidate (``tlb_table_invalidate``) and free
    this table at once after an IPI to every CPU (``tlb_remove_table_one``,
    :315). Else queue it; a full batch is flushed (``tlb_table_flush``, :347).
    """
    m = cpu.m
    if tlb.batch is None:
        yield  # the page allocation (GFP_NOWAIT: never sleeps)
        if _nowait_alloc_fails(m):
            yield from _tlb_table_invalidate(cpu, tlb)
            yield  # tlb_remove_table_sync_one: smp_call_function(..., wait=1)
            _tlb_remove_table(m, table)
            return
        tlb.batch = TableBatch(pgalloc.whole_alloc(m, tlb.mm, "batch"))
    tlb.batch.tables.append(table)
    if len(tlb.batch.tables) == max_table_batch(m):
        yield from _tlb_table_flush(cpu, tlb)


def _nowait_alloc_fails(m: Machine) -> bool:
    """Whether this GFP_NOWAIT page allocation fails: only when a fault-injection
    plugin says so through ``machine.state["fail_nowait_page"]`` (a count of
    allocations to fail)."""
    left = m.state.get("fail_nowait_page", 0)
    if left:
        m.state["fail_nowait_page"] = left - 1
        return True
    return False


def _tlb_remove_table(m: Machine, table: Table | PtePage) -> None:
    """``__tlb_remove_table()`` (book3s64/pgtable.c:504) -> ``pgtable_free()``: the table's
    fragment (or PUD object) goes back; its page goes with its last fragment."""
    table.freed = True
    if table.desc is not None:
        pgalloc.pgtable_free(m, table.desc)


def _tlb_table_invalidate(cpu: Cpu, tlb: MmuGather) -> Gen:
    """``tlb_table_invalidate()`` (mm/mmu_gather.c:303): ``tlb_flush_mmu_tlbonly`` when
    ``tlb_needs_table_invalidate()`` -- ``radix_enabled()`` on powerpc (asm/tlb.h:38)."""
    if cpu.m.mmu.radix:
        yield from _tlb_flush_mmu_tlbonly(cpu, tlb)


def _tlb_flush_mmu_tlbonly(cpu: Cpu, tlb: MmuGather) -> Gen:
    """``tlb_flush_mmu_tlbonly()`` (asm-generic/tlb.h:471): the arch ``tlb_flush`` if the
    gather freed or cleared anything, then an empty range."""
    if not tlb.freed_tables:
        return
    yield from cpu.k.tlb_flush(cpu, tlb)
    tlb.freed_tables = False


def _tlb_table_flush(cpu: Cpu, tlb: MmuGather) -> Gen:
    """``tlb_table_flush()`` (mm/mmu_gather.c:321): invalidate, then ``call_rcu`` the batch
    (``tlb_remove_table_free``, :286): its tables and its page are freed after a grace
    period (``__tlb_remove_table_free``, :223)."""
    batch = tlb.batch
    if batch is None:
        return
    yield from _tlb_table_invalidate(cpu, tlb)
    m = cpu.m

    def free_batch() -> None:
        for table in batch.tables:
            _tlb_remove_table(m, table)
        pgalloc.pgtable_free(m, batch.page)

    rcu.call_rcu(m, free_batch)
    tlb.batch = None


@routine("tlb_flush_mmu", MMU_GATHER_C)
def tlb_flush_mmu(cpu: Cpu, tlb: MmuGather) -> Gen:
    """``tlb_flush_mmu()`` (mm/mmu_gather.c:371): ``tlb_flush_mmu_tlbonly`` then
    ``tlb_flush_mmu_free`` -> ``tlb_table_flush`` (no page batches: nothing is unmapped)."""
    yield from _tlb_flush_mmu_tlbonly(cpu, tlb)
    yield from _tlb_table_flush(cpu, tlb)


@routine("tlb_finish_mmu", MMU_GATHER_C)
def tlb_finish_mmu(cpu: Cpu, tlb: MmuGather) -> Gen:
    """``tlb_finish_mmu()`` (mm/mmu_gather.c:464, v6.12): ``tlb_flush_mmu`` (no nested
    flush is modelled: one gather per mm at a time), free the page batches,
    ``dec_tlb_flush_pending``."""
    yield from cpu.k.tlb_flush_mmu(cpu, tlb)


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


MMU_CONTEXT_C = "arch/powerpc/mm/mmu_context.c"
#: init_mm's mm_cpumask as the interleaving feedback names it: a CPU switching to init_mm
#: tests it, the control side's ``__cpu_die`` (cpuhp.py) clears a dying CPU's bit.
INIT_MM_CPUMASK = ("mm_cpumask", "init_mm")


@routine("switch_mm_irqs_off", MMU_CONTEXT_C, versions=("v6.12",))
def switch_mm_irqs_off_612(cpu: Cpu, prev: MM | None, next_mm: MM) -> Gen:
    """``switch_mm_irqs_off()`` (arch/powerpc/mm/mmu_context.c:43, v6.12).

    As before, with the two ``VM_WARN_ON_ONCE`` checks of 177255afb405 ("powerpc:
    Add mm_cpumask warning when context switching", after v6.2), live under
    CONFIG_DEBUG_VM: adding this CPU to ``mm_cpumask(next)`` must never be
    needed for init_mm (:51; init_mm's mask is kept at boot, CPU online and
    ``__cpu_die``), and after ``switch_mmu_context`` the CPU must still be in
    ``mm_cpumask(prev)`` (:106) -- which ``cleanup_cpu_mmu_context`` breaks for
    a lazily used mm when a CPU goes offline; and :51 fires there too when the
    control CPU's ``__cpu_die`` cleared init_mm's bit before the dying CPU's
    ``idle_task_exit`` got here (both fixed by 21641bd9a7a7). Both are ``_ONCE`` and the
    kernel goes on after them (:func:`fuzzer.kernel.warn`): after :51 it sets the bit
    (:52-53), which the next online's ``start_secondary`` finds (smp.c:1634).
    """
    next_mm = deref(next_mm, "struct mm_struct", member="cpu_bitmap")
    debug_vm = cpu.m.config.enabled("CONFIG_DEBUG_VM")
    if next_mm.is_init:
        cpu.m.note_access(cpu, INIT_MM_CPUMASK, False)
    if cpu.n not in next_mm.cpumask:
        if debug_vm and next_mm.is_init:
            warn(cpu, f"{MMU_CONTEXT_C}:51", function="switch_mm_irqs_off",
                 detail=f"CPU {cpu.n} was not in init_mm's mm_cpumask")
        next_mm.cpumask.add(cpu.n)  # :52, after the WARN: set again on a dying CPU
    yield
    if prev is next_mm:
        return
    yield from cpu.k.switch_mmu_context(cpu, prev, next_mm)
    cpu.loaded_mm = next_mm
    if debug_vm and prev is not None and cpu.n not in prev.cpumask:
        warn(cpu, f"{MMU_CONTEXT_C}:106", function="switch_mm_irqs_off",
             detail=f"CPU {cpu.n} is not in mm_cpumask({prev.name}) of the mm it switched away from")


@kernel_struct("struct vm_struct")
@attrs.define(eq=False)
class VmArea:
    """A ``vm_struct`` from get_vm_area: a kernel virtual range of its own."""

    addr: int
    size: int
    freed: bool = False


@routine("get_vm_area", "mm/vmalloc.c")
def get_vm_area(cpu: Cpu, size: int) -> Gen:
    """``get_vm_area(size, VM_ALLOC)`` (mm/vmalloc.c): a fresh vmalloc range plus a guard page.

    NULL when fault injection fails the ``vm_struct`` allocation (site ``get_vm_area``).
    """
    might_sleep(cpu, "mm/vmalloc.c:2481")
    yield
    if should_fail(cpu, "get_vm_area"):
        return None
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
