"""The program check enables interrupts before kprobe_handler runs.

``do_program_check()`` (arch/powerpc/kernel/traps.c:1479-1565, v6.12) hands a
kernel trap to ``kprobe_handler`` with interrupts still hard-disabled and
enables them (``interrupt_cond_local_irq_enable``) only later, for user-mode
faults: "we also do not want to enable interrupts for kernel faults"
(:1558-1562). The variant moves the enable above the trap handling, so the
kprobe handler runs with interrupts on -- and is no longer an RCU read-side
critical section.

The bad interleaving: CPU B hits an armed probe and looks it up; CPU A
unregisters it, and its ``synchronize_rcu()`` no longer waits for B, so the
insn slot is freed; B single-steps a NULL ``p->ainsn.insn`` (an oops) or,
if another probe was registered meanwhile, that probe's instruction. As with
a slot freed before the grace period, B must stay paused between its lookup
and its single-step for the rest of A's unregister.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, KernelFailure, RunConfig, hookimpl, routine
from fuzzer.kernel import deref

from ..kprobes import ARCH_KPROBES_C, BREAKPOINT_INSTRUCTION, get_kprobe, single_step_slot


@routine("kprobe_handler", ARCH_KPROBES_C, override=True)
def kprobe_handler(cpu: Cpu, addr: int) -> Generator[Any, None, Any]:
    """kprobe_handler entered with interrupts enabled (the caller restores them after)."""
    cpu.irqs_enabled = True  # interrupt_cond_local_irq_enable(), moved up
    try:
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
        if m.fetch(cpu, addr) != BREAKPOINT_INSTRUCTION:
            return 1
        raise KernelFailure(
            f"Oops: Exception in kernel mode, sig: 5 (unexpected trap at {addr:#x})",
            at=f"{ARCH_KPROBES_C}:346",
        )
    finally:
        cpu.irqs_enabled = False


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [kprobe_handler]
