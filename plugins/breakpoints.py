"""Hardware breakpoints: DAWR/DAWRX slots per CPU, userspace and perf watchpoints.

The slot count is ``CONFIG_PPC_NR_DAWR`` (POWER10 has two). Each CPU has
the intended state, ``current_brk``, beside the live DAWRs; the temp-mm
patching path suspends the DAWRs and restores them from ``current_brk``
(arch/powerpc/kernel/process.c, from the same series as c28c15b6d28a). A
watchpoint may point at any user address, including the patching address
another mm maps to kernel text, and may watch kernel-mode accesses (a perf
event without exclude_kernel): if one fires inside the patch window, that
is a failure. Follows arch/powerpc/kernel/hw_breakpoint.c at v6.1-v6.2.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from fuzzer import Breakpoint, Operation, RunConfig, hookimpl, routine
from fuzzer.kernel import context, dawr_slots

if TYPE_CHECKING:
    from fuzzer import Cpu

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]
HW_BREAKPOINT_C = "arch/powerpc/kernel/hw_breakpoint.c"
EINVAL = 22
HW_BREAKPOINT_SIZE = 8
#: Page offsets worth watching: where the modelled text sites sit in their page.
WATCH_OFFSETS = (0x0, 0x100, 0x200, 0x400, 0xA000)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [hw_breakpoint_install]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    slots = dawr_slots(config.config)
    return [
        Operation(
            "breakpoints.set",
            op_set,
            {
                "slot": st.integers(0, slots - 1),
                "watch": st.integers(0, config.cpus),
                "offset": st.sampled_from(WATCH_OFFSETS),
                "length": st.sampled_from((8, 64, 512)),
                "kernel": st.booleans(),
            },
            doc="perf/ptrace watchpoint on this CPU, at a CPU's patching address or a user address",
            comm="perf",
        ),
        Operation("breakpoints.clear", op_clear, {"slot": st.integers(0, slots - 1)},
                  doc="remove the watchpoint in a slot of this CPU", comm="perf"),
    ]


def validate(addr: int, length: int) -> bool:
    """``hw_breakpoint_validate_len()`` for DAWR: the aligned range stays in one 512-byte block."""
    start = addr & ~(HW_BREAKPOINT_SIZE - 1)
    end = (addr + length + HW_BREAKPOINT_SIZE - 1) & ~(HW_BREAKPOINT_SIZE - 1)
    return start >> 9 == (end - 1) >> 9


@routine("arch_install_hw_breakpoint", HW_BREAKPOINT_C)
def hw_breakpoint_install(cpu: Cpu, slot: int, brk: Breakpoint | None) -> Gen:
    """``arch_install_hw_breakpoint()`` -> ``__set_breakpoint()`` (hw_breakpoint.c, process.c).

    Records the breakpoint in ``current_brk[slot]`` and programs the DAWR.
    """
    cpu.current_brk[slot] = brk
    yield from cpu.k.set_hw_breakpoint(cpu, slot, brk)


def op_set(cpu: Cpu, slot: int, watch: int, offset: int, length: int, kernel: bool) -> Gen:
    """Set a watchpoint: on CPU ``watch``'s patching address, or (``watch`` = the CPU
    count) on this task's own stack page."""
    m = cpu.m
    if watch < len(m.cpus):
        ctx = context(m.cpus[watch])
        base = ctx.addr
        if not base:
            return -EINVAL  # that CPU has no patching address
    else:
        base = cpu.current.user_sp & ~(m.run.page_size - 1)
    addr = base + offset
    if not validate(addr, length):
        return -EINVAL
    yield  # perf_event_open / ptrace(PPC_PTRACE_SETHWDEBUG)
    flags = cpu.local_irq_save()
    yield from cpu.k.arch_install_hw_breakpoint(cpu, slot, Breakpoint(addr, length, kernel=kernel))
    cpu.local_irq_restore(flags)
    return 0


def op_clear(cpu: Cpu, slot: int) -> Gen:
    yield
    flags = cpu.local_irq_save()
    yield from cpu.k.arch_install_hw_breakpoint(cpu, slot, None)
    cpu.local_irq_restore(flags)
    return 0
