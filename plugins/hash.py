"""Hash MMU: a global hashed page table of HPTE groups, per-CPU SLBs and TLBs.

Follows arch/powerpc/mm/book3s64/hash_utils.c, hash_pgtable.c, hash_tlb.c,
slb.c and asm/book3s/64/hash.h at v6.1-v6.2. On Hash the kernel never uses
the temporary mm (``mm_patch_enabled()`` needs Radix): code patching takes
the vmalloc-area alias path at every modelled version.

Simplifications, none of which can hide a missing PTE lock, flush or
ordering in the patching path: 256M segments only; the HPT has a few groups
of eight slots with one hash function (a full group evicts its oldest
entry, flushing it as the kernel does); a translation fault runs
``hash_page`` atomically (the kernel's own fault path takes H_PAGE_BUSY on
the PTE, which nothing in the model races with); the SLB holds the loaded
context's user segments and is refilled on a miss.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer import (
    Geometry,
    Invariant,
    KnownFinding,
    Mmu,
    MmuSpec,
    Prot,
    Pte,
    PtePtr,
    RunConfig,
    Signature,
    check_access,
    hookimpl,
    pte_alloc,
    routine,
)
from fuzzer.kernel import ENOMEM, dawr_slots

if TYPE_CHECKING:
    from fuzzer import MM, Cpu, Machine

Gen = Generator[Any, None, Any]
HASH_H = "arch/powerpc/include/asm/book3s/64/hash.h"
HASH_PGTABLE_C = "arch/powerpc/mm/book3s64/hash_pgtable.c"
HASH_TLB_C = "arch/powerpc/mm/book3s64/hash_tlb.c"
SLB_C = "arch/powerpc/mm/book3s64/slb.c"
TLBFLUSH_H = "arch/powerpc/include/asm/book3s/64/tlbflush.h"

#: H_{PGD,PUD,PMD,PTE}_INDEX_SIZE (asm/book3s/64/hash-{64k,4k}.h).
INDEX_BITS = {16: (8, 10, 10, 8), 12: (9, 9, 7, 9)}
SID_SHIFT = 28
HPTEG_SLOTS = 8
HPTE_GROUPS = 64


@attrs.frozen
class Hpte:
    """One hashed page-table entry: which virtual page of which segment, and where."""

    vsid: tuple[int, int]
    vpn: int
    pfn: int
    prot: Prot


@attrs.define
class HashCpu:
    """Per-CPU hash hardware state."""

    context: MM | None = None
    """The mm whose user segments this CPU's SLB maps (``copy_mm_to_paca``)."""
    slb: dict[int, tuple[int, int]] = attrs.Factory(dict)
    """ESID -> VSID."""


class HashMmu(Mmu):
    """Hash hardware: the HPT is global, SLBs and TLBs per CPU, tlbie broadcast."""

    name = "hash"
    radix = False

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.shift = machine.run.page_shift
        self.hpt: dict[int, list[Hpte]] = {}
        self.inserted = 0
        """HPTEs hash_page has inserted (for tests and statistics)."""
        for cpu in machine.cpus:
            cpu.hw = HashCpu()

    def geometry(self, page_shift: int) -> Geometry:
        return Geometry(page_shift, INDEX_BITS[page_shift])

    def switch_context(self, cpu: Cpu, mm: MM) -> None:
        # switch_slb: drop the old context's user segments, load the new one.
        hw = cpu.hw
        hw.context = mm
        hw.slb.clear()

    @staticmethod
    def vsid(mm: MM, esid: int) -> tuple[int, int]:
        return (mm.context_id, esid)

    def _group(self, vsid: tuple[int, int], vpn: int) -> int:
        return hash((vsid, vpn)) % HPTE_GROUPS

    def find(self, vsid: tuple[int, int], vpn: int) -> Hpte | None:
        for h in self.hpt.get(self._group(vsid, vpn), ()):
            if h.vsid == vsid and h.vpn == vpn:
                return h
        return None

    def _translate(self, cpu: Cpu, mm: MM, va: int, write: bool, user: bool) -> int | None:
        esid = va >> SID_SHIFT
        if user:
            vsid = cpu.hw.slb.get(esid)
            if vsid is None:  # SLB miss: slb_allocate_user
                vsid = cpu.hw.slb[esid] = self.vsid(mm, esid)
        else:
            vsid = self.vsid(mm, esid)  # kernel segments are bolted
        vpn = va >> self.shift
        key = (vsid, vpn)
        hpte = cpu.tlb.get(key)
        if hpte is None:
            hpte = self.find(vsid, vpn)
            if hpte is None:
                hpte = self.hash_page(cpu, mm, va, vsid, vpn)
                if hpte is None:
                    return None
            cpu.tlb[key] = hpte
        if not check_access(Pte(hpte.pfn, hpte.prot), write):
            return None
        return (hpte.pfn << self.shift) | (va & ((1 << self.shift) - 1))

    def hash_page(self, cpu: Cpu, mm: MM, va: int, vsid: tuple[int, int], vpn: int) -> Hpte | None:
        """``hash_page_mm()`` -> ``__hash_page_64K()``: insert an HPTE for a present PTE.

        Marks the Linux PTE H_PAGE_HASHPTE, so that clearing it flushes the HPTE.
        The fault runs the exception entry code first (49b39ec248af: a hash
        fault on the patching alias executes whatever the entry code holds).
        """
        self.machine.exception_entry(cpu)
        _, page = mm.walk(va)
        if page is None:
            return None
        idx = mm.geometry.indices(va)[3]
        pte = page.entries.get(idx)
        if pte is None:
            return None
        page.entries[idx] = Pte(pte.pfn, pte.prot | Prot.HASHPTE)
        hpte = Hpte(vsid, vpn, pte.pfn, pte.prot)
        group = self.hpt.setdefault(self._group(vsid, vpn), [])
        if len(group) >= HPTEG_SLOTS:
            victim = group.pop(0)
            self._tlbie(victim.vsid, victim.vpn)
        group.append(hpte)
        self.inserted += 1
        return hpte

    def _tlbie(self, vsid: tuple[int, int], vpn: int, only: Cpu | None = None) -> None:
        for c in self.machine.cpus if only is None else [only]:
            c.tlb.pop((vsid, vpn), None)

    def flush_hash_page(self, cpu: Cpu, mm: MM, va: int, local: bool) -> None:
        """``flush_hash_page()``: invalidate the HPTE and its TLB entries (tlbiel or tlbie)."""
        vsid, vpn = self.vsid(mm, va >> SID_SHIFT), va >> self.shift
        group = self.hpt.get(self._group(vsid, vpn), [])
        group[:] = [h for h in group if not (h.vsid == vsid and h.vpn == vpn)]
        self._tlbie(vsid, vpn, only=cpu if local else None)

    def translate_user(self, cpu: Cpu, va: int, write: bool) -> int | None:
        mm = cpu.hw.context
        return None if mm is None else self._translate(cpu, mm, va, write, True)

    def translate_vmalloc(self, cpu: Cpu, va: int, write: bool) -> int | None:
        return self._translate(cpu, self.machine.init_mm, va, write, False)

    def tlb_key(self, mm: MM, va: int) -> Any:
        return (self.vsid(mm, va >> SID_SHIFT), va >> self.shift)  # translations_of's key

    def speculative_fill(self, cpu: Cpu, mm: MM, va: int) -> None:
        """Load a TLB entry from an HPTE already in the hashed page table.

        The hardware searches the HPT on its own; it never inserts an HPTE
        (``hash_page`` is the kernel's fault handler) nor an SLB entry (an SLB
        miss is an interrupt). So a user address needs its segment in this
        CPU's SLB; kernel segments are bolted.
        """
        esid = va >> SID_SHIFT
        if mm.is_init:
            vsid = self.vsid(mm, esid)
        else:
            if cpu.hw.context is not mm:
                return
            vsid = cpu.hw.slb.get(esid)
            if vsid is None:
                return
        vpn = va >> self.shift
        hpte = self.find(vsid, vpn)
        if hpte is not None:
            cpu.tlb[(vsid, vpn)] = hpte

    def hptes(self) -> list[Hpte]:
        return [h for group in self.hpt.values() for h in group]


@hookimpl
def fuzzer_mmus() -> list[MmuSpec]:
    return [MmuSpec("hash", HashMmu, "POWER Hash MMU (HPT, SLB): patching uses the vmalloc alias",
                    breakpoint_slots=dawr_slots)]


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    if config.mmu != "hash":
        return []
    return [hash__pte_update, switch_slb, hash__flush_tlb_kernel_range, hash__map_kernel_page,
            hash__tlb_flush]


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    if config.mmu != "hash":
        return []
    return [Invariant("HPTEs match Linux PTEs", _hptes_match, when="end",
                      doc="every HPTE maps a present Linux PTE marked H_PAGE_HASHPTE")]


#: The kernel lines of the chain, for the known finding's reference.
_LOCAL_ALIAS_FLUSH_LINES = (
    "linux-source-6.1 (6.1.192): code-patching.c:169 (__do_patch_instruction's"
    " pte_clear(&init_mm)); asm/book3s/64/hash.h:177; book3s64/hash_tlb.c:104;"
    " asm/tlb.h:58-63 (mm_is_thread_local); asm/book3s/64/tlbflush-hash.h:113-116 (empty"
    " flush_tlb_kernel_range); arch/powerpc/mm/mmu_context.c:49-51 (switch_mm_irqs_off sets the bit and"
    " active_cpus); kernel/sched/core.c:9235 (idle_task_exit); kernel/cpu.c:1032-1042"
    " (clear_tasks_mm_cpumask skips init_mm). Not observed on a real boot: it rests on"
    " another CPU speculatively loading the alias's translation, which the Power ISA permits"
)


@hookimpl
def fuzzer_known_findings(config: RunConfig) -> list[KnownFinding]:
    """A stale translation of the patching alias on Hash before 6.6 (v6.1, next-20221215, v6.2).

    init_mm's ``mm_cpumask`` and ``context.active_cpus`` are not kept at boot and hotplug
    there: a CPU that goes offline with a process mm lazily loaded sets its own bit
    (``idle_task_exit`` -> ``switch_mm_irqs_off``) and nothing clears it. If it is the only
    one, ``mm_is_thread_local(&init_mm)`` is true on that CPU from then on, so clearing its
    alias PTE (``pte_clear(&init_mm)`` -> ``hpte_need_flush``) invalidates the HPTE with
    ``tlbiel``; Hash's ``flush_tlb_kernel_range`` does nothing. A translation of the alias
    another CPU loaded speculatively from the HPTE while the patch ran survives there: a
    writable alias of kernel text left in another CPU's TLB. The Power ISA lets a CPU load
    such a translation unasked; no real boot has shown it. c3c2e9375348 ("powerpc: Account
    mm_cpumask and active_cpus in init_mm", v6.6) puts every online CPU in init_mm's mask,
    after which the flush is local only when no other CPU is online. The signature is the
    end-state check's, so at these versions on Hash any "patching mapping removed" is
    counted as this finding; ``--report-known`` reports it, with the chain in its detail.
    """
    if config.mmu != "hash":
        return []
    versions: dict[str, Any] = {"kernels": ("v6.1", "next-20221215", "v6.2")}
    return [KnownFinding(
        signature=Signature("END-STATE", "patching mapping removed", ""),
        **versions,
        title=("Hash: after one CPU's offline, its patches flush the alias HPTE with tlbiel only:"
               " mm_is_thread_local(&init_mm) (asm/tlb.h:58-63, from hpte_need_flush,"
               " hash_tlb.c:104) is true on it, init_mm's mm_cpumask holding that CPU alone"
               " (set by idle_task_exit -> switch_mm_irqs_off, mmu_context.c:49-51, never"
               " cleared); another CPU's speculatively loaded translation of the alias survives"),
        fix=("c3c2e9375348 (powerpc: Account mm_cpumask and active_cpus in init_mm, v6.6), or"
             " flush init_mm's HPTEs globally"),
        reference=_LOCAL_ALIAS_FLUSH_LINES,
    )]


def _hptes_match(m: Machine) -> str | None:
    mmu = m.mmu
    assert isinstance(mmu, HashMmu)
    by_id = m.mms
    for h in mmu.hptes():
        mm = by_id.get(h.vsid[0])
        va = h.vpn << mmu.shift
        pte = mm.lookup(va) if mm is not None and not mm.freed else None
        if pte is None or pte.pfn != h.pfn:
            name = mm.name if mm is not None else f"context {h.vsid[0]}"
            return f"a stale HPTE still maps {va:#x} of {name} to pfn {h.pfn:#x}"
    return None


def mm_is_thread_local(cpu: Cpu, mm: MM) -> bool:
    """``mm_is_thread_local()`` (asm/tlb.h:58-63, v6.1-v6.12), as ``hpte_need_flush`` asks it
    (hash_tlb.c:104) -- for init_mm too: false once ``context.active_cpus`` exceeds one,
    else whether this CPU is in ``mm_cpumask(mm)``. The model counts the mask for
    ``active_cpus``: ``switch_mm_irqs_off`` (mmu_context.c:49-51) and
    ``arch_clear_mm_cpumask_cpu`` (book3s/64/mmu.h) change both together. (One case
    differs: in 6.12, after the :51 race re-set a dead CPU's bit, its next
    ``start_secondary`` increments ``active_cpus`` again (smp.c:1636) without a new bit,
    so the kernel's count stays one above the mask's; that only makes the kernel's flush
    global where the model's is local with no other CPU online to hold a translation.)

    init_mm's mask: before c3c2e9375348 ("powerpc: Account mm_cpumask and active_cpus in
    init_mm", merged for v6.6) -- v6.1, next-20221215, v6.2 -- it is empty at boot and
    only ``switch_mm_irqs_off`` sets a bit, on Hash only from ``idle_task_exit``
    (kernel/sched/core.c:9235 in 6.1) when a CPU goes offline with a process mm lazily
    loaded; nothing clears it (``cleanup_cpu_mmu_context`` -> ``clear_tasks_mm_cpumask``
    walks process mms only, kernel/cpu.c:1032-1042 in 6.1). Once exactly one CPU has gone
    so, that CPU's own flushes of init_mm are local, after it comes back online too. In
    6.12 the mask holds every online CPU (setup-common.c:986, smp.c:1635, cleared at
    :1791), so a flush is local only while this CPU is the only one online."""
    return len(mm.cpumask) <= 1 and cpu.n in mm.cpumask


#: ``m.state`` key: patching address -> why its last flush was local (shown with a stale
#: translation by the "patching mapping removed" end-state check).
FLUSH_NOTES = "flush_notes"


def _local_init_mm_flush_note(cpu: Cpu) -> str:
    """Why ``hpte_need_flush`` flushed an init_mm PTE with tlbiel on ``cpu``: the kernel lines
    of the decision and of the mask state it read."""
    m = cpu.m
    v612 = m.version.is_("v6.12")
    if v612:
        who = ("setup_arch and start_secondary set each online CPU's bit (setup-common.c:986,"
               " smp.c:1635), __cpu_die clears it (smp.c:1791): this CPU is the only one online")
    else:
        who = ("set by switch_mm_irqs_off (arch/powerpc/mm/mmu_context.c:49-51) from this CPU's"
               " idle_task_exit (kernel/sched/core.c:9235 in 6.1) when it went offline with a"
               " process mm lazily loaded, and never cleared (before c3c2e9375348, v6.6)")
    mask = ",".join(str(n) for n in sorted(m.init_mm.cpumask))
    return (f"CPU {cpu.n} flushed its HPTE with tlbiel only: pte_clear(&init_mm) ->"
            f" hash__pte_update ({HASH_H}:{217 if v612 else 177}) -> hpte_need_flush ({HASH_TLB_C}:104) ->"
            f" flush_hash_page(..., local=mm_is_thread_local(&init_mm)) (asm/tlb.h:58-63), true"
            f" with init_mm's active_cpus 1 and mm_cpumask {{{mask}}}, {who}")


@routine("pte_update", HASH_H, symbol="hash__pte_update", inlined=True)
def hash__pte_update(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr, *, clear_all: bool,
                     new: Pte | None = None, huge: bool = False) -> Gen:
    """``hash__pte_update()`` (asm/book3s/64/hash.h:150 v6.1).

    The atomic update (spinning while H_PAGE_BUSY), then for a non-huge PTE
    ``assert_pte_locked(mm, addr)``, then, if the old PTE had an HPTE
    (H_PAGE_HASHPTE), ``hpte_need_flush`` -> ``flush_hash_page``: local when
    ``mm_is_thread_local(mm)``, global otherwise -- for init_mm too (hash.h:176-177 ->
    hash_tlb.c:104 in 6.1), as the kernel does: before 6.6, once one CPU alone went
    offline, its later patches flush the alias locally (the known finding below).
    """
    yield  # ldarx/stdcx. loop
    old = ptr.set(None if clear_all else new)
    if not huge:
        yield from cpu.k.assert_pte_locked(cpu, mm, addr)
    if old is not None and old.prot & Prot.HASHPTE:
        yield  # hpte_need_flush
        mmu = cpu.m.mmu
        assert isinstance(mmu, HashMmu)
        local = mm_is_thread_local(cpu, mm)
        if mm.is_init:
            notes = cpu.m.state.setdefault(FLUSH_NOTES, {})
            if local:
                notes[addr] = _local_init_mm_flush_note(cpu)
            else:
                notes.pop(addr, None)
        mmu.flush_hash_page(cpu, mm, addr, local)
    return old


@routine("switch_mmu_context", SLB_C, symbol="switch_slb")
def switch_slb(cpu: Cpu, prev: MM | None, next_mm: MM) -> Gen:
    """``switch_mmu_context()`` on Hash -> ``switch_slb()`` (book3s64/slb.c, v6.1-v6.2).

    Flush the user SLB entries and load the new context (``copy_mm_to_paca``).
    """
    yield
    cpu.m.mmu.switch_context(cpu, next_mm)
    cpu.loaded_mm = next_mm  # copy_mm_to_paca: this CPU now translates through next


@routine("flush_tlb_kernel_range", TLBFLUSH_H, symbol="flush_tlb_kernel_range")
def hash__flush_tlb_kernel_range(cpu: Cpu, start: int, end: int) -> Gen:
    """``flush_tlb_kernel_range()`` (asm/book3s/64/tlbflush.h): nothing on Hash.

    Only Radix flushes here; on Hash ``pte_clear`` already flushed the HPTE.
    """
    yield from ()


@routine("map_kernel_page", HASH_PGTABLE_C, symbol="hash__map_kernel_page")
def hash__map_kernel_page(cpu: Cpu, ea: int, pfn: int, prot: Any) -> Gen:
    """``hash__map_kernel_page()`` (book3s64/hash_pgtable.c, v6.1-v6.2), slab available.

    Allocate the missing init_mm levels, ``set_pte_at(&init_mm, ...)``,
    ``smp_wmb()``; the HPTE is inserted by the first fault.
    """
    mm = cpu.m.init_mm
    ptr = yield from pte_alloc(cpu, mm, ea)
    if ptr is None:
        return -ENOMEM  # a table allocation failed (fault injection)
    yield from cpu.k.set_pte_at(cpu, mm, ea, ptr, Pte(pfn, prot))
    return 0


@routine("tlb_flush", TLBFLUSH_H, symbol="hash__tlb_flush")
def hash__tlb_flush(cpu: Cpu, tlb: Any) -> Gen:
    """``hash__tlb_flush()`` (book3s64/hash_tlb.c): flush this CPU's pending HPTE batch.

    Hash PTEs are invalidated as they are cleared (``pte_update`` here), and
    freed tables need no invalidation (``tlb_needs_table_invalidate()`` is false
    on Hash): nothing is left to do in the model.
    """
    yield from ()
