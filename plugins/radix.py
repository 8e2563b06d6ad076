"""Radix MMU: page tables, the PID register, per-CPU TLBs, tlbiel/tlbie, ptesync and isync.

Hardware rules the kernel must keep (Power ISA 3.1B Book III): a CPU must
not translate through a PTE it stored until a ``ptesync`` orders the store;
nor invalidate a translation with ``tlbiel``/``tlbie`` before its PTE
update is ordered; and a PID change needs context synchronisation before
(nothing translated since the last CSI) and after (``isync``) it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer import (
    ConfigOption,
    Geometry,
    HardwareViolation,
    KnownFinding,
    Mmu,
    MmuSpec,
    Prot,
    Pte,
    PtePage,
    PtePtr,
    RunConfig,
    Signature,
    UsageError,
    check_access,
    hookimpl,
    pte_alloc,
    routine,
)
from fuzzer.kernel import ENOMEM, dawr_slots, on_each_cpu

if TYPE_CHECKING:
    from fuzzer import MM, Cpu, Machine

Gen = Generator[Any, None, Any]
RADIX_TLB_C = "arch/powerpc/mm/book3s64/radix_tlb.c"
RADIX_PGTABLE_C = "arch/powerpc/mm/book3s64/radix_pgtable.c"
RADIX_H = "arch/powerpc/include/asm/book3s/64/radix.h"
MMU_CONTEXT_C = "arch/powerpc/mm/book3s64/mmu_context.c"
BOOK3S64_PGTABLE_C = "arch/powerpc/mm/book3s64/pgtable.c"
#: Boot parameters the model understands in CONFIG_CMDLINE.
BOOT_PARAMS = ("disable_tlbie",)

#: RADIX_{PGD,PUD,PMD,PTE}_INDEX_SIZE (asm/book3s/64/radix-{64k,4k}.h).
INDEX_BITS = {16: (13, 9, 9, 5), 12: (13, 9, 9, 9)}


@attrs.define
class RadixCpu:
    """Per-CPU radix hardware state."""

    pid: int = 0
    """The PID register (SPRN_PID)."""
    csi_pending: bool = False
    """PID written, no isync yet: translations now use an undefined context."""
    translated_since_csi: bool = False
    """A storage access was translated since the last context synchronisation."""
    unordered: set[tuple[PtePage, int]] = attrs.Factory(set)
    """PTE slots this CPU stored that no ptesync has ordered yet."""


class RadixMmu(Mmu):
    """Radix hardware: a TLB per CPU keyed by (PID, virtual page number)."""

    name = "radix"
    radix = True

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.shift = machine.run.page_shift
        for cpu in machine.cpus:
            cpu.hw = RadixCpu()

    def geometry(self, page_shift: int) -> Geometry:
        return Geometry(page_shift, INDEX_BITS[page_shift])

    def pte_stored(self, cpu: Cpu, ptr: PtePtr, old: Pte | None, new: Pte | None) -> None:
        cpu.hw.unordered.add((ptr.page, ptr.index))

    def ptesync(self, cpu: Cpu) -> None:
        cpu.hw.unordered.clear()

    def isync(self, cpu: Cpu) -> None:
        hw = cpu.hw
        hw.csi_pending = False
        hw.translated_since_csi = False

    def mtspr_pid(self, cpu: Cpu, pid: int) -> None:
        hw = cpu.hw
        if hw.translated_since_csi:
            raise HardwareViolation(
                "CSI before PID change",
                f"CPU {cpu.n} wrote PID {pid} with translations since the last isync",
            )
        hw.pid = pid
        hw.csi_pending = True

    def switch_context(self, cpu: Cpu, mm: MM) -> None:
        # Used outside modelled routines (boot, CPU bring-up): mtspr + isync.
        cpu.hw.translated_since_csi = False
        self.mtspr_pid(cpu, mm.context_id)
        self.isync(cpu)

    def _translate(self, cpu: Cpu, mm: MM | None, pid: int, va: int, write: bool) -> int | None:
        hw = cpu.hw
        if hw.csi_pending:
            raise HardwareViolation(
                "isync after PID change",
                f"CPU {cpu.n} translated {va:#x} after writing PID {hw.pid} without an isync",
            )
        hw.translated_since_csi = True
        key = (pid, va >> self.shift)
        pte = cpu.tlb.get(key)
        if pte is None:
            if mm is None:
                return None
            _, page = mm.walk(va)
            if page is None:
                return None
            idx = mm.geometry.indices(va)[3]
            if (page, idx) in hw.unordered:
                raise HardwareViolation(
                    "ptesync before use",
                    f"CPU {cpu.n} translated {va:#x} in {mm.name} through a PTE it stored"
                    " without a ptesync since",
                )
            pte = page.entries.get(idx)
            if pte is None:
                return None
            cpu.tlb[key] = pte
        if not check_access(pte, write):
            return None
        return (pte.pfn << self.shift) | (va & ((1 << self.shift) - 1))

    def translate_user(self, cpu: Cpu, va: int, write: bool) -> int | None:
        pid = cpu.hw.pid
        return self._translate(cpu, self.machine.mms.get(pid), pid, va, write)

    def translate_vmalloc(self, cpu: Cpu, va: int, write: bool) -> int | None:
        return self._translate(cpu, self.machine.init_mm, 0, va, write)

    def _check_ordered(self, cpu: Cpu, mm: MM, va: int, what: str) -> None:
        _, page = mm.walk(va)
        if page is not None and (page, mm.geometry.indices(va)[3]) in cpu.hw.unordered:
            raise HardwareViolation(
                f"ptesync before {what}",
                f"CPU {cpu.n} invalidated {va:#x} in {mm.name} before its PTE update was"
                " ordered: the walker can reload the stale PTE",
            )

    def tlbiel_va(self, cpu: Cpu, mm: MM, va: int) -> None:
        """``tlbiel`` for one VA and PID: this CPU's TLB only."""
        self._check_ordered(cpu, mm, va, "tlbiel")
        cpu.tlb.pop((mm.context_id, va >> self.shift), None)

    def tlbiel_pid(self, cpu: Cpu, pid: int) -> None:
        """``tlbiel`` RIC_FLUSH_ALL for a PID: this CPU's TLB only."""
        if cpu.hw.unordered:
            raise HardwareViolation(
                "ptesync before tlbiel",
                f"CPU {cpu.n} invalidated PID {pid} locally with PTE stores not yet ordered",
            )
        for key in [k for k in cpu.tlb if k[0] == pid]:
            del cpu.tlb[key]

    def tlbie_pid(self, cpu: Cpu, pid: int) -> None:
        """``tlbie`` RIC_FLUSH_ALL for a PID: every CPU's TLB (broadcast)."""
        if cpu.hw.unordered:
            raise HardwareViolation(
                "ptesync before tlbie",
                f"CPU {cpu.n} broadcast a TLB invalidation with PTE stores not yet ordered",
            )
        for c in self.machine.cpus:
            for key in [k for k in c.tlb if k[0] == pid]:
                del c.tlb[key]

    def tlb_key(self, mm: MM, va: int) -> Any:
        return (mm.context_id, va >> self.shift)  # what translations_of looks for in cpu.tlb

    def speculative_fill(self, cpu: Cpu, mm: MM, va: int) -> None:
        """A table walk nobody asked for: load the PTE the walk sees into the TLB.

        Only for the PID the CPU runs with (PID 0, init_mm, for kernel
        addresses; none while a PID change awaits its isync), and never from a
        PTE this CPU stored without a ptesync since: the walk need not see such
        a store yet, and not seeing it keeps the "ptesync before use" check
        meaningful. No context-synchronisation state changes.
        """
        hw = cpu.hw
        if not mm.is_init and (hw.csi_pending or mm.context_id != hw.pid):
            return
        _, page = mm.walk(va)
        if page is None:
            return
        idx = mm.geometry.indices(va)[3]
        pte = page.entries.get(idx)
        if pte is None or not pte.prot & Prot.PRESENT or (page, idx) in hw.unordered:
            return
        cpu.tlb[(mm.context_id, va >> self.shift)] = pte


@hookimpl
def fuzzer_mmus() -> list[MmuSpec]:
    return [MmuSpec("radix", RadixMmu, "POWER9/10 Radix MMU (radix_enabled())", radix=True,
                    breakpoint_slots=dawr_slots)]


@hookimpl
def fuzzer_addconfig() -> list[ConfigOption]:
    return [ConfigOption(
        "CONFIG_CMDLINE", "", "the built-in kernel command line; the model knows"
        " disable_tlbie (Radix: kernel TLB flushes by IPI and tlbiel, not tlbie)", arch="powerpc",
    )]


def boot_params(config: RunConfig) -> list[str]:
    """The parameters of ``CONFIG_CMDLINE``, checked against those the model knows."""
    params = str(config.config.values.get("CONFIG_CMDLINE", "")).split()
    for p in params:
        if p not in BOOT_PARAMS:
            raise UsageError(f"CONFIG_CMDLINE: unknown boot parameter {p!r}; the model knows:"
                             f" {', '.join(BOOT_PARAMS)}")
    return params


@hookimpl
def fuzzer_configure(config: RunConfig) -> None:
    boot_params(config)


@hookimpl
def fuzzer_report_header(config: RunConfig) -> list[str]:
    if config.mmu == "radix" and "disable_tlbie" in boot_params(config):
        return ["boot: disable_tlbie -- tlbie_capable = tlbie_enabled = false: kernel TLB"
                " flushes go to every CPU by IPI (on_each_cpu) and tlbiel"]
    return []


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    if machine.run.mmu != "radix":
        return
    # setup_disable_tlbie() (arch/powerpc/mm/book3s64/pgtable.c:509 v6.1): the boot
    # parameter clears both; debugfs tlbie_enabled=0 would clear only the second.
    on = "disable_tlbie" not in boot_params(machine.run)
    machine.attach("tlbie", {"capable": on, "enabled": on})


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    if config.mmu != "radix":
        return []
    return [
        radix__pte_update,
        radix__switch_mmu_context,
        radix__flush_tlb_kernel_range,
        do_tlbiel_kernel,
        radix__local_flush_tlb_page_psize,
        radix__map_kernel_page,
        radix__tlb_flush,
    ]


@routine("pte_update", RADIX_H, symbol="radix__pte_update", inlined=True)
def radix__pte_update(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr, *, clear_all: bool,
                      new: Pte | None = None, huge: bool = False) -> Gen:
    """``radix__pte_update()`` (asm/book3s/64/radix.h:172, v6.1-v6.12).

    The atomic update first (``__radix_pte_update``), then, for a non-huge
    PTE, ``assert_pte_locked(mm, addr)``: the assert runs after the store.
    """
    yield  # ldarx/stdcx. loop
    old = ptr.set(None if clear_all else new)
    cpu.m.mmu.pte_stored(cpu, ptr, old, None if clear_all else new)
    if not huge:
        yield from cpu.k.assert_pte_locked(cpu, mm, addr)
    return old


@routine("switch_mmu_context", MMU_CONTEXT_C, symbol="radix__switch_mmu_context")
def radix__switch_mmu_context(cpu: Cpu, prev: MM | None, next_mm: MM) -> Gen:
    """``radix__switch_mmu_context()`` (book3s64/mmu_context.c:323): mtspr PID, then isync.

    The loaded mm changes at the PID write, before the isync, as in the kernel;
    ``switch_mm_irqs_off`` only records it again afterwards.
    """
    mmu = cpu.m.mmu
    assert isinstance(mmu, RadixMmu)
    yield
    mmu.mtspr_pid(cpu, next_mm.context_id)
    # From the PID write on, this CPU translates user addresses through next (the
    # isync only makes that take effect for later instructions): an interrupt
    # taken before the isync already finds next loaded.
    cpu.loaded_mm = next_mm
    yield
    mmu.isync(cpu)


@routine("flush_tlb_kernel_range", RADIX_TLB_C, symbol="radix__flush_tlb_kernel_range")
def radix__flush_tlb_kernel_range(cpu: Cpu, start: int, end: int) -> Gen:
    """``radix__flush_tlb_kernel_range()`` (radix_tlb.c:972-985 v6.1, :985-998 v6.12).

    With GTSE and ``cputlb_use_tlbie()`` (``tlbie_enabled``, asm/book3s/64/tlbflush.h):
    ``_tlbie_pid(0, RIC_FLUSH_ALL)`` -- ptesync, then a broadcast flush of
    everything PID 0 translates, on every CPU (not just the range). Without
    tlbie (the ``disable_tlbie`` boot parameter, or debugfs ``tlbie_enabled=0``):
    ``_tlbiel_kernel_broadcast()`` (:954-964 v6.1), ``on_each_cpu(do_tlbiel_kernel,
    NULL, 1)`` -- IPIs, waiting for every CPU -- then ``_tlbie_pid`` as well
    if ``tlbie_capable`` (for coherent accelerators).
    """
    mmu = cpu.m.mmu
    assert isinstance(mmu, RadixMmu)
    tlbie = cpu.m.state["tlbie"]
    if not tlbie["enabled"]:
        yield from on_each_cpu(cpu, cpu.k.do_tlbiel_kernel, True)
        if not tlbie["capable"]:
            return
    yield
    mmu.ptesync(cpu)
    yield
    mmu.tlbie_pid(cpu, 0)
    mmu.ptesync(cpu)


@routine("do_tlbiel_kernel", RADIX_TLB_C)
def do_tlbiel_kernel(cpu: Cpu) -> Gen:
    """``do_tlbiel_kernel()`` (radix_tlb.c:949 v6.1, :962 v6.12), on each CPU from the IPI:
    ``_tlbiel_pid(0, RIC_FLUSH_ALL)`` -- ptesync, then this CPU's PID 0 entries, ptesync."""
    mmu = cpu.m.mmu
    assert isinstance(mmu, RadixMmu)
    yield
    mmu.ptesync(cpu)
    yield
    mmu.tlbiel_pid(cpu, 0)
    mmu.ptesync(cpu)


@routine(
    "local_flush_tlb_page_psize",
    RADIX_TLB_C,
    versions=("next-20221215", "v6.2", "v6.12"),
    symbol="radix__local_flush_tlb_page_psize",
)
def radix__local_flush_tlb_page_psize(cpu: Cpu, mm: MM, va: int) -> Gen:
    """``radix__local_flush_tlb_page_psize()`` (radix_tlb.c:613, 274d842fa1ef; v6.2).

    ``_tlbiel_va(va, mm->context.id, psize, RIC_FLUSH_TLB)``: ptesync (orders
    the PTE clear before the invalidation), ``tlbiel`` for this VA and PID on
    this CPU only, ptesync.
    """
    mmu = cpu.m.mmu
    assert isinstance(mmu, RadixMmu)
    yield
    mmu.ptesync(cpu)
    yield
    mmu.tlbiel_va(cpu, mm, va)
    mmu.ptesync(cpu)


@routine("map_kernel_page", RADIX_PGTABLE_C, symbol="radix__map_kernel_page")
def radix__map_kernel_page(cpu: Cpu, ea: int, pfn: int, prot: Any) -> Gen:
    """``radix__map_kernel_page()`` -> ``__map_kernel_page()`` (radix_pgtable.c, v6.1-v6.2).

    Allocate the missing init_mm levels (GFP_KERNEL once slab is up), then
    ``set_pte_at(&init_mm, ...)`` and a ptesync (ISA Book III 6.10): kernel
    mappings must not fault spuriously.
    """
    m = cpu.m
    mm = m.init_mm
    ptr = yield from pte_alloc(cpu, mm, ea)
    if ptr is None:
        return -ENOMEM  # a table allocation failed (fault injection)
    yield from cpu.k.set_pte_at(cpu, mm, ea, ptr, Pte(pfn, prot))
    yield
    m.mmu.ptesync(cpu)
    return 0


@routine("tlb_flush", RADIX_TLB_C, symbol="radix__tlb_flush")
def radix__tlb_flush(cpu: Cpu, tlb: Any) -> Gen:
    """``radix__tlb_flush()`` (radix_tlb.c:1184, v6.12), for a gather that freed tables.

    Not fullmm, base page size, ``freed_tables``: ``radix__flush_tlb_pwc_range_psize``
    -> ``__radix__flush_tlb_range_psize(..., also_pwc)`` (:1235). The range spans a
    PUD, so the whole PID is flushed; ``flush_type_needed`` (:765) makes it local
    (``_tlbiel_pid``, RIC_FLUSH_ALL) when this CPU is the mm's only one, a
    broadcast ``tlbie`` otherwise, and nothing when no CPU ever loaded it.
    """
    mmu = cpu.m.mmu
    assert isinstance(mmu, RadixMmu)
    mm = tlb.mm
    yield
    if not mm.cpumask:
        return
    mmu.ptesync(cpu)
    if mm.cpumask == {cpu.n}:
        for key in [k for k in cpu.tlb if k[0] == mm.context_id]:
            del cpu.tlb[key]
    else:
        mmu.tlbie_pid(cpu, mm.context_id)
    mmu.ptesync(cpu)
@hookimpl
def fuzzer_known_findings(config: RunConfig) -> list[KnownFinding]:
    """Findings on v6.1 as released, booted with ``disable_tlbie`` on Radix.

    v6.1's ``do_patch_instruction`` disables interrupts (code-patching.c:188) around
    ``__do_patch_instruction``, whose ``flush_tlb_kernel_range`` (:170) becomes
    ``on_each_cpu(do_tlbiel_kernel, NULL, 1)`` without tlbie (radix_tlb.c:954-956,
    981-984). With lockdep that is a WARNING in ``smp_call_function_many_cond``
    (kernel/smp.c:913-915) on the first patch after ``start_kernel`` enables
    interrupts; without it two CPUs patching at once (kprobes under text_mutex, a
    static key under jump_label_mutex) each spin in ``csd_lock_wait`` with interrupts
    off for the other's IPI -- and so do they with lockdep, once the WARNING is printed
    and the kernel goes on (``panic_on_warn`` unset). v6.2 patches through a per-CPU
    temporary mm with a local flush on Radix + SMP and no longer flushes by IPI there.
    The deadlock is declared by the routine both CPUs wait in (a deadlock's signature
    names the routine two or more waiting CPUs wait in), for ``disable_tlbie`` boots
    only, so other deadlocks at v6.1 stay findings.
    """
    if config.mmu != "radix":
        return []
    where = ("arch/powerpc/lib/code-patching.c:170,188 (v6.1);"
             " arch/powerpc/mm/book3s64/radix_tlb.c:954-956,981-984; kernel/smp.c:913-915,998")
    fix = ("patch through a temporary mm with a local flush (c28c15b6d28a + 980411a4d1bb, v6.2),"
           " or flush the alias outside the IRQ-off window")
    fields: dict[str, Any] = {"kernels": ("v6.1",), "fix": fix, "reference": where}
    found = [KnownFinding(
        signature=Signature("WARNING", "smp_call_function_many_cond", "kernel/smp.c:915"),
        title="disable_tlbie: v6.1 code patching flushes kernel TLBs by IPI with IRQs off",
        **fields)]
    if "disable_tlbie" in boot_params(config):
        found.append(KnownFinding(
            signature=Signature("DEADLOCK", "smp_call_function_many_cond", ""),
            title="disable_tlbie: two CPUs patching at once on v6.1 each wait with IRQs off"
                  " for the other's TLB-flush IPI (csd_lock_wait; a hard LOCKUP)",
            **fields))
    return found
