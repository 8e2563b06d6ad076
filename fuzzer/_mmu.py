"""The hardware interface an MMU plugin implements; the kernel model calls only this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fuzzer._mm import Geometry, Prot, Pte, PtePtr
from fuzzer._specs import BOOK3S64

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine, Task
    from fuzzer._mm import MM

#: The book3s64 address layout's landmarks, for plugins that place kernel text at fixed
#: powerpc addresses (the machine itself reads ``MmuSpec.layout``).
PAGE_OFFSET = BOOK3S64.page_offset
VMALLOC_START = BOOK3S64.vmalloc_start
VMALLOC_END = BOOK3S64.vmalloc_end
KERNEL_TEXT_END = BOOK3S64.kernel_text_end


class Mmu:
    """Base class of an MMU model: translation, page-table geometry, TLBs, barriers.

    One instance per machine, built by ``MmuSpec.factory(machine)``. The kernel
    model (code patching, mm code) calls these methods and never looks inside.
    Subclasses keep their per-CPU hardware state in ``cpu.hw``.
    """

    name = "mmu"
    radix = False

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    # -- page tables ---------------------------------------------------------

    def geometry(self, page_shift: int) -> Geometry:
        raise NotImplementedError

    def pte_stored(self, cpu: Cpu, ptr: PtePtr, old: Pte | None, new: Pte | None) -> None:
        """The kernel stored a PTE (``__set_pte_at``, ``pte_update``). Default: nothing."""

    # -- barriers and context ------------------------------------------------

    def ptesync(self, cpu: Cpu) -> None:
        """``ptesync``: order prior PTE stores before later translations and tlbie."""

    def isync(self, cpu: Cpu) -> None:
        """``isync``: context synchronisation."""

    def sync(self, cpu: Cpu) -> None:
        """``sync`` (hwsync)."""
        self.ptesync(cpu)

    def switch_context(self, cpu: Cpu, mm: MM) -> None:
        """Load ``mm``'s translation context on ``cpu`` (radix: mtspr PID)."""
        raise NotImplementedError

    def context_switch(self, cpu: Cpu, task: Task) -> None:
        """The scheduler switched ``cpu`` to ``task`` (``context_switch()`` in kernel/sched/core.c).

        Called outside any modelled routine when an operation's task starts
        and when the CPU goes back to its idle task. A process gets its own mm
        (the CPU joins its ``mm_cpumask``); a kernel thread or the idle task
        borrows the mm already loaded, lazy TLB (``enter_lazy_tlb``, a no-op on
        powerpc; ``next->active_mm = prev->active_mm``, core.c:5329-5336 in
        v6.12): it stays loaded and the CPU stays in its cpumask. An MMU whose
        kernel does otherwise overrides this, setting ``task.active_mm``.
        """
        if task.mm is None:
            task.active_mm = cpu.loaded_mm if cpu.loaded_mm is not None else self.machine.init_mm
            return
        task.active_mm = task.mm
        task.mm.cpumask.add(cpu.n)
        cpu.loaded_mm = task.mm
        self.switch_context(cpu, task.mm)

    # -- translation ---------------------------------------------------------

    def translate_user(self, cpu: Cpu, va: int, write: bool) -> int | None:
        """Physical address for a user-region ``va`` in the loaded context, or None (fault)."""
        raise NotImplementedError

    def translate_vmalloc(self, cpu: Cpu, va: int, write: bool) -> int | None:
        """Physical address for a vmalloc-region ``va`` (init_mm tables), or None."""
        raise NotImplementedError

    def speculative_fill(self, cpu: Cpu, mm: MM, va: int) -> None:
        """The hardware loads a translation of ``va`` in ``mm`` into ``cpu``'s TLB
        unasked (a speculative or prefetching walk), as POWER may at any time for any
        address mapped in a context live on the CPU: ``mm`` is the mm ``cpu`` has
        loaded, or init_mm for a kernel address, and ``va`` is mapped there.

        Chosen by the search as a step of its own (``fill``). The default does
        nothing and the search never offers the step: an MMU that does not model
        speculation keeps working as before. An MMU that overrides it loads the
        entry only where its hardware could (Radix: from the PTE the table walk
        sees; Hash: from an HPTE already in the hashed page table).
        """

    # -- invalidation ----------------------------------------------------------
    # The flushes themselves are the MMU plugin's routines (flush_tlb_kernel_range,
    # local_flush_tlb_page_psize), built on its own instructions (tlbie, tlbiel).

    def cpu_offline(self, cpu: Cpu) -> None:
        """The CPU went offline: its translation caches are gone."""
        cpu.tlb.clear()

    def translations_of(self, cpu: Cpu, mm: MM, va: int) -> bool:
        """Whether ``cpu``'s TLB holds a translation of ``va`` in ``mm``: by default, whether
        it holds :meth:`tlb_key`'s key (an MMU whose TLB is not keyed so overrides this)."""
        key = self.tlb_key(mm, va)
        if key is None:
            raise NotImplementedError
        return key in cpu.tlb

    def tlb_key(self, mm: MM, va: int) -> Any:
        """The key under which any CPU's TLB (``cpu.tlb``) holds a translation of ``va`` in
        ``mm``, or None (the default) when the key depends on the CPU. An MMU that gives one
        and keeps :meth:`translations_of` lets a check of every CPU's TLB at every step
        compute it once for all CPUs (``patching mapping private``)."""
        return None


def check_access(pte: Pte, write: bool) -> bool:
    """Whether a kernel-mode access is allowed by ``pte``'s permissions."""
    if not pte.prot & Prot.PRESENT:
        return False
    return not (write and not pte.prot & Prot.WRITE)
