"""Address spaces: mm structures, page tables with split PTE locks, PTEs."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._errors import MemoryCorruption
from fuzzer._oops import kernel_struct

if TYPE_CHECKING:
    from fuzzer._machine import Cpu


class Prot(enum.IntFlag):
    """PTE permission and state bits, MMU-neutral (each MMU maps them to its format)."""

    PRESENT = 1
    READ = 2
    WRITE = 4
    EXEC = 8
    PRIVILEGED = 16
    """Kernel-only access (radix EAA[0]): KUAP/AMR does not apply."""
    ACCESSED = 32
    DIRTY = 64
    HASHPTE = 128
    """Hash MMU: an HPTE for this PTE may be in the hashed page table."""


PAGE_KERNEL = Prot.PRESENT | Prot.READ | Prot.WRITE | Prot.PRIVILEGED | Prot.ACCESSED | Prot.DIRTY
PAGE_KERNEL_ROX = Prot.PRESENT | Prot.READ | Prot.EXEC | Prot.PRIVILEGED | Prot.ACCESSED


@attrs.frozen
class Pte:
    """A present page-table entry: a page frame and its permissions."""

    pfn: int
    prot: Prot

    def __repr__(self) -> str:
        return f"Pte(pfn={self.pfn:#x}, {self.prot!s})"


@attrs.frozen
class Geometry:
    """Page-table level split: index bits per level, top first (pgd, pud, pmd, pte)."""

    page_shift: int
    index_bits: tuple[int, int, int, int]
    shifts: tuple[int, int, int, int] = attrs.field(init=False, eq=False, repr=False)
    """Each level's shift, top first: derived once (every table walk splits an address)."""
    _split: tuple[int, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        pte = self.page_shift
        pmd = pte + self.index_bits[3]
        pud = pmd + self.index_bits[2]
        pgd = pud + self.index_bits[1]
        shifts = (pgd, pud, pmd, pte)
        object.__setattr__(self, "shifts", shifts)
        object.__setattr__(self, "_split", tuple(
            x for s, b in zip(shifts, self.index_bits, strict=True) for x in (s, (1 << b) - 1)))

    def indices(self, addr: int) -> tuple[int, int, int, int]:
        s0, m0, s1, m1, s2, m2, s3, m3 = self._split
        return ((addr >> s0) & m0, (addr >> s1) & m1, (addr >> s2) & m2, (addr >> s3) & m3)


#: The lockdep class of every split PTE lock: ``ptlock_init`` initialises them all
#: at one ``spin_lock_init`` site (6.6 and later spell it ``ptlock_ptr(ptdesc)``).
PTLOCK_CLASS = "ptlock_ptr(page)"


class Lock:
    """What every lock of the model is (a marker): a CPU that waits on one (``yield lock.busy``)
    is queued behind its holder, which :meth:`fuzzer._machine.Machine._deadlock` tells from
    the wait a cycle is made of (an IPI, a hotplug handshake)."""

    __slots__ = ()


class SpinLock(Lock):
    """A spinlock (``spinlock_t``): owner CPU or None. Split PTE locks are these.

    ``key`` is its lockdep class when many locks share one (the split PTE
    locks, all initialised by one ``spin_lock_init`` call site); else the name.
    """

    __slots__ = ("key", "name", "owner")

    def __init__(self, name: str, key: str | None = None) -> None:
        self.name = name
        self.key = key or name
        self.owner: Cpu | None = None

    def busy(self) -> bool:
        return self.owner is not None

    def __repr__(self) -> str:
        who = f"CPU {self.owner.n}" if self.owner is not None else "unlocked"
        return f"<{self.name}: {who}>"


@attrs.define(eq=False)
class Table:
    """An upper page-table level (PGD, PUD or PMD page): index -> next level."""

    level: int
    entries: dict[int, Table | PtePage] = attrs.Factory(dict)
    freed: bool = False
    desc: Any = None
    """The page or slab object holding it (``fuzzer.kernel.pgalloc.PgtablePage``), when a
    modelled allocator made it."""


@kernel_struct("struct page")
@attrs.define(eq=False)
class PtePage:
    """A PTE page with its split page-table lock (``ptlock_ptr(page)``)."""

    ptl: SpinLock
    entries: dict[int, Pte] = attrs.Factory(dict)
    freed: bool = False
    desc: Any = None
    """The PTE fragment page holding it (``fuzzer.kernel.pgalloc.PgtablePage``)."""


@attrs.define(eq=False)
class PtePtr:
    """A ``pte_t *``: a PTE page and an index. Using it after the page is freed is a bug."""

    page: PtePage
    index: int
    mm: MM
    addr: int

    def get(self) -> Pte | None:
        if self.page.freed:
            raise MemoryCorruption(
                f"BUG: KASAN: use-after-free: PTE pointer for {self.addr:#x} in {self.mm.name}"
                " points into a freed PTE page"
            )
        return self.page.entries.get(self.index)

    def set(self, value: Pte | None) -> Pte | None:
        if self.page.freed:
            raise MemoryCorruption(
                f"BUG: KASAN: use-after-free: store through PTE pointer for {self.addr:#x}"
                f" in {self.mm.name} into a freed PTE page"
            )
        old = self.page.entries.get(self.index)
        if value is None:
            self.page.entries.pop(self.index, None)
        else:
            self.page.entries[self.index] = value
        return old


@kernel_struct("struct mm_struct")
@attrs.define(eq=False)
class MM:
    """An ``mm_struct``: page tables, the context id (radix PID) and the CPU mask."""

    name: str
    context_id: int
    geometry: Geometry
    pgd: Table = attrs.Factory(lambda: Table(0))
    cpumask: set[int] = attrs.Factory(set)
    """``mm_cpumask``: CPUs that have loaded this mm (never shrunk on switch-away, as on powerpc)."""
    users: int = 1
    freed: bool = False
    is_init: bool = False
    is_patching: bool = attrs.field(init=False)
    """A code-patching temporary mm (the model allocates mms only for that and for tasks).
    Set once from the name: step invariants ask it of every loaded mm at every step."""

    def __attrs_post_init__(self) -> None:
        self.is_patching = self.name.startswith("patching_mm")

    def __repr__(self) -> str:
        return f"<mm {self.name}>"

    # Walkers used by the model's kernel routines (and by the MMU's hardware walk).

    def walk(self, addr: int) -> tuple[list[Table], PtePage | None]:
        """The tables on the way to ``addr`` and its PTE page, allocating nothing."""
        idx = self.geometry.indices(addr)
        path = [self.pgd]
        node: Table | PtePage = self.pgd
        for level in range(3):
            assert isinstance(node, Table)
            nxt = node.entries.get(idx[level])
            if nxt is None:
                return path, None
            if isinstance(nxt, Table):
                path.append(nxt)
            node = nxt
        assert isinstance(node, PtePage)
        return path, node

    def lookup(self, addr: int) -> Pte | None:
        """The PTE mapping ``addr``, or None. What the hardware table walk reads."""
        _, page = self.walk(addr)
        if page is None:
            return None
        return page.entries.get(self.geometry.indices(addr)[3])

    def mapped(self, base: int = 0) -> list[int]:
        """Every page address with a present PTE, as ``base`` OR the table indices
        (``base`` supplies the region bits above the top level: kernel addresses)."""
        shifts = self.geometry.shifts
        out: list[int] = []

        def rec(node: Table | PtePage, level: int, va: int) -> None:
            for idx, e in node.entries.items():
                addr = va | (idx << shifts[level])
                if isinstance(e, (Table, PtePage)):
                    if not e.freed:
                        rec(e, level + 1, addr)
                else:
                    out.append(addr)

        rec(self.pgd, 0, base)
        return out

    def pte_pages(self) -> list[PtePage]:
        out: list[PtePage] = []

        def rec(t: Table) -> None:
            for e in t.entries.values():
                if isinstance(e, Table):
                    rec(e)
                else:
                    out.append(e)

        rec(self.pgd)
        return out
