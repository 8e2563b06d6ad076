"""kprobe_handler without the "trap removed right after we hit it" re-check.

``kprobe_handler()`` (arch/powerpc/kernel/kprobes.c:293-311, v6.12) finds no
probe at the trapping address and then reads the instruction again: if it is
no longer the breakpoint, another CPU removed the probe after this CPU hit it,
and the handler returns 1 so the original instruction runs again. The variant
drops that re-check and treats every probe-less trap as someone else's, so
the program check becomes an oops.

The bad interleaving needs two CPUs and three events in order: CPU B executes
an armed probe's trap (the fetch); CPU A, in ``unregister_kprobe``, patches
the original instruction back and unhashes the probe -- a dozen emulated
steps -- while B stays between its fetch and its table lookup; then B looks
the address up and finds nothing. The re-check exists because of exactly
this race (it is in the first powerpc kprobes, 2.6.12, and in every
architecture's handler since).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, KernelFailure, RunConfig, hookimpl, routine
from fuzzer.kernel import deref

from ..kprobes import ARCH_KPROBES_C, get_kprobe, single_step_slot


@routine("kprobe_handler", ARCH_KPROBES_C, override=True)
def kprobe_handler(cpu: Cpu, addr: int) -> Generator[Any, None, Any]:
    """kprobe_handler with no second look at the text when no probe is registered."""
    m = cpu.m
    yield
    m.note_access(cpu, ("kprobe table", addr), False)
    p = get_kprobe(m, addr)
    if p is not None:
        p = deref(p, "struct kprobe", member="pre_handler")
        for q in p.children if p.children is not None else (p,):
            q = deref(q, "struct kprobe", member="pre_handler")
            if not q.disabled:
                q.hits += 1
        yield  # single-step the instruction in the slot
        single_step_slot(m, cpu, p)
        return 1
    raise KernelFailure(
        f"Oops: Exception in kernel mode, sig: 5 (unexpected trap at {addr:#x})",
        at=f"{ARCH_KPROBES_C}:346",
    )


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [kprobe_handler]
