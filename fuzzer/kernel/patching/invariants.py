"""The properties a correct kernel keeps about code patching, checked by the fuzzer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuzzer._mm import MM
from fuzzer._mmu import Mmu
from fuzzer.kernel.patching.common import PatchingContext, default_map_window

if TYPE_CHECKING:
    from fuzzer._machine import Machine


def _owner_of(m: Machine, mm: MM) -> int | None:
    """The CPU whose patching context holds ``mm`` (the last one, should several)."""
    owner = None
    for c in m.cpus:
        ctx = c.state.get("cpu_patching_context")
        if ctx is not None and ctx.mm is mm:
            owner = c.n
    return owner


def patch_window(m: Machine) -> str | None:
    for c in m.cpus:
        mm = c.loaded_mm
        if mm is None or not mm.is_patching:
            continue
        owner = _owner_of(m, mm)
        if owner is not None and owner != c.n:
            return f"CPU {c.n} has loaded {mm.name}, the patching mm of CPU {owner}"
        if c.irqs_enabled:
            return f"CPU {c.n} has interrupts enabled while its patching mm is loaded"
    return None


def _patching_addrs(m: Machine) -> list[tuple[int, MM, int]]:
    """(owner CPU, mm, address) of every patching context with live resources.

    A step check calls it at every emulated step: kept to plain attribute reads
    (``_live_resources`` inlined).
    """
    out = []
    for c in m.cpus:
        ctx = c.state.get("cpu_patching_context")
        if ctx is None:
            continue
        mm, area = ctx.mm, ctx.area
        if (mm is not None and not mm.freed) or (area is not None and not area.freed):
            out.append((c.n, mm if mm is not None else m.init_mm, ctx.addr))
    return out


def mapping_private(m: Machine) -> str | None:
    """A temporary mm's patching address is translated by its owner only.

    Not the vmalloc alias of v6.1 (and of Hash at every version): it lives in
    init_mm, which every CPU has live and may translate speculatively, which is
    why the kernel flushes it with ``flush_tlb_kernel_range`` (global). A stale
    copy left behind is what "patching mapping removed" catches.
    """
    holders = [c for c in m.cpus if c.tlb]
    if len(holders) < 2:
        return None  # only the owner's own TLB can hold anything
    mmu = m.mmu
    translations_of = mmu.translations_of
    # One key for every CPU's TLB when the MMU's translations_of is the key lookup.
    keyed = type(mmu).translations_of is Mmu.translations_of
    # _patching_addrs without the init_mm ones (the alias), inlined: a check of every step.
    for owner in m.cpus:
        ctx = owner.state.get("cpu_patching_context")
        if ctx is None:
            continue
        mm, area = ctx.mm, ctx.area
        if mm is None or mm.is_init or (mm.freed and (area is None or area.freed)):
            continue
        addr = ctx.addr
        key = mmu.tlb_key(mm, addr) if keyed else None
        for c in holders:
            if c is not owner and (key in c.tlb if key is not None else translations_of(c, mm, addr)):
                return f"CPU {c.n} holds a translation of CPU {owner.n}'s patching address {addr:#x}"
    return None


def nothing_left_mapped(m: Machine) -> str | None:
    """No patching address is mapped, or translated by any CPU's TLB. An MMU plugin that
    flushed an address locally may say why in ``m.state["flush_notes"][addr]``: the
    report shows it with a stale translation."""
    for owner, mm, addr in _patching_addrs(m):
        if mm.lookup(addr) is not None:
            return f"CPU {owner}'s patching address {addr:#x} is still mapped in {mm.name}"
        for c in m.cpus:
            if m.mmu.translations_of(c, mm, addr):
                why = m.state.get("flush_notes", {}).get(addr)
                return (f"CPU {c.n}'s TLB still translates CPU {owner}'s patching address {addr:#x}"
                        + (f"; {why}" if why else ""))
    return None


def _live_resources(ctx: PatchingContext | None) -> bool:
    if ctx is None:
        return False
    if ctx.mm is not None and not ctx.mm.freed:
        return True
    return ctx.area is not None and not ctx.area.freed


def contexts_match_cpus(m: Machine) -> str | None:
    # v6.1's text_area_cpu_down frees the area but leaves the per-CPU pointer
    # behind; harmless while the CPU is offline, so only live resources count.
    if not m.static_keys.get("poking_init_done"):
        return None
    for c in m.cpus:
        live = _live_resources(c.state.get("cpu_patching_context"))
        if c.online and not live:
            return f"CPU {c.n} is online with no patching context"
        if not c.online and live:
            return f"CPU {c.n} is offline but its patching mm or area is still allocated"
    return None


def no_leaks(m: Machine) -> str | None:
    in_use = {id(mm) for _, mm, _ in _patching_addrs(m)}
    for mm in m.mms.values():
        if mm.is_patching and not mm.freed and id(mm) not in in_use:
            return f"{mm.name} is neither used by a CPU nor freed"
        if mm.freed and any(not p.freed for p in mm.pte_pages()):
            return f"{mm.name} was freed with live page tables"
    return None


def addr_bounds(m: Machine) -> str | None:
    page = m.run.page_size
    top = default_map_window(m) - 2 * page
    for owner, mm, addr in _patching_addrs(m):
        if mm.is_init:
            continue
        if addr % page or not page <= addr <= top:
            return f"CPU {owner}'s patching address {addr:#x} is outside [{page:#x}, {top:#x}] or unaligned"
    return None


def breakpoints_restored(m: Machine) -> str | None:
    for c in m.cpus:
        if c.online and c.dawr != c.current_brk:
            return f"CPU {c.n}: DAWR {c.dawr} differs from current_brk {c.current_brk}"
    return None
