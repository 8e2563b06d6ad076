"""A perf NMI handler that walks the user stack without asking ``nmi_uaccess_okay()``.

An NMI can land inside ``__text_poke``'s window, where the loaded mm is
``poking_mm``: a user address read there goes through the poking mapping of
kernel text, not the interrupted task's memory -- why ``nmi_uaccess_okay()``
exists (arch/x86/mm/tlb.c). The core's ``copy_from_user`` check catches it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from fuzzer import RunConfig, hookimpl, routine
from fuzzer_x86 import EVENTS_CORE_C, X86_VERSIONS

if TYPE_CHECKING:
    from fuzzer import Cpu


@routine("perf_callchain_user", EVENTS_CORE_C, versions=X86_VERSIONS, override=True)
def perf_callchain_user_unchecked(cpu: Cpu) -> Generator[Any, None, Any]:
    """``perf_callchain_user()`` without the ``nmi_uaccess_okay()`` test (the mistake)."""
    task = cpu.current
    yield
    if task.user_sp:
        cpu.m.copy_from_user(cpu, task.user_sp)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [perf_callchain_user_unchecked] if config.arch == "x86" else []
