"""Where optimized kprobes get their detour buffer: ``alloc_aggr_kprobe`` (kernel/kprobes.c:830-843
v6.1, the same in v6.2 and v6.12) prepares one for every aggregator it allocates -- in
``try_to_optimize_kprobe`` and in ``register_aggr_kprobe`` -- and ``arch_prepare_optimized_kprobe``
(arch/powerpc/kernel/optprobes.c:154-249) gives up only when the template cannot be copied.
Explicit schedules on one CPU at a time: the behaviour, not a search."""

from __future__ import annotations

import pytest

from fuzzer import Step
from fuzzer._machine import Machine
from fuzzer_plugins.kprobes import Kprobe, kstate, site_addr
from fuzzer_plugins.optprobes import (
    BL_CALLBACK,
    CALL_IDX,
    OPTINSN_SLOT,
    SLOT_WORDS,
    SLOTS,
    branch,
    op_at,
    ostate,
)

from modelkit import boot_steps, make_model, run_each, start_op

#: Optimizable sites (mflr, std, addi): with boot's trampoline probe, three take the other
#: three detour slots and a fourth gets none.
SITES = (0, 1, 3, 4)


_op, _run = start_op, run_each


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2", "v6.12"])
def test_an_aggregator_made_by_a_second_registration_gets_a_detour(kernel):
    """A probe registered while every detour slot is taken stays a trap probe; once a slot is
    free, a second probe there makes the aggregator, which alloc_aggr_kprobe prepares: the
    next optimize_kprobe (here enable_kprobe's arm_kprobe) queues it and the optimizer puts
    the branch in."""
    m = Machine(make_model(kernel))
    _run(m, boot_steps()[0], Step("online", cpu=1),
         *(_op(0, "kprobes.register", site=s) for s in SITES))
    assert len(ostate(m).by_buff) == SLOTS and not ostate(m).free
    late = site_addr(SITES[-1])
    assert op_at(m, late) is None  # no slot was left: a plain trap probe
    _run(m, _op(0, "kprobes.unregister", site=SITES[0]), _op(1, "optprobes.optimizer"))
    assert ostate(m).free  # the first site's detour is free again
    _run(m, _op(0, "kprobes.register", site=SITES[-1], probe=1))
    op = op_at(m, late)
    assert op is not None and op.kp is kstate(m).table[late] and op.lst is None
    _run(m, _op(0, "kprobes.disable", site=SITES[-1]), _op(0, "kprobes.disable", site=SITES[-1],
                                                           probe=1),
         _op(0, "kprobes.enable", site=SITES[-1]), _op(1, "optprobes.optimizer"))
    assert m.fetch(m.cpus[0], late) == branch(late, op.buff) and op.optimized
    _run(m, _op(1, "kprobes.hit", site=SITES[-1]))  # through the finished detour
    m.check_end_state()


def test_a_detour_whose_fixups_fail_is_ready_all_the_same():
    """Only the template's patch_instruction errors make arch_prepare_optimized_kprobe give up
    (optprobes.c:193-196, ``goto error``); the fixups' (:202-235) are not checked."""
    m = Machine(make_model("v6.12"))
    _run(m, boot_steps()[0])
    k = m.k
    real = k.patch_instruction
    failed = []

    def patch_instruction(cpu, addr, instr):
        # The fixup's bl optimized_callback (the template's own word there is a nop).
        if addr >= OPTINSN_SLOT and (addr - OPTINSN_SLOT) % (4 * SLOT_WORDS) == 4 * CALL_IDX \
                and instr == BL_CALLBACK:
            failed.append(addr)
            yield
            return -14  # -EFAULT
        return (yield from real(cpu, addr, instr))

    kp = Kprobe(site_addr(0), owner="test", opcode=m.fetch(m.cpus[0], site_addr(0)))
    k.patch_instruction = patch_instruction
    try:
        gen = k.arch_prepare_optimized_kprobe(m.cpus[0], kp)
        while True:
            next(gen)
    except StopIteration as done:
        op = done.value
    finally:
        del k.patch_instruction
    assert failed and op is not None and op.buff + 4 * CALL_IDX == failed[0]
    assert op.buff not in ostate(m).free  # the slot stays taken: the detour is ready

