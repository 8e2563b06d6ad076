"""hash__pte_update flushes a kernel PTE's HPTE with tlbiel, on this CPU only (Hash).

The test for a thread-local mm is applied to init_mm too: its ``mm_cpumask``
holds no other CPU, so the flush of the patching alias's HPTE goes local.
The HPTE leaves the hashed page table, but a translation another CPU loaded
from it into its TLB -- which POWER may do speculatively for any kernel
address -- survives: a writable alias of kernel text left on a CPU that never
patched. No modelled code on another CPU touches the alias: only speculative
fills show it. Load with ``--mmu hash``.
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
