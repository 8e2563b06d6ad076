"""An optprobe's branch written before its detour buffer is finished.

``arch_prepare_optimized_kprobe`` fills the detour buffer -- template,
fix-ups, branch back -- and only later does the optimizer swap the trap for
``b buffer`` (arch/powerpc/kernel/optprobes.c:154-249, then :266-281). This
variant puts the branch in first, as if reserving the site, and then builds
the buffer one ``patch_instruction`` at a time: a CPU that executes the
probed function meanwhile runs a half-written detour.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer_plugins.kprobes import Kprobe
from fuzzer_plugins.optprobes import (
    CALL_IDX,
    EMU_IDX,
    INSN_IDX,
    OP_IDX,
    OPTPROBES_C,
    RET_IDX,
    TEMPLATE,
    Optimized,
    branch,
    can_optimize,
    detour,
    ostate,
)


@routine("arch_prepare_optimized_kprobe", OPTPROBES_C, override=True)
def arch_prepare_optimized_kprobe(cpu: Cpu, kp: Kprobe) -> Generator[Any, None, Any]:
    """arch_prepare_optimized_kprobe() patching the branch in before the buffer."""
    m = cpu.m
    s = ostate(m)
    yield
    nip = can_optimize(m, kp)
    if not nip or not s.free:
        return None
    buff = s.free.pop(0)
    words = detour(buff, kp, nip)
    op = Optimized(kp, buff, words, in_text=True)
    s.by_buff[buff] = op
    yield from cpu.k.patch_instruction(cpu, kp.addr, branch(kp.addr, buff))
    fixups = (OP_IDX, OP_IDX + 1, CALL_IDX, EMU_IDX, INSN_IDX, INSN_IDX + 1, RET_IDX)
    for i, w in [*enumerate(TEMPLATE), *((i, words[i]) for i in fixups)]:
        yield from cpu.k.patch_instruction(cpu, buff + 4 * i, w)
    return op


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [arch_prepare_optimized_kprobe]
