"""Optimized kprobes: the detour buffer built with patch_instruction, then the branch swapped in."""

from __future__ import annotations

import pytest

from fuzzer import PAGE_OFFSET, Step
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer_plugins.kprobes import BREAKPOINT_INSTRUCTION, SYMBOLS, kstate, site_addr
from fuzzer_plugins.optprobes import branch, branch_target, op_at, ostate

from modelkit import boot_steps, make_model


def _run(m: Machine, *steps: Step) -> None:
    for step in steps:
        apply_step(m, step)
        m.run_to_completion()


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2", "v6.12"])
@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_register_builds_the_detour_and_the_optimizer_swaps_the_trap_for_a_branch(kernel, mmu):
    m = Machine(make_model(kernel, mmu=mmu))
    _run(m, boot_steps()[0], Step("online", cpu=1))
    trampoline = PAGE_OFFSET + SYMBOLS["__kretprobe_trampoline"].offset
    # init_optprobes queued it; the boot's optimizer run, OPTIMIZE_DELAY later, optimized it.
    assert ostate(m).allow and op_at(m, trampoline).optimized and not op_at(m, trampoline).queued
    assert m.fetch(m.cpus[0], trampoline) == branch(trampoline, op_at(m, trampoline).buff)
    _run(m, Step("start", cpu=0, name="kprobes.register", args={"site": 0}))
    addr = site_addr(0)
    op = op_at(m, addr)
    cpu0 = m.cpus[0]
    assert [m.fetch(cpu0, op.buff + 4 * i) for i in range(len(op.words))] == list(op.words)
    assert m.fetch(cpu0, addr) == BREAKPOINT_INSTRUCTION  # a trap until the optimizer runs
    _run(m, Step("start", cpu=1, name="optprobes.optimizer", args={}))
    assert m.fetch(cpu0, addr) == branch(addr, op.buff) and op.optimized
    assert branch_target(addr, m.fetch(cpu0, addr)) == op.buff
    assert m.fetch(cpu0, trampoline) == branch(trampoline, op_at(m, trampoline).buff)
    _run(m, Step("start", cpu=1, name="kprobes.hit", args={"site": 0}))
    assert kstate(m).user[(0, 0)].hits == 1  # through the detour, not the trap
    _run(m, Step("start", cpu=0, name="kprobes.disable", args={"site": 0}))
    # Queued for the optimizer (unoptimize_kprobe, kernel/kprobes.c:762): the branch stays.
    assert m.fetch(cpu0, addr) == branch(addr, op.buff) and op.lst == "unoptimizing_list"
    _run(m, Step("start", cpu=1, name="optprobes.optimizer", args={}))
    assert m.fetch(cpu0, addr) == m.pristine_text[addr - PAGE_OFFSET] and not op.optimized
    assert op.lst is None and not op.flag
    _run(m, Step("start", cpu=0, name="kprobes.unregister", args={"site": 0}))
    assert op_at(m, addr) is None and op.buff in ostate(m).free
    m.check_end_state()


@pytest.mark.parametrize("site", [5, 7])  # paddi (prefixed), blr after it
def test_prefixed_and_return_instructions_stay_trap_probes(site):
    m = Machine(make_model("v6.2"))
    _run(m, boot_steps()[0], Step("start", cpu=0, name="kprobes.register", args={"site": site}))
    assert op_at(m, site_addr(site)) is None


def test_without_optprobes_nothing_is_optimized():
    model = make_model("v6.2", config=["CONFIG_OPTPROBES=n"])
    assert "optprobes.optimizer" not in [op.name for op in model.operations]
    m = Machine(model)
    _run(m, boot_steps()[0])
    assert "optprobes" not in m.state
