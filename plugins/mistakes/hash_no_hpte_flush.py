"""hash__pte_update forgets to flush the HPTE of a PTE it clears (Hash, every version).

The Linux PTE of the patching alias is cleared but its HPTE stays in the
hashed page table: every CPU can still translate the writable alias of the
last text page patched, and the next patch through that CPU's alias may
write the old page. Load with ``--mmu hash``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import MM, Cpu, Pte, PtePtr, RunConfig, hookimpl, routine

from ..hash import HASH_H


@routine("pte_update", HASH_H, override=True, symbol="hash__pte_update")
def hash__pte_update(cpu: Cpu, mm: MM, addr: int, ptr: PtePtr, *, clear_all: bool,
                     new: Pte | None = None, huge: bool = False) -> Generator[Any, None, Any]:
    """hash__pte_update without hpte_need_flush."""
    yield
    old = ptr.set(None if clear_all else new)
    if not huge:
        yield from cpu.k.assert_pte_locked(cpu, mm, addr)
    return old


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [hash__pte_update] if config.mmu == "hash" else []
