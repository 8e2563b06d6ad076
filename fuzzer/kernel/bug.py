"""``WARN_ON`` that need not end the example: lib/bug.c's ``report_bug`` and kernel/panic.c's ``__warn``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuzzer._errors import KernelWarning

if TYPE_CHECKING:
    from fuzzer._machine import Cpu


def warn(cpu: Cpu, at: str, *, function: str = "", detail: str = "", once: bool = True) -> None:
    """A ``WARN_ON`` firing at ``at`` (kernel ``file:line``) on ``cpu``: call it where the
    kernel goes on after the warning, then go on as the kernel does.

    It returns (the WARNING printed) or raises :class:`fuzzer.KernelWarning`, as the
    run's ``--panic-on-warn`` says (:meth:`fuzzer.Machine.warn`). ``once``: the site is a
    ``WARN_ON_ONCE``/``VM_WARN_ON_ONCE`` (printed once per boot); False for ``WARN_ON``
    and ``VM_WARN_ON``. A routine that cannot go on after its WARN raises
    :class:`fuzzer.KernelWarning` itself.
    """
    cpu.m.warn(cpu, KernelWarning(at, function=function, detail=detail), once=once)
