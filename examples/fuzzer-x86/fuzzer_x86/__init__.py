"""x86-64 for the kernel-logic fuzzer, written against its public API only.

Models 4-level paging with CR3 and PCID (per-CPU TLBs tagged by ASID, the
``cpu_tlbstate.ctxs`` generation check), lazy TLB for kernel threads,
``switch_mm_irqs_off``, ``leave_mm``, ``flush_tlb_mm_range`` with its IPIs and its
ranged ``INVLPG`` flushes (``flush_tlb_func``), the
temporary-mm ``text_poke`` of arch/x86/kernel/alternative.c (``poking_init``,
``use_temporary_mm``/``unuse_temporary_mm``, ``__text_poke`` with the PTE lock
held throughout, hardware breakpoints disabled and restored), and perf NMIs
that read user memory only when ``nmi_uaccess_okay()``.

Four kernel versions (``--mmu x86 --kernel ...``), each following one commit:

- ``x86-v5.9``: the temporary mm since cefa929c034e (v5.2), before abee7c494d8c.
  ``use_temporary_mm`` saves ``cpu_tlbstate.loaded_mm`` without leaving lazy
  TLB mode, so a kernel thread poking text restores the mm it borrowed as if
  it were its own: not lazy any more, with a stale address space loaded.
- ``x86-v6.12``: with abee7c494d8c ("x86/alternative: Don't call text_poke()
  in lazy TLB mode", v5.10-rc2): ``leave_mm()`` first. Checked against
  linux-source-6.12's alternative.c and tlb.c (line numbers are 6.12's).
- ``x86-d6c1b74d0d5e``: the 2024 lazy ``mm_cpumask`` change as first applied
  to tip x86/mm (d6c1b74d0d5e, 2024-11-13): ``switch_mm_irqs_off`` no longer
  clears the CPU from the previous mm's mask, but ``unuse_temporary_mm`` was
  not taught to clear it from ``poking_mm``. Once two CPUs have poked, the
  ``flush_tlb_mm_range(poking_mm)`` in ``__text_poke`` -- IRQs off -- sends
  IPIs: ``smp_call_function_many_cond``'s ``lockdep_assert_irqs_enabled()``
  (kernel/smp.c:807 in 6.12) fires.
- ``x86-209954cbc7d0``: the current logic. 209954cbc7d0 (tip x86/mm
  2024-11-19) replaced d6c1b74d0d5e with the same tlb.c change plus
  ``cpumask_clear_cpu(smp_processor_id(), mm_cpumask(poking_mm))`` in
  ``unuse_temporary_mm``; later renames (``text_poke_mm``,
  ``unuse_temporary_mm(mm, prev)``) keep the logic.

Simplifications: kernel text lives in the emulator's linear map (x86's
``__START_KERNEL_map`` is not modelled); a poke writes one aligned 32-bit word
(never crossing a page); an IPI's handler runs synchronously on its target;
``switch_mm_irqs_off`` is atomic (no ``LOADED_MM_SWITCHING`` window).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

import fuzzer
from fuzzer import (
    MM,
    PAGE_KERNEL,
    PAGE_OFFSET,
    Boolean,
    Geometry,
    InterruptSource,
    IntRange,
    Invariant,
    KernelBug,
    KernelVersion,
    Mmu,
    MmuSpec,
    Operation,
    Prot,
    Pte,
    PtePtr,
    RunConfig,
    check_access,
    hookimpl,
    routine,
)

if TYPE_CHECKING:
    from fuzzer import Cpu, Machine, Task

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "x86"

Gen = Generator[Any, None, Any]
ALTERNATIVE_C = "arch/x86/kernel/alternative.c"
TLB_C = "arch/x86/mm/tlb.c"
INIT_C = "arch/x86/mm/init.c"
SMP_C = "kernel/smp.c"
PGTABLE_H = "arch/x86/include/asm/pgtable.h"
HW_BREAKPOINT_C = "arch/x86/kernel/hw_breakpoint.c"
EVENTS_CORE_C = "arch/x86/events/core.c"
APIC_C = "arch/x86/kernel/apic/apic.c"

V59, V612, D6C1, CURRENT = "x86-v5.9", "x86-v6.12", "x86-d6c1b74d0d5e", "x86-209954cbc7d0"
X86_VERSIONS = (V59, V612, D6C1, CURRENT)
#: Versions whose use_temporary_mm leaves lazy TLB mode first (abee7c494d8c).
LEAVES_LAZY = (V612, D6C1, CURRENT)
#: Versions whose switch_mm_irqs_off leaves the CPU in prev's mm_cpumask (lazy mm_cpumask).
LAZY_CPUMASK = (D6C1, CURRENT)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SIZE = 1 << 21
#: TASK_SIZE_MAX with 4-level paging, and TASK_UNMAPPED_BASE = PAGE_ALIGN(TASK_SIZE / 3).
TASK_SIZE = (1 << 47) - PAGE_SIZE
TASK_UNMAPPED_BASE = (TASK_SIZE // 3 + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
#: TLB_NR_DYN_ASIDS (arch/x86/include/asm/tlbflush.h).
NR_DYN_ASIDS = 6
#: Patchable sites in kernel text, one per page so a poke maps a different page each time.
TEXT = PAGE_OFFSET + 0x0100_0000
SITES = tuple(TEXT + i * PAGE_SIZE + 0x40 for i in range(4))
NOP4 = 0x0040_1F0F  # nopl 0x0(%rax), little-endian bytes 0f 1f 40 00
JMP = 0x0000_7EEB  # jmp +0x7e; nop; nop
DR7_ENABLE_MASK = 0xFF  # DR_GLOBAL_ENABLE_MASK | DR_LOCAL_ENABLE_MASK
#: ``TLB_FLUSH_ALL`` as a flush's end, and ``tlb_single_page_flush_ceiling`` (tlb.c:998 in 6.12):
#: a range of more pages than this is flushed whole.
TLB_FLUSH_ALL = -1
FLUSH_CEILING = 33


@attrs.define
class X86Cpu:
    """Per-CPU x86 state: CR3, ``cpu_tlbstate`` (ASID slots, lazy flag) and DR7."""

    cr3: MM | None = None
    """The mm whose PGD CR3 points at."""
    asid: int = 0
    """``cpu_tlbstate.loaded_mm_asid``: the PCID in CR3."""
    ctxs: list[tuple[int, int]] = attrs.Factory(lambda: [(-1, 0)] * NR_DYN_ASIDS)
    """``cpu_tlbstate.ctxs[]``: (ctx_id, tlb_gen) each ASID slot last held."""
    next_asid: int = 1
    is_lazy: bool = False
    """``cpu_tlbstate_shared.is_lazy``."""
    dr7: int = 0
    """The DR7 register as loaded."""


@attrs.define(eq=False)
class X86State:
    """Globals of the x86 model: ``poking_mm``, ``poking_addr``."""

    poking_mm: MM | None = None
    poking_addr: int = 0


@attrs.frozen
class FlushInfo:
    """``struct flush_tlb_info``: what a TLB flush asks every CPU it reaches to do."""

    mm: MM
    start: int
    end: int
    """``TLB_FLUSH_ALL`` for a full flush."""
    new_tlb_gen: int
    initiating_cpu: int


def state(m: Machine) -> X86State:
    st_: X86State = m.state["x86"]
    return st_


class X86Mmu(Mmu):
    """x86-64 paging: 4 levels of 9 bits over 4K pages, CR3 with a PCID, a TLB per CPU."""

    name = "x86"
    radix = False

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.tlb_gen: dict[int, int] = {}
        """``mm->context.tlb_gen`` by context id."""
        for cpu in machine.cpus:
            cpu.hw = X86Cpu()

    def geometry(self, page_shift: int) -> Geometry:
        return Geometry(PAGE_SHIFT, (9, 9, 9, 9))

    def gen(self, mm: MM) -> int:
        return self.tlb_gen.get(mm.context_id, 1)

    def switch_context(self, cpu: Cpu, mm: MM) -> None:
        # Outside any routine (boot, CPU bring-up): what switch_mm_irqs_off leaves behind.
        load_mm(cpu, mm, lazy_cpumask=cpu.m.version.is_(*LAZY_CPUMASK))

    def context_switch(self, cpu: Cpu, task: Task) -> None:
        """``context_switch()``: a process gets its mm (``switch_mm_irqs_off``); a kernel
        thread or the idle task borrows what is loaded (``enter_lazy_tlb``, tlb.c:676)."""
        if task.mm is None:
            task.active_mm = cpu.loaded_mm
            if cpu.loaded_mm is not None and not cpu.loaded_mm.is_init:
                cpu.hw.is_lazy = True
            return
        task.active_mm = task.mm
        self.switch_context(cpu, task.mm)

    def _walk(self, cpu: Cpu, mm: MM | None, key: tuple[int, int], va: int, write: bool) -> int | None:
        pte = cpu.tlb.get(key)
        if pte is None:
            if mm is None:
                return None
            pte = mm.lookup(va)
            if pte is None:
                return None
            cpu.tlb[key] = pte
        if not check_access(pte, write):
            return None
        return (pte.pfn << PAGE_SHIFT) | (va & (PAGE_SIZE - 1))

    def translate_user(self, cpu: Cpu, va: int, write: bool) -> int | None:
        return self._walk(cpu, cpu.hw.cr3, (cpu.hw.asid, va >> PAGE_SHIFT), va, write)

    def translate_vmalloc(self, cpu: Cpu, va: int, write: bool) -> int | None:
        # Kernel mappings are global (_PAGE_GLOBAL): one TLB tag for every PCID.
        return self._walk(cpu, self.machine.init_mm, (-1, va >> PAGE_SHIFT), va, write)

    def cpu_offline(self, cpu: Cpu) -> None:
        # A dead CPU loses its TLB and registers; perf_event_exit_cpu removed its events.
        cpu.tlb.clear()
        cpu.hw = X86Cpu()
        cpu.state["cpu_dr7"] = 0

    def translations_of(self, cpu: Cpu, mm: MM, va: int) -> bool:
        for asid, (ctx, _) in enumerate(cpu.hw.ctxs):
            if ctx == mm.context_id and (asid, va >> PAGE_SHIFT) in cpu.tlb:
                return True
        return False

    def flush_asid(self, cpu: Cpu, asid: int) -> None:
        for key in [k for k in cpu.tlb if k[0] == asid]:
            del cpu.tlb[key]

    def invlpg(self, cpu: Cpu, va: int) -> None:
        """``INVLPG``: this CPU's translations of ``va`` in the current PCID, and global ones."""
        vpn = va >> PAGE_SHIFT
        cpu.tlb.pop((cpu.hw.asid, vpn), None)
        cpu.tlb.pop((-1, vpn), None)


def load_mm(cpu: Cpu, next_mm: MM, *, lazy_cpumask: bool) -> None:
    """The state change of ``switch_mm_irqs_off()`` (tlb.c:499 in 6.12), atomically.

    Clear ``is_lazy``; unless prev == next: before the lazy-cpumask change
    take the CPU out of ``mm_cpumask(prev)`` (never for init_mm), put it in
    ``mm_cpumask(next)``, pick an ASID (``choose_new_asid``: the slot that held
    ``next`` is reused unless its tlb_gen is behind, which flushes it; else
    the next slot round-robin, flushed), load CR3 and ``loaded_mm``.
    """
    mmu = cpu.m.mmu
    assert isinstance(mmu, X86Mmu)
    hw: X86Cpu = cpu.hw
    prev = cpu.loaded_mm
    hw.is_lazy = False
    if prev is next_mm:
        return
    if not lazy_cpumask and prev is not None and not prev.is_init:
        prev.cpumask.discard(cpu.n)
    if not next_mm.is_init:
        next_mm.cpumask.add(cpu.n)
    gen = mmu.gen(next_mm)
    for asid, (ctx, slot_gen) in enumerate(hw.ctxs):
        if ctx == next_mm.context_id:
            if slot_gen < gen:
                mmu.flush_asid(cpu, asid)
            break
    else:
        asid = hw.next_asid
        hw.next_asid = (hw.next_asid + 1) % NR_DYN_ASIDS
        mmu.flush_asid(cpu, asid)
    hw.ctxs[asid] = (next_mm.context_id, gen)
    hw.asid = asid
    hw.cr3 = next_mm
    cpu.loaded_mm = next_mm


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


@hookimpl
def fuzzer_kernel_versions() -> list[KernelVersion]:
    return [
        KernelVersion(V59, 5090, "cefa929c034e (v5.2) temporary-mm text_poke, before abee7c494d8c:"
                      " use_temporary_mm keeps lazy TLB mode", arch="x86"),
        KernelVersion(V612, 6121, "linux-source-6.12: abee7c494d8c (v5.10) leave_mm() before"
                      " use_temporary_mm", arch="x86"),
        KernelVersion(D6C1, 6130, "tip x86/mm d6c1b74d0d5e (2024-11-13): lazy mm_cpumask, poking_mm's"
                      " mask never cleared (replaced by 209954cbc7d0)", arch="x86"),
        KernelVersion(CURRENT, 6140, "tip x86/mm 209954cbc7d0 (2024-11-19): lazy mm_cpumask,"
                      " unuse_temporary_mm clears poking_mm's mask -- the current logic", arch="x86"),
    ]


@hookimpl
def fuzzer_mmus() -> list[MmuSpec]:
    return [MmuSpec("x86", X86Mmu, "x86-64 4-level paging, CR3 with PCID, lazy TLB", arch="x86")]


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    machine.attach("x86", X86State())
    for site in SITES:
        machine.write_text(site, [NOP4])


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [
        poking_init, text_poke, __text_poke, use_temporary_mm_v59, use_temporary_mm,
        unuse_temporary_mm, unuse_temporary_mm_current, switch_mm_irqs_off, switch_mm_irqs_off_lazy,
        leave_mm, set_pte_at, pte_clear, flush_tlb_mm_range, flush_tlb_multi,
        smp_call_function_many_cond, flush_tlb_func, hw_breakpoint_disable, hw_breakpoint_restore,
        arch_install_hw_breakpoint, perf_callchain_user, apic_timer_interrupt,
    ]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    poke = {"site": IntRange(0, len(SITES) - 1), "jump": Boolean()}
    return [
        Operation("x86.syscall", op_syscall, doc="a process enters the kernel and leaves; the CPU's"
                  " idle task then borrows its mm lazily", comm="sh"),
        Operation("x86.text_poke", op_text_poke, poke, doc="text_poke from a process (a BPF or"
                  " kprobe syscall) under text_mutex", comm="bpftool"),
        Operation("x86.kworker_text_poke", op_text_poke, poke, kthread=True, doc="text_poke from a"
                  " kernel thread (a static key flipped from a workqueue): lazy TLB", comm="kworker/u8:1"),
        Operation("x86.perf_watchpoint", op_watchpoint, {"enable": Boolean()},
                  doc="install or remove a per-CPU perf hardware watchpoint (DR0/DR7)", comm="perf"),
    ]


@hookimpl
def fuzzer_interrupt_sources(config: RunConfig) -> list[InterruptSource]:
    return [
        InterruptSource("apic_timer", apic_timer_interrupt, doc="local APIC timer"),
        InterruptSource("perf_nmi", perf_nmi, nmi=True,
                        doc="a perf NMI that walks the interrupted task's user stack"),
    ]


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [
        Invariant("lazy TLB", _lazy_tlb, doc="a kernel thread running on a borrowed user mm is in"
                  " lazy TLB mode (what abee7c494d8c restores)"),
        Invariant("poking mm private", _poking_private, doc="poking_mm is loaded on at most one"
                  " CPU, with IRQs off"),
        Invariant("breakpoints restored", _dr7_restored, when="end",
                  doc="every online CPU's DR7 is what cpu_dr7 says"),
        Invariant("poking PTE cleared", _poking_pte_cleared, when="end",
                  doc="nothing is left mapped at poking_addr"),
    ]


def _lazy_tlb(m: Machine) -> str | None:
    poking = state(m).poking_mm
    for cpu in m.cpus:
        mm = cpu.loaded_mm
        if mm is None or mm.is_init or mm is poking or not cpu.online:
            continue
        task = cpu.current
        if task.mm is None and not cpu.hw.is_lazy:
            return (f"CPU {cpu.n} runs kernel thread {task.comm} with {mm.name} loaded but is not in"
                    " lazy TLB mode: a stale address space it does not own")
    return None


def _poking_private(m: Machine) -> str | None:
    poking = state(m).poking_mm
    if poking is None:
        return None
    on = [c for c in m.cpus if c.loaded_mm is poking]
    if len(on) > 1:
        return f"poking_mm is loaded on CPUs {', '.join(str(c.n) for c in on)} at once"
    if on and on[0].irqs_enabled:
        return f"CPU {on[0].n} has poking_mm loaded with IRQs on"
    return None


def _dr7_restored(m: Machine) -> str | None:
    for cpu in m.cpus:
        want = cpu.state.get("cpu_dr7", 0)
        if cpu.online and cpu.hw.dr7 != want:
            return f"CPU {cpu.n} finished with DR7={cpu.hw.dr7:#x}, cpu_dr7={want:#x}"
    return None


def _poking_pte_cleared(m: Machine) -> str | None:
    st_ = state(m)
    if st_.poking_mm is not None and st_.poking_mm.lookup(st_.poking_addr) is not None:
        return f"poking_mm still maps {st_.poking_addr:#x}"
    return None


# ---------------------------------------------------------------------------
# Operations and interrupts
# ---------------------------------------------------------------------------


def op_syscall(cpu: Cpu) -> Gen:
    yield
    yield


def op_text_poke(cpu: Cpu, site: int, jump: bool) -> Gen:
    lock = cpu.m.state["text_mutex"]
    yield from fuzzer.mutex_lock(cpu, lock)
    yield from cpu.k.text_poke(cpu, SITES[site], JMP if jump else NOP4)
    yield from fuzzer.mutex_unlock(cpu, lock)


def op_watchpoint(cpu: Cpu, enable: bool) -> Gen:
    yield from cpu.k.arch_install_hw_breakpoint(cpu, enable)


@routine("sysvec_apic_timer_interrupt", APIC_C)
def apic_timer_interrupt(cpu: Cpu) -> Gen:
    """``sysvec_apic_timer_interrupt()`` (apic.c): takes the CPU for a step, touches no mm."""
    yield


def perf_nmi(cpu: Cpu) -> Gen:
    yield from cpu.k.perf_callchain_user(cpu)


@routine("perf_callchain_user", EVENTS_CORE_C, versions=X86_VERSIONS)
def perf_callchain_user(cpu: Cpu) -> Gen:
    """``perf_callchain_user()`` (arch/x86/events/core.c, v5.9-v6.12).

    Returns unless ``nmi_uaccess_okay()`` (tlb.c:1327 in 6.12): the loaded
    mm must be ``current->mm``, else a user address would be read through
    whatever is loaded (poking_mm maps kernel text there). Then reads the
    first frame at the user stack pointer (``copy_from_user_nmi``).
    """
    task = cpu.current
    yield
    if cpu.loaded_mm is not task.mm:
        return
    if task.user_sp:
        cpu.m.copy_from_user(cpu, task.user_sp)


@routine("arch_install_hw_breakpoint", HW_BREAKPOINT_C, versions=X86_VERSIONS)
def arch_install_hw_breakpoint(cpu: Cpu, enable: bool) -> Gen:
    """``arch_install_hw_breakpoint()``/``arch_uninstall_hw_breakpoint()`` (hw_breakpoint.c).

    With IRQs off (perf's context), set or clear slot 0's enable bits in the
    per-CPU ``cpu_dr7`` and write DR7.
    """
    flags = cpu.local_irq_save()
    yield
    dr7 = (cpu.state.get("cpu_dr7", 0) | 0x2) if enable else (cpu.state.get("cpu_dr7", 0) & ~0x3)
    cpu.state["cpu_dr7"] = dr7
    cpu.hw.dr7 = dr7
    cpu.local_irq_restore(flags)
    yield


@routine("hw_breakpoint_disable", HW_BREAKPOINT_C, versions=X86_VERSIONS, inlined=True)
def hw_breakpoint_disable(cpu: Cpu) -> Gen:
    """``hw_breakpoint_disable()`` (asm/debugreg.h): zero DR7 (then DR0-DR3)."""
    yield
    cpu.hw.dr7 = 0


@routine("hw_breakpoint_restore", HW_BREAKPOINT_C, versions=X86_VERSIONS)
def hw_breakpoint_restore(cpu: Cpu) -> Gen:
    """``hw_breakpoint_restore()`` (hw_breakpoint.c): reload DR0-3, then DR7 from ``cpu_dr7``."""
    yield
    cpu.hw.dr7 = cpu.state.get("cpu_dr7", 0)


def hw_breakpoint_active(cpu: Cpu) -> bool:
    """``hw_breakpoint_active()`` (asm/debugreg.h): ``cpu_dr7 & DR_GLOBAL_ENABLE_MASK``."""
    return bool(cpu.state.get("cpu_dr7", 0) & DR7_ENABLE_MASK)


# ---------------------------------------------------------------------------
# poking_init and text_poke (arch/x86/mm/init.c, arch/x86/kernel/alternative.c)
# ---------------------------------------------------------------------------


@routine("poking_init", INIT_C, versions=X86_VERSIONS)
def poking_init(cpu: Cpu) -> Gen:
    """``poking_init()`` (arch/x86/mm/init.c:822 in 6.12; since 4fc19708b165, v5.2).

    ``poking_mm = mm_alloc()`` (BUG_ON failure); ``poking_addr`` =
    TASK_UNMAPPED_BASE plus, with RANDOMIZE_BASE, a page-aligned
    ``kaslr_get_random_long("Poking")`` modulo (TASK_SIZE -
    TASK_UNMAPPED_BASE - 3 pages), moved up a page when the next page would
    start a new PMD; then ``get_locked_pte`` / ``pte_unmap_unlock`` so the page
    tables exist before any atomic-context poke.
    """
    m = cpu.m
    st_ = state(m)
    mm = yield from cpu.k.mm_alloc(cpu, "poking_mm")
    addr = TASK_UNMAPPED_BASE
    addr += (m.get_random_long() & ~(PAGE_SIZE - 1)) % (TASK_SIZE - TASK_UNMAPPED_BASE - 3 * PAGE_SIZE)
    if (addr + PAGE_SIZE) & (PMD_SIZE - 1) == 0:
        addr += PAGE_SIZE
    st_.poking_mm, st_.poking_addr = mm, addr
    ptr, ptl = yield from cpu.k.__get_locked_pte(cpu, mm, addr)
    if ptr is None:
        raise KernelBug(f"{INIT_C}:852")
    yield from cpu.k.pte_unmap_unlock(cpu, ptr, ptl)


@routine("text_poke", ALTERNATIVE_C, versions=X86_VERSIONS)
def text_poke(cpu: Cpu, addr: int, opcode: int) -> Gen:
    """``text_poke()`` (alternative.c:2208 in 6.12): ``lockdep_assert_held(&text_mutex)``
    (a ``WARN_ON``, after which it goes on), then ``__text_poke(text_poke_memcpy, ...)``."""
    lock = cpu.m.state["text_mutex"]
    if lock.owner is not cpu.current:
        fuzzer.kernel.warn(cpu, f"{ALTERNATIVE_C}:2210", once=False,
                           detail="lockdep_assert_held(&text_mutex)")
    return (yield from cpu.k.__text_poke(cpu, addr, opcode))


@routine("__text_poke", ALTERNATIVE_C, versions=X86_VERSIONS)
def __text_poke(cpu: Cpu, addr: int, opcode: int) -> Gen:
    """``__text_poke()`` (alternative.c:2086 in 6.12; the same steps since v5.2).

    ``get_locked_pte(poking_mm, poking_addr)`` -- the PTE lock is held to the
    end; ``local_irq_save``; ``set_pte_at`` of the text page (PAGE_KERNEL
    without _PAGE_GLOBAL); ``use_temporary_mm(poking_mm)``; the memcpy through
    ``poking_addr``; ``pte_clear``; ``unuse_temporary_mm(prev)``;
    ``flush_tlb_mm_range(poking_mm, ...)`` still with IRQs off;
    ``BUG_ON(memcmp(addr, src, len))`` (:2184); ``local_irq_restore``;
    ``pte_unmap_unlock``.
    """
    m = cpu.m
    k = cpu.k
    st_ = state(m)
    mm, paddr = st_.poking_mm, st_.poking_addr
    assert mm is not None
    ptr, ptl = yield from k.__get_locked_pte(cpu, mm, paddr)
    flags = cpu.local_irq_save()
    yield
    pfn = (addr - PAGE_OFFSET) >> PAGE_SHIFT
    yield from k.set_pte_at(cpu, mm, paddr, ptr, Pte(pfn, PAGE_KERNEL & ~Prot.PRIVILEGED))
    prev = yield from k.use_temporary_mm(cpu, mm)
    yield  # text_poke_memcpy
    if cpu.hw.dr7 & DR7_ENABLE_MASK:
        raise fuzzer.InvariantViolation(
            "breakpoints disabled while poking",
            f"CPU {cpu.n} wrote through poking_addr with DR7={cpu.hw.dr7:#x}: a watchpoint can fire"
            " on the poking alias")
    if not m.store(cpu, paddr + (addr & (PAGE_SIZE - 1)), opcode):
        raise KernelBug(f"{ALTERNATIVE_C}:2151", detail=f"fault on the poking alias {paddr:#x}")
    yield from k.pte_clear(cpu, mm, paddr, ptr)
    yield from k.unuse_temporary_mm(cpu, prev)
    yield from k.flush_tlb_mm_range(cpu, mm, paddr, paddr + PAGE_SIZE)
    yield
    if m.mem.get(addr - PAGE_OFFSET) != opcode:
        raise KernelBug(f"{ALTERNATIVE_C}:2184", detail=f"text at {addr:#x} is not what was poked")
    cpu.local_irq_restore(flags)
    yield from k.pte_unmap_unlock(cpu, ptr, ptl)
    return addr


@routine("use_temporary_mm", ALTERNATIVE_C, versions=(V59,), inlined=True)
def use_temporary_mm_v59(cpu: Cpu, mm: MM) -> Gen:
    """``use_temporary_mm()`` (alternative.c, v5.2-v5.9, before abee7c494d8c).

    ``lockdep_assert_irqs_disabled()``; ``prev = cpu_tlbstate.loaded_mm`` --
    in lazy TLB mode that is the mm a kernel thread borrowed;
    ``switch_mm_irqs_off(NULL, mm, current)`` (which clears is_lazy);
    ``hw_breakpoint_disable()`` if ``hw_breakpoint_active()``.
    """
    fuzzer.lockdep_assert_irqs_disabled(cpu, f"{ALTERNATIVE_C}:806")
    prev = cpu.loaded_mm
    yield from cpu.k.switch_mm_irqs_off(cpu, mm)
    if hw_breakpoint_active(cpu):
        yield from cpu.k.hw_breakpoint_disable(cpu)
    return prev


@routine("use_temporary_mm", ALTERNATIVE_C, versions=LEAVES_LAZY, inlined=True)
def use_temporary_mm(cpu: Cpu, mm: MM) -> Gen:
    """``use_temporary_mm()`` (alternative.c:2022 in 6.12; abee7c494d8c on).

    As before, but first ``if (this_cpu_read(cpu_tlbstate_shared.is_lazy))
    leave_mm()``: a kernel thread's borrowed mm is dropped for init_mm, so
    init_mm is what ``unuse_temporary_mm`` restores.
    """
    fuzzer.lockdep_assert_irqs_disabled(cpu, f"{ALTERNATIVE_C}:2026")
    if cpu.hw.is_lazy:
        yield from cpu.k.leave_mm(cpu)
    prev = cpu.loaded_mm
    yield from cpu.k.switch_mm_irqs_off(cpu, mm)
    if hw_breakpoint_active(cpu):
        yield from cpu.k.hw_breakpoint_disable(cpu)
    return prev


@routine("unuse_temporary_mm", ALTERNATIVE_C, versions=(V59, V612, D6C1), inlined=True)
def unuse_temporary_mm(cpu: Cpu, prev: MM) -> Gen:
    """``unuse_temporary_mm()`` (alternative.c:2056 in 6.12; unchanged by d6c1b74d0d5e).

    ``lockdep_assert_irqs_disabled()``; ``switch_mm_irqs_off(NULL, prev,
    current)``; ``hw_breakpoint_restore()`` if ``hw_breakpoint_active()``.
    """
    fuzzer.lockdep_assert_irqs_disabled(cpu, f"{ALTERNATIVE_C}:2058")
    yield from cpu.k.switch_mm_irqs_off(cpu, prev)
    if hw_breakpoint_active(cpu):
        yield from cpu.k.hw_breakpoint_restore(cpu)


@routine("unuse_temporary_mm", ALTERNATIVE_C, versions=(CURRENT,), inlined=True)
def unuse_temporary_mm_current(cpu: Cpu, prev: MM) -> Gen:
    """``unuse_temporary_mm()`` as 209954cbc7d0 left it.

    After switching back, ``cpumask_clear_cpu(smp_processor_id(),
    mm_cpumask(poking_mm))``: no TLB flushing is needed anywhere, so the
    flush that follows stays local.
    """
    fuzzer.lockdep_assert_irqs_disabled(cpu, f"{ALTERNATIVE_C}:2058")
    yield from cpu.k.switch_mm_irqs_off(cpu, prev)
    yield
    poking = state(cpu.m).poking_mm
    assert poking is not None
    poking.cpumask.discard(cpu.n)
    if hw_breakpoint_active(cpu):
        yield from cpu.k.hw_breakpoint_restore(cpu)


# ---------------------------------------------------------------------------
# arch/x86/mm/tlb.c and kernel/smp.c
# ---------------------------------------------------------------------------


@routine("switch_mm_irqs_off", TLB_C, versions=(V59, V612))
def switch_mm_irqs_off(cpu: Cpu, next_mm: MM) -> Gen:
    """``switch_mm_irqs_off()`` (tlb.c:499 in 6.12): ``WARN_ON_ONCE`` unless IRQs are off
    (PROVE_LOCKING, :513) and on, then :func:`load_mm`, clearing the CPU from
    ``mm_cpumask(prev)`` ("Stop remote flushes for the previous mm")."""
    if cpu.irqs_enabled:
        fuzzer.kernel.warn(cpu, f"{TLB_C}:513", detail="switch_mm_irqs_off with IRQs on")
    yield
    load_mm(cpu, next_mm, lazy_cpumask=False)
    yield


@routine("switch_mm_irqs_off", TLB_C, versions=LAZY_CPUMASK)
def switch_mm_irqs_off_lazy(cpu: Cpu, next_mm: MM) -> Gen:
    """``switch_mm_irqs_off()`` after the lazy mm_cpumask change (d6c1b74d0d5e/209954cbc7d0):
    the CPU stays in ``mm_cpumask(prev)``, removed lazily by the next flush IPI.
    ``WARN_ON_ONCE`` unless IRQs are off (:513), and on."""
    if cpu.irqs_enabled:
        fuzzer.kernel.warn(cpu, f"{TLB_C}:513", detail="switch_mm_irqs_off with IRQs on")
    yield
    load_mm(cpu, next_mm, lazy_cpumask=True)
    yield


@routine("leave_mm", TLB_C, versions=LEAVES_LAZY)
def leave_mm(cpu: Cpu) -> Gen:
    """``leave_mm()`` (tlb.c:300 in 6.12): nothing on init_mm; ``WARN_ON(!is_lazy)`` (:316);
    ``switch_mm(NULL, &init_mm, NULL)`` -- after the WARN too."""
    if cpu.loaded_mm is None or cpu.loaded_mm.is_init:
        return
    if not cpu.hw.is_lazy:
        fuzzer.kernel.warn(cpu, f"{TLB_C}:316", once=False, detail="leave_mm while not lazy")
    yield from cpu.k.switch_mm_irqs_off(cpu, cpu.m.init_mm)


@routine("set_pte_at", PGTABLE_H, versions=X86_VERSIONS, inlined=True)
def set_pte_at(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr, pte: Pte) -> Gen:
    """``set_pte_at()`` -> ``native_set_pte()`` (asm/pgtable.h): one WRITE_ONCE, no lock assert."""
    yield
    ptr.set(pte)


@routine("pte_clear", PGTABLE_H, versions=X86_VERSIONS, inlined=True)
def pte_clear(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr) -> Gen:
    """``pte_clear()`` -> ``native_pte_clear()`` (asm/pgtable.h): store zero."""
    yield
    ptr.set(None)


@routine("flush_tlb_mm_range", TLB_C, versions=X86_VERSIONS)
def flush_tlb_mm_range(cpu: Cpu, mm: MM, start: int, end: int) -> Gen:
    """``flush_tlb_mm_range()`` (tlb.c:1043 in 6.12).

    A range of more than ``tlb_single_page_flush_ceiling`` pages becomes a full
    flush; ``inc_mm_tlb_gen(mm)``; if ``mm_cpumask(mm)`` holds another CPU,
    ``flush_tlb_multi()`` (IPIs); else if mm is loaded here,
    ``lockdep_assert_irqs_enabled()`` (:1075, a ``WARN_ON_ONCE``) and a local
    ``flush_tlb_func()`` between ``local_irq_disable()`` and ``local_irq_enable()``
    (:1076-1078): after the WARN, a caller that had IRQs off gets them on. An mm
    loaded nowhere is flushed by the generation bump alone: the next switch to it sees
    its ASID behind.
    """
    mmu = cpu.m.mmu
    assert isinstance(mmu, X86Mmu)
    yield
    if end == TLB_FLUSH_ALL or (end - start) >> PAGE_SHIFT > FLUSH_CEILING:
        start, end = 0, TLB_FLUSH_ALL
    mmu.tlb_gen[mm.context_id] = mmu.gen(mm) + 1
    info = FlushInfo(mm, start, end, mmu.gen(mm), cpu.n)
    if mm.cpumask - {cpu.n}:
        yield from cpu.k.flush_tlb_multi(cpu, info)
    elif cpu.loaded_mm is mm:
        if not cpu.irqs_enabled:
            fuzzer.kernel.warn(cpu, f"{TLB_C}:1075",
                               detail="lockdep_assert_irqs_enabled() before a local flush")
        cpu.local_irq_save()  # local_irq_disable()
        yield from cpu.k.flush_tlb_func(cpu, info)
        cpu.local_irq_restore(True)  # local_irq_enable()


@routine("flush_tlb_multi", TLB_C, versions=X86_VERSIONS, symbol="native_flush_tlb_multi")
def flush_tlb_multi(cpu: Cpu, info: FlushInfo) -> Gen:
    """``native_flush_tlb_multi()`` (tlb.c): ``on_each_cpu_cond_mask(should_flush_tlb,
    flush_tlb_func, info, true, cpumask)`` over ``mm_cpumask(mm)``."""
    yield from cpu.k.smp_call_function_many_cond(cpu, sorted(info.mm.cpumask), info)


@routine("smp_call_function_many_cond", SMP_C, versions=X86_VERSIONS)
def smp_call_function_many_cond(cpu: Cpu, targets: list[int], info: FlushInfo) -> Gen:
    """``smp_call_function_many_cond()`` (kernel/smp.c:785 in 6.12).

    ``if (cpu_online(this_cpu) && !oops_in_progress &&
    !early_boot_irqs_disabled) lockdep_assert_irqs_enabled();`` (:807): a
    CPU that waits for IPIs with IRQs off can deadlock against another doing
    the same (a ``WARN_ON_ONCE``, after which it goes on). Then the function runs on each
    target (``should_flush_tlb`` skips lazy CPUs), the remote ones by IPI -- synchronously
    in the model.
    """
    m = cpu.m
    early_boot_irqs_disabled = m.system_state == "SYSTEM_BOOTING"
    if cpu.online and not early_boot_irqs_disabled and not cpu.irqs_enabled:
        fuzzer.kernel.warn(cpu, f"{SMP_C}:807", detail="lockdep_assert_irqs_enabled(): IPIs sent"
                           f" with IRQs off, to CPUs {', '.join(str(t) for t in targets if t != cpu.n)}")
    yield
    for n in targets:
        target = m.cpus[n]
        if target.online and not target.hw.is_lazy:
            yield from cpu.k.flush_tlb_func(target, info)


@routine("flush_tlb_func", TLB_C, versions=X86_VERSIONS)
def flush_tlb_func(cpu: Cpu, info: FlushInfo) -> Gen:
    """``flush_tlb_func()`` (tlb.c:742 in 6.12), on the CPU it runs on.

    A remote CPU that no longer runs the mm ignores the flush (and, with the
    lazy mm_cpumask, leaves the mask); a lazy one switches to init_mm. Else,
    unless this ASID's generation already caught up: a partial flush -- one
    ``flush_tlb_one_user()`` (``INVLPG``) per page of the range -- when the
    flush is ranged and is exactly the next generation and the newest
    (:860-878), otherwise a full flush of the ASID; then the ASID's slot is
    brought to the mm's tlb_gen.
    """
    mmu = cpu.m.mmu
    assert isinstance(mmu, X86Mmu)
    mm = info.mm
    local = cpu.n == info.initiating_cpu
    yield
    if cpu.loaded_mm is not mm:
        if not local and cpu.m.version.is_(*LAZY_CPUMASK):
            mm.cpumask.discard(cpu.n)
        return
    if cpu.hw.is_lazy:
        load_mm(cpu, cpu.m.init_mm, lazy_cpumask=cpu.m.version.is_(*LAZY_CPUMASK))
        return
    hw: X86Cpu = cpu.hw
    local_tlb_gen = hw.ctxs[hw.asid][1]
    if info.new_tlb_gen <= local_tlb_gen:
        return  # already up to date for this flush
    mm_tlb_gen = mmu.gen(mm)
    if local_tlb_gen == mm_tlb_gen:
        return
    if info.end != TLB_FLUSH_ALL and info.new_tlb_gen == local_tlb_gen + 1 \
            and info.new_tlb_gen == mm_tlb_gen:
        for va in range(info.start, info.end, PAGE_SIZE):
            mmu.invlpg(cpu, va)
    else:
        mmu.flush_asid(cpu, hw.asid)
    hw.ctxs[hw.asid] = (mm.context_id, mm_tlb_gen)
