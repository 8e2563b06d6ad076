"""text_area_cpu_up_mm's error path forgets the mm when the page tables cannot be allocated (v6.2).

When ``get_locked_pte`` fails (-ENOMEM: a page-table allocation failed) the
variant returns at once instead of ``goto fail_no_pte`` -> ``put_patching_mm``:
the fresh mm and the tables already allocated for it leak, and the CPU stays
offline. Only a failed allocation takes that path: fault injection (a ``fail
pgtable_alloc`` step on the CPU before it comes online) makes it visible, and
the end-state check "patching mm leak" reports the mm nobody uses or frees.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, ENOMEM, context, line, random_patching_addr
from fuzzer.kernel.faults import warn_on_alloc_failure


@routine("text_area_cpu_up_mm", CP, versions=("v6.2",), override=True)
def text_area_cpu_up_mm(cpu: Cpu) -> Generator[Any, None, Any]:
    """v6.2's text_area_cpu_up_mm returning -ENOMEM without ``put_patching_mm``."""
    k = cpu.k
    mm = yield from k.mm_alloc(cpu)
    if mm is None:
        warn_on_alloc_failure(cpu, "mm_alloc", line(cpu, "mm_alloc_warn"),
                              function="text_area_cpu_up_mm", detail="WARN_ON(!mm)")
        return -ENOMEM
    addr = random_patching_addr(cpu)
    got = yield from k.__get_locked_pte(cpu, mm, addr)
    if got is None:
        return -ENOMEM  # the mistake: no put_patching_mm(mm, addr)
    pte, ptl = got
    yield from k.pte_unmap_unlock(cpu, pte, ptl)
    ctx = context(cpu)
    ctx.mm, ctx.addr = mm, addr
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [text_area_cpu_up_mm]
