"""The breakpoints plugin: DAWR rules, suspend/restore around the temp mm, firing in the window."""

from __future__ import annotations

import pytest

from fuzzer import Breakpoint, HardwareViolation, Step
from fuzzer._machine import Machine
from fuzzer.kernel.patching import context
from fuzzer_plugins.breakpoints import validate

from modelkit import boot_steps, make_model, replay


def _set(cpu, **args):
    base = {"slot": 0, "watch": 0, "offset": 0, "length": 8, "kernel": False}
    return [Step("start", cpu=cpu, name="breakpoints.set", args={**base, **args}),
            Step("run", cpus=[cpu] * 10)]


def _patch(cpu, key=0):
    return [Step("start", cpu=cpu, name="jump_label.toggle", args={"key": key}),
            Step("run", cpus=[cpu] * 200)]


def test_dawr_ranges_may_not_cross_512_bytes():
    assert validate(0x1000, 512)
    assert not validate(0x1100, 512)
    assert validate(0x11F8, 8) and not validate(0x11FC, 8)


def test_a_crossing_watchpoint_is_rejected_before_the_hardware():
    m, failure = replay(make_model(), [*boot_steps(), *_set(0, offset=0x100, length=512)])
    assert failure is None
    assert m.cpus[0].current_brk == [None] and m.cpus[0].dawr == [None]


def test_programming_a_crossing_range_is_a_hardware_violation():
    m = Machine(make_model())
    cpu = m.cpus[0]
    gen = cpu.k.set_hw_breakpoint(cpu, 0, Breakpoint(0x11F0, 32))
    with pytest.raises(HardwareViolation):
        for _ in gen:
            pass


@pytest.mark.parametrize("kernel", ["v6.2", "next-20221215"])
def test_breakpoints_are_suspended_for_the_patch_and_restored_after(kernel):
    config = ["CONFIG_DEBUG_VM=n"] if kernel == "next-20221215" else []
    steps = [*boot_steps(), *_set(0, kernel=True, length=512), *_patch(0)]
    m, failure = replay(make_model(kernel, config=config), steps)
    assert failure is None
    cpu = m.cpus[0]
    brk = cpu.current_brk[0]
    assert brk is not None and brk.addr == context(cpu).addr  # it watched the patching page
    assert cpu.dawr == cpu.current_brk


def test_v61_alias_path_does_not_need_suspension():
    """On v6.1 the alias is a kernel address; a perf kernel watchpoint there may fire."""
    steps = [*boot_steps(), *_set(0, kernel=True, length=512), *_patch(0)]
    _, failure = replay(make_model("v6.1"), steps)
    assert failure is None


def test_two_slots_with_nr_dawr_2():
    model = make_model(config=["CONFIG_PPC_NR_DAWR=2"])
    steps = [*boot_steps(), *_set(0, slot=1, offset=0x400, length=64), *_patch(0)]
    m, failure = replay(model, steps)
    assert failure is None
    assert len(m.cpus[0].dawr) == 2 and m.cpus[0].dawr[1] is not None
