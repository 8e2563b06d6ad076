"""Code patching (arch/powerpc/lib/code-patching.c), one module per version family.

* :mod:`.common` -- constants, ``cpu_patching_context``, helpers and the routines every
  version shares;
* :mod:`.v61` -- v6.1: a per-CPU vmalloc-area alias in init_mm, every MMU;
* :mod:`.temp_mm` -- next-20221215 and v6.2: a temporary mm on Radix + SMP (and the routines
  unchanged from there to 6.12);
* :mod:`.v612` -- v6.12: ``patch_mem``, ``patch_uint``/``patch_ulong``, ``patch_instructions``;
* :mod:`.invariants` -- the properties a correct kernel keeps, checked by the fuzzer.

Line numbers in docstrings and reports are those of each version's file. This
package is the ``patching`` plugin of the modelled kernel core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fuzzer._config import RunConfig
from fuzzer._plugins import hookimpl
from fuzzer._specs import Invariant
from fuzzer.kernel.patching import common, invariants, temp_mm, v61, v612
from fuzzer.kernel.patching.common import (
    CP,
    EINVAL,
    ENOMEM,
    EPERM,
    LINES,
    NEXT,
    PROCESS_C,
    SINCE_TEMP_MM,
    TEMP_MM,
    V61,
    V62,
    V612,
    Gen,
    PatchingContext,
    context,
    default_map_window,
    get_patch_pfn,
    instr_words,
    is_prefixed,
    line,
    mm_patch_enabled,
    random_patching_addr,
)

if TYPE_CHECKING:
    from fuzzer._machine import Machine

__all__ = [
    "CP",
    "EINVAL",
    "ENOMEM",
    "EPERM",
    "LINES",
    "NEXT",
    "PROCESS_C",
    "SINCE_TEMP_MM",
    "TEMP_MM",
    "V61",
    "V62",
    "V612",
    "Gen",
    "PatchingContext",
    "context",
    "default_map_window",
    "get_patch_pfn",
    "instr_words",
    "is_prefixed",
    "line",
    "mm_patch_enabled",
    "random_patching_addr",
]

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"


def _routines_of(module: Any) -> list[Any]:
    """Every ``@routine`` function a module defines, in definition order."""
    return [fn for fn in vars(module).values()
            if callable(fn) and hasattr(fn, "__fuzzer_routine__") and fn.__module__ == module.__name__]


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [fn for mod in (common, v61, temp_mm, v612) for fn in _routines_of(mod)]


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    # empty_zero_page: a page of the linear map just past kernel text.
    machine.attach("empty_zero_page", machine.layout.page_offset + 0x0280_0000)


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [
        Invariant("patch window", invariants.patch_window,
                  doc="a loaded patching mm means IRQs off, on its own CPU only"),
        Invariant("patching mapping private", invariants.mapping_private,
                  doc="no CPU but its owner holds a translation of a patching address"),
        Invariant("patching mapping removed", invariants.nothing_left_mapped, when="end",
                  doc="no PTE and no TLB entry left at any patching address"),
        Invariant("patching context per online CPU", invariants.contexts_match_cpus, when="end",
                  doc="static key on: every online CPU has a context, an offline CPU none"),
        Invariant("patching mm leak", invariants.no_leaks, when="end",
                  doc="every patching mm allocated is either in use by its CPU or freed"),
        Invariant("patching address bounds", invariants.addr_bounds, when="end",
                  doc="each patching address is page-aligned and within the randomisation bounds"),
        Invariant("breakpoints restored", invariants.breakpoints_restored, when="end",
                  doc="outside the patch window the DAWRs match current_brk"),
    ]
