"""Page-table memory on book3s64: which page or slab object holds each table, and when it is freed.

Follows arch/powerpc/mm/pgtable-frag.c (PTE fragments),
arch/powerpc/mm/book3s64/pgtable.c (PMD fragments, ``pgtable_free``),
arch/powerpc/include/asm/book3s/64/pgalloc.h (PUD slab objects, the PGD) and
arch/powerpc/mm/book3s64/mmu_context.c (``destroy_pagetable_cache``), at
v6.1-v6.12 (linux-source-6.12 line numbers). A PTE or PMD table is one
fragment of a page shared by the tables of one mm: the page is freed when
every fragment handed out was freed *and* the mm dropped the ones it still
had cached. The :class:`PgtableLedger` records every allocation (and every
``mmu_gather`` batch page) with its owner, so the end-state check can count
what a freed mm left behind -- the kernel's own ``pgtables_bytes`` is
decremented when a table is unlinked, before it is freed, and cannot see it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from fuzzer._errors import KernelBug
from fuzzer._mm import MM
from fuzzer.kernel import rcu

if TYPE_CHECKING:
    from fuzzer._machine import Machine

FRAG_C = "arch/powerpc/mm/pgtable-frag.c"
BOOK3S64_PGTABLE_C = "arch/powerpc/mm/book3s64/pgtable.c"
#: What each kind of allocation is, as /proc/slabinfo and /proc/meminfo would show it.
KIND_NAMES = {
    "pte": "PTE page", "pmd": "PMD page", "pud": "PUD (pgtable-2^9 slab object)", "pgd": "PGD",
    "batch": "mmu_gather batch page",
}


@attrs.define(eq=False)
class PgtablePage:
    """One allocation holding page tables: a ptdesc page cut into fragments, a slab object
    (PUD), the PGD, or an ``mmu_table_batch`` page."""

    kind: str
    """``pte``, ``pmd``, ``pud``, ``pgd`` or ``batch``."""
    owner: MM
    """The mm whose tables it holds (a batch page: the mm of the gather that took it)."""
    frags: int = 1
    """Fragments per page (``PTE_FRAG_NR``/``PMD_FRAG_NR``); 1 for whole allocations."""
    refcount: int = 1
    """``ptdesc->pt_frag_refcount``: fragments handed out or still cached by the owner."""
    accounted: bool = False
    """Counted in ``NR_PAGETABLE`` (``pagetable_pte_ctor``/``pagetable_pmd_ctor``)."""
    freed: bool = False


@attrs.define(eq=False)
class PgtableLedger:
    """Machine-wide page-table memory: every allocation, the per-mm fragment caches,
    ``NR_PAGETABLE``."""

    pages: list[PgtablePage] = attrs.Factory(list)
    frag_cache: dict[tuple[MM, str], tuple[PgtablePage, int]] = attrs.Factory(dict)
    """``mm->context.pte_frag``/``pmd_frag``: (mm, kind) -> (page, next fragment). Keyed by
    the mm itself (an ``MM`` hashes by identity), not ``id(mm)``: a copied machine (the
    boot cache) keeps its keys."""
    nr_page_table_pages: int = 0
    """``NR_PAGETABLE`` (``nr_page_table_pages`` in /proc/vmstat, ``PageTables`` in meminfo)."""
    pgtables_bytes: dict[MM, int] = attrs.Factory(dict)
    """``mm->pgtables_bytes`` by mm, in tables (``mm_inc_nr_ptes`` and friends)."""

    def live(self, mm: MM) -> list[PgtablePage]:
        return [p for p in self.pages if p.owner is mm and not p.freed]


def ledger(m: Machine) -> PgtableLedger:
    led = m.state.get("pgtable_ledger")
    if led is None:
        led = m.attach("pgtable_ledger", PgtableLedger())
    return led


def frag_nr(m: Machine, kind: str) -> int:
    """``PTE_FRAG_NR``/``PMD_FRAG_NR``: PAGE_SIZE over the table size.

    Radix (radix-64k.h:17-21, radix-4k.h:16-20): a table of 2^index 8-byte
    entries, so 256 PTE and 16 PMD fragments per 64K page, 1 with 4K pages.
    Hash 64K keeps a second half per PTE table (hash-64k.h:72), so 16.
    """
    bits = m.geometry.index_bits[3 if kind == "pte" else 2]
    shift = bits + 3
    if kind == "pte" and not m.mmu.radix and m.run.page_shift == 16:
        shift += 1
    return max(1, m.run.page_size >> shift)


def fragment_alloc(m: Machine, mm: MM, kind: str) -> PgtablePage:
    """``pte_fragment_alloc()`` (pgtable-frag.c:99) / ``pmd_fragment_alloc()`` (book3s64/pgtable.c:452).

    Take the next fragment of the mm's cached page (``get_pte_from_cache``,
    :34); else a new page, constructed as a page table (NR_PAGETABLE + 1; the
    kernel's own PTE tables skip ``pagetable_pte_ctor``), whose refcount is
    the fragment count and whose other fragments the mm caches (:75-93).
    """
    led = ledger(m)
    key = (mm, kind)
    cached = led.frag_cache.pop(key, None)
    if cached is not None:
        page, nxt = cached
        if nxt + 1 < page.frags:
            led.frag_cache[key] = (page, nxt + 1)
        return page
    page = PgtablePage(kind, mm, frag_nr(m, kind))
    page.accounted = kind == "pmd" or not mm.is_init
    if page.accounted:
        led.nr_page_table_pages += 1
    page.refcount = page.frags
    if page.frags > 1:
        led.frag_cache[key] = (page, 1)
    led.pages.append(page)
    return page


def whole_alloc(m: Machine, mm: MM, kind: str) -> PgtablePage:
    """``pud_alloc_one`` (book3s/64/pgalloc.h:93, a PGT_CACHE slab object) or ``pgd_alloc`` (:48)."""
    page = PgtablePage(kind, mm)
    ledger(m).pages.append(page)
    return page


def _release(m: Machine, page: PgtablePage, count: int, at: str) -> None:
    if page.refcount <= 0 or page.freed:
        raise KernelBug(at, detail=f"{KIND_NAMES[page.kind]} of {page.owner.name} freed twice")
    page.refcount -= count
    if page.refcount <= 0:
        page.freed = True
        if page.accounted:
            ledger(m).nr_page_table_pages -= 1


def pgtable_free(m: Machine, page: PgtablePage) -> None:
    """``pgtable_free()`` (book3s64/pgtable.c:477): ``pte_fragment_free`` (pgtable-frag.c:119,
    ``BUG_ON`` a zero refcount at :126), ``pmd_fragment_free`` (book3s64/pgtable.c:463),
    ``__pud_free`` (pgalloc.h:110); the page goes when its last fragment does."""
    at = f"{FRAG_C}:126" if page.kind == "pte" else f"{BOOK3S64_PGTABLE_C}:468"
    _release(m, page, 1, at)


def destroy_pagetable_cache(m: Machine, mm: MM) -> None:
    """``destroy_context()`` -> ``destroy_pagetable_cache()`` (book3s64/mmu_context.c:259):
    ``pte_frag_destroy``/``pmd_frag_destroy`` drop the references of the fragments the
    mm cached and never handed out (pgtable-frag.c:18, mmu_context.c:244)."""
    led = ledger(m)
    for kind in ("pte", "pmd"):
        cached = led.frag_cache.pop((mm, kind), None)
        if cached is not None:
            page, nxt = cached
            _release(m, page, page.frags - nxt, f"{FRAG_C}:27")


def leaked(m: Machine) -> str | None:
    """End-state check: every page-table allocation of a freed mm was freed.

    Runs the RCU callbacks first (the machine is quiescent). Counts what each
    freed mm still holds: PTE and PMD fragment pages, PUD objects, the PGD and
    the mmu_gather batch pages its tables were queued in.
    """
    rcu.rcu_barrier(m)
    led = ledger(m)
    for mm in m.mms.values():
        if not mm.freed:
            continue
        left = led.live(mm)
        if left:
            what = ", ".join(
                KIND_NAMES[p.kind] + (f" ({p.refcount} of {p.frags} fragments held)" if p.frags > 1 else "")
                for p in left
            )
            return f"{mm.name} was freed, but {len(left)} of its page-table allocations never were: {what}"
    return None


def pgtable_free_whole(m: Machine, page: PgtablePage) -> None:
    """``pgd_free()`` (book3s/64/pgalloc.h:81): the PGD, at ``__mmdrop``."""
    _release(m, page, 1, "kernel/fork.c:930")
