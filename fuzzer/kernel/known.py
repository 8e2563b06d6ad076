"""Failures the model finds on unmodified, released kernels: known, understood, searched past.

Each is a real kernel behaviour, with the kernel lines that make it and the fix
they imply, not a false positive. The kernel core declares them through
``fuzzer_known_findings`` (:func:`known_findings`), so campaigns count them and
keep searching; ``run --report-known`` reports them as ordinary findings.
"""

from __future__ import annotations

from typing import Any

from fuzzer._errors import Signature
from fuzzer._known import KnownFinding

#: The real boots are in ../shared/reference/real-boots/ (not part of the project).
_BOOTS = "real 6.12.117 powernv boots (shared/reference/real-boots/"

PAGE_TABLE_LEAK: dict[str, Any] = {
    "signature": {"kind": "END-STATE", "function": "page-table memory freed", "location": ""},
    "kernels": ("next-20221215", "v6.2", "v6.12"),
    "fixed_in": ("v6.12-fixed",),
    "title": (
        "CPU offline leaks the patching mm's page tables on Radix: put_patching_mm()"
        " (arch/powerpc/lib/code-patching.c:142-149 in v6.12, :139-146 in next-20221215 and"
        " v6.2) calls tlb_gather_mmu() and free_pgd_range() but never tlb_finish_mmu(), so the"
        " PTE, PMD and PUD tables queued in the gather's batch, and the batch page, are never"
        " freed (so does a failed CPU online: text_area_cpu_up_mm()'s error path, fail_no_pte,"
        " calls put_patching_mm() too)"
    ),
    "fix": "tlb_finish_mmu(&tlb); after free_pgd_range() in put_patching_mm() (before mmput())",
    "reference": (
        f"{_BOOTS}realkernel-6.12-cpuhp-leak.log: PageTables +128 kB and nr_page_table_pages +2"
        " per offline/online cycle, pgtable-2^9 +1 object; realkernel-6.12-cpuhp-leak-fixed.log"
        " with the fix: flat)"
    ),
}

LAZY_TLB_HOTPLUG_WARN: dict[str, Any] = {
    "signature": {"kind": "WARNING", "function": "switch_mm_irqs_off",
                  "location": "arch/powerpc/mm/mmu_context.c:106"},
    "kernels": ("v6.12",),
    "fixed_in": ("v6.12-fixed",),
    "title": (
        "WARNING at arch/powerpc/mm/mmu_context.c:106 switch_mm_irqs_off <- idle_task_exit <-"
        " pnv_cpu_offline_self <- arch_cpu_idle_dead: cleanup_cpu_mmu_context()"
        " (book3s64/mmu_context.c:344, from __cpu_disable) clears the dying CPU from the"
        " mm_cpumask of the process mm it still uses lazily; idle_task_exit() switches away"
        " from it only afterwards"
    ),
    "fix": "21641bd9a7a7 (lazy tlb: fix hotplug exit race with MMU_LAZY_TLB_SHOOTDOWN)",
    "reference": (
        f"{_BOOTS}realkernel-6.12-cpuhp-leak*.log: 3 of 4 boots); M. Ellerman, linuxppc-dev"
        " 2023-08-18, \"Re: [PATCH 3/4] powerpc: Add mm_cpumask warning when context"
        " switching\" (6.5-rc3, pseries)"
    ),
}

LAZY_TLB_HOTPLUG_INIT_MM_WARN: dict[str, Any] = {
    "signature": {"kind": "WARNING", "function": "switch_mm_irqs_off",
                  "location": "arch/powerpc/mm/mmu_context.c:51"},
    "kernels": ("v6.12",),
    "fixed_in": ("v6.12-fixed",),
    "title": (
        "WARNING at arch/powerpc/mm/mmu_context.c:51 switch_mm_irqs_off <- idle_task_exit <-"
        " pnv_cpu_offline_self <- arch_cpu_idle_dead: once the dying CPU reported idle-dead"
        " (kernel/cpu.c:1360), the control CPU's __cpu_die (arch/powerpc/kernel/smp.c:1791)"
        " clears it from init_mm's mm_cpumask while the dying CPU's idle_task_exit() still has"
        " to switch from its lazy mm to init_mm; switch_mm_irqs_off then finds itself missing"
        " there (:51) and sets the bit again, so the next online's start_secondary warns at"
        " arch/powerpc/kernel/smp.c:1634"
    ),
    "fix": (
        "21641bd9a7a7 (lazy tlb: fix hotplug exit race with MMU_LAZY_TLB_SHOOTDOWN): the switch"
        " to init_mm moves into take_cpu_down, before __cpu_disable, long before __cpu_die"
    ),
    "reference": (
        "docs/real-boots/6.12.117-cpuhp-200-cycles.log: a real 6.12.117 boot on 2026-12-02"
        " (-smp 4) printed :51, :106 and smp.c:1634 in that order"
    ),
}

LAZY_TLB_HOTPLUG_ONLINE_WARN: dict[str, Any] = {
    "signature": {"kind": "WARNING", "function": "start_secondary",
                  "location": "arch/powerpc/kernel/smp.c:1634"},
    "kernels": ("v6.12",),
    "fixed_in": ("v6.12-fixed",),
    "title": (
        "WARNING at arch/powerpc/kernel/smp.c:1634 start_secondary, at the CPU online after the"
        " :51 race: the dying CPU's switch_mm_irqs_off set it again in init_mm's mm_cpumask"
        " (mmu_context.c:52, after its :51 WARNING) once __cpu_die (smp.c:1791) had cleared it,"
        " so the next start_secondary's VM_WARN_ON finds it already set (not _ONCE: every online"
        " after such a race)"
    ),
    "fix": LAZY_TLB_HOTPLUG_INIT_MM_WARN["fix"],
    "reference": LAZY_TLB_HOTPLUG_INIT_MM_WARN["reference"],
}


def known_findings() -> list[KnownFinding]:
    """The known findings of the modelled powerpc kernels."""
    return [KnownFinding(signature=Signature(**d["signature"]),
                         **{k: v for k, v in d.items() if k != "signature"})
            for d in (PAGE_TABLE_LEAK, LAZY_TLB_HOTPLUG_WARN, LAZY_TLB_HOTPLUG_INIT_MM_WARN,
                      LAZY_TLB_HOTPLUG_ONLINE_WARN)]
