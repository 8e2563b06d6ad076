"""Patching a multi-instruction sequence first word to last (cf. 49b39ec248af).

Enabling writes ``mflr``, then ``bl``, then ``mtlr``: between the second and
third patch the sequence branches without restoring LR. A CPU taking an
exception then -- another CPU's interrupt, or the patching CPU's own hash
fault on the patching alias -- runs it and crashes.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine

from ..fixups import FEATURE_FIXUPS_C, NEW, OLD, SEQUENCE_AT


@routine("do_entry_flush_fixups", FEATURE_FIXUPS_C, override=True)
def do_entry_flush_fixups(cpu: Cpu, enable: bool) -> Generator[Any, None, Any]:
    """do_entry_flush_fixups patching in address order."""
    target = NEW if enable else OLD
    for i in range(len(target)):
        yield from cpu.k.patch_instruction(cpu, SEQUENCE_AT + 4 * i, target[i])


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [do_entry_flush_fixups]
