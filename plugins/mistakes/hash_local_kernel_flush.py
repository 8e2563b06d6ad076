"""hash__pte_update decides a flush's locality from mm_cpumask alone (Hash).

The mistake takes "no other CPU in ``mm_cpumask(mm)``" for ``mm_is_thread_local``,
dropping the ``active_cpus`` count and the test that this CPU is in the mask
(asm/tlb.h:58-63). Before 6.6 init_mm's mask is empty until a CPU goes offline, so
from boot on every flush of the patching alias's HPTE goes local (tlbiel): the HPTE
leaves the hashed page table, but a translation another CPU loaded from it into its TLB
-- which POWER may do speculatively for any kernel address -- survives, a writable alias
of kernel text left on a CPU that never patched. No modelled code on another CPU touches
the alias: only speculative fills show it. Load with ``--mmu hash``.

The unmodified kernel (v6.1, next-20221215, v6.2) gets there too, but only after one CPU
alone went offline, and only for that CPU's patches (the known finding declared in
``fuzzer_plugins.hash``, same signature): the mistake's reproduction needs no CPU offline.
From 6.12 on init_mm's mask holds every online CPU, and the mistake flushes as the kernel does.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import MM, Cpu, Prot, Pte, PtePtr, RunConfig, hookimpl, routine

from ..hash import HASH_H, HashMmu


@routine("pte_update", HASH_H, override=True, symbol="hash__pte_update", inlined=True)
def hash__pte_update(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr, *, clear_all: bool,
                     new: Pte | None = None, huge: bool = False) -> Generator[Any, None, Any]:
    """hash__pte_update deciding ``local`` from mm_cpumask alone, init_mm included."""
    yield
    old = ptr.set(None if clear_all else new)
    if not huge:
        yield from cpu.k.assert_pte_locked(cpu, mm, addr)
    if old is not None and old.prot & Prot.HASHPTE:
        yield
        mmu = cpu.m.mmu
        assert isinstance(mmu, HashMmu)
        mmu.flush_hash_page(cpu, mm, addr, local=mm.cpumask <= {cpu.n})
    return old


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [hash__pte_update] if config.mmu == "hash" else []
