"""One patching mm and address for every CPU instead of one per CPU (v6.2).

A plausible simplification: allocate the patching mm once and let each CPU
coming online reuse it. Boot alone is fine (one CPU); a second CPU that
patches loads an mm another CPU also uses, so the mm is no longer
thread-local and its writable mapping is visible to two CPUs.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import CP, ENOMEM, context, random_patching_addr


@routine("text_area_cpu_up_mm", CP, versions=("v6.2",), override=True)
def text_area_cpu_up_mm(cpu: Cpu) -> Generator[Any, None, Any]:
    """text_area_cpu_up_mm reusing the first CPU's patching mm and address."""
    k = cpu.k
    shared = cpu.m.state.get("shared_patching")
    if shared is None:
        mm = yield from k.mm_alloc(cpu)
        if mm is None:
            return -ENOMEM  # fault injection (the error paths as v6.2 has them)
        addr = random_patching_addr(cpu)
        got = yield from k.__get_locked_pte(cpu, mm, addr)
        if got is None:
            yield from k.put_patching_mm(cpu, mm, addr)
            return -ENOMEM
        pte, ptl = got
        yield from k.pte_unmap_unlock(cpu, pte, ptl)
        shared = cpu.m.state["shared_patching"] = (mm, addr)
    mm, addr = shared
    mm.users += 1
    ctx = context(cpu)
    ctx.mm, ctx.addr = mm, addr
    return 0


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [text_area_cpu_up_mm]
