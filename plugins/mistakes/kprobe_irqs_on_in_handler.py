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
insn slot is freed; A or another CPU registers a new probe into that slot;
B single-steps the slot and runs another probe's instruction. As with a
slot freed before the grace period, B must stay paused between its lookup
and its single-step for some forty emulated steps of the other CPUs.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, InvariantViolation, KernelFailure, RunConfig, hookimpl, routine

from ..kprobes import ARCH_KPROBES_C, BREAKPOINT_INSTRUCTION, _read_inst, kstate


@routine("kprobe_handler", ARCH_KPROBES_C, override=True)
def kprobe_handler(cpu: Cpu, addr: int) -> Generator[Any, None, Any]:
    """kprobe_handler entered with interrupts enabled (restored on the way out)."""
    m = cpu.m
    cpu.irqs_enabled = True  # interrupt_cond_local_irq_enable(), moved up
    yield
    m.note_access(cpu, ("kprobe table", addr), False)
    probes = kstate(m).table.get(addr)
    if probes:
        p = probes[0]
        for q in probes:
            q.hits += 1
        yield  # single-step the instruction in the slot
        copied = _read_inst(m, cpu, p.insn_slot)
        if copied & 0xFFFF_FFFF != p.opcode:
            raise InvariantViolation(
                "kprobe insn slot",
                f"slot {p.insn_slot:#x} holds {copied:#x}, not the probed {p.opcode:#x}",
            )
        cpu.irqs_enabled = False
        return 1
    if m.fetch(cpu, addr) != BREAKPOINT_INSTRUCTION:
        cpu.irqs_enabled = False
        return 1
    raise KernelFailure(
        f"Oops: Exception in kernel mode, sig: 5 (unexpected trap at {addr:#x})",
        at=f"{ARCH_KPROBES_C}:346",
    )


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [kprobe_handler]
