"""What plugins contribute through hooks: operations, interrupts, invariants, MMUs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from fuzzer._args import ArgType
    from fuzzer._machine import Machine
    from fuzzer._routines import RoutineFn


@attrs.frozen
class Operation:
    """Something a CPU can start in process context (register a kprobe, patch text).

    ``routine`` is a generator function called as ``routine(cpu, **args)``;
    it runs in a task of its own on that CPU, interleaved with everything else.
    """

    name: str
    """Unique, dotted by plugin: ``kprobes.register``."""
    routine: RoutineFn = attrs.field(repr=False)
    """Generator function ``(cpu, **args)``."""
    args: Mapping[str, ArgType | SearchStrategy[Any]] = attrs.field(factory=dict, repr=False)
    """Each argument's type (:class:`fuzzer.IntRange`, :class:`fuzzer.Choice`,
    :class:`fuzzer.Boolean`, :class:`fuzzer.Constant`) or any Hypothesis strategy;
    values must be plain JSON values."""
    doc: str = ""
    """One line for ``python -m fuzzer plugins``."""
    comm: str = ""
    """Task name the operation runs as (``comm``); defaults to the operation name."""
    kthread: bool = False
    """Run as a kernel thread (no mm of its own): it borrows the mm the CPU has
    loaded, as a lazy-TLB kernel thread does, instead of a user process with its own."""
    makes: bool = False
    """Returning success (0 or None), it makes an object its arguments name: a kprobe
    ``register`` returns. The Hypothesis engine's ``race_*`` rules run two operations of the
    plugin on an object made and not yet unmade (the ``Bundle`` idiom); a plugin that
    declares none races on the arguments of any operation that succeeded."""
    unmakes: bool = False
    """Returning success, it ends the object its arguments name (a kprobe ``unregister``)."""


@attrs.frozen
class InterruptSource:
    """An interrupt that can arrive on a CPU between two steps.

    Unless ``nmi`` is true it only arrives while the CPU has interrupts enabled.
    """

    name: str
    handler: RoutineFn = attrs.field(repr=False)
    """Generator function ``(cpu)`` run on top of whatever the CPU was doing."""
    nmi: bool = False
    """Ignores the interrupt soft mask (system reset, machine check)."""
    doc: str = ""


@attrs.frozen
class Invariant:
    """A property a correct kernel keeps.

    ``check(machine)`` returns ``None`` when it holds, else a one-line
    description of what broke. ``when="step"`` checks after every emulated
    step, ``"end"`` once every CPU ran to completion. Keep step checks cheap:
    the fuzzer's speed is the emulator's speed.
    """

    name: str
    check: Callable[[Machine], str | None] = attrs.field(repr=False)
    when: str = "step"
    doc: str = ""


@attrs.frozen
class Initcall:
    """A boot-time initcall (``early_initcall(init_kprobes)``)."""

    name: str
    routine: RoutineFn = attrs.field(repr=False)
    """Generator function ``(cpu)``; a negative return is logged, as the kernel does."""
    level: str = "device"
    """``early`` runs before SMP bring-up (do_pre_smp_initcalls), others after;
    ``start_kernel`` is called by start_kernel itself right after poking_init; ``late``
    runs after all the others."""


@attrs.frozen
class AddressLayout:
    """Where an architecture's kernel keeps things: its MMU spec carries one.

    The machine translates kernel addresses with it (the linear map, then
    vmalloc), lays out kernel text and hands out user memory.
    """

    page_offset: int
    """Start of the linear map of physical memory (``PAGE_OFFSET``)."""
    vmalloc_start: int
    vmalloc_end: int
    memory_size: int
    """Size of physical memory, mapped from ``page_offset``."""
    kernel_text_end: int
    """End of kernel text in physical memory: read-only after ``mark_rodata_ro``."""
    user_memory_start: int
    """Physical memory handed out for user pages starts here (past the kernel image)."""
    user_stack_top: int
    """Where a user task's stack page ends."""


#: book3s64 (POWER, 64-bit): the linear map, then vmalloc; memory and text sizes as in the
#: crash report's boot log ("Mapped 0x0000000000000000-0x0000000002760000 with 64.0 KiB
#: pages (exec)").
BOOK3S64 = AddressLayout(
    page_offset=0xC000_0000_0000_0000,
    vmalloc_start=0xC008_0000_0000_0000,
    vmalloc_end=0xC00A_0000_0000_0000,
    memory_size=0x8000_0000,
    kernel_text_end=0x0276_0000,
    user_memory_start=0x4000_0000,
    user_stack_top=0x7FFF_F000_0000,
)


def _one_slot(config: Any) -> int:
    return 1


@attrs.frozen
class MmuSpec:
    """An MMU model: owns translation, page-table geometry, TLBs and flushes."""

    name: str
    """What ``--mmu`` takes."""
    factory: Callable[[Machine], Any] = attrs.field(repr=False)
    """Builds the MMU hardware object for one machine (see :class:`fuzzer.Mmu`)."""
    description: str = ""
    radix: bool = False
    """What the kernel's ``radix_enabled()`` returns with this MMU."""
    arch: str = "powerpc"
    """The architecture: ``--mmu NAME`` runs only the kernel versions of this ``arch``."""
    layout: AddressLayout = BOOK3S64
    """The kernel's address layout on this MMU's architecture."""
    breakpoint_slots: Callable[[Any], int] = attrs.field(default=_one_slot, repr=False)
    """Data breakpoint registers per CPU for a :class:`~fuzzer.KernelConfig` (powerpc: the
    DAWRs, ``CONFIG_PPC_NR_DAWR``)."""
