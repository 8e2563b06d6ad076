"""Optimized kprobes (powerpc selects HAVE_OPTPROBES): a branch to a detour buffer instead of a trap.

Follows kernel/kprobes.c (``try_to_optimize_kprobe``, ``kprobe_optimizer``) and
arch/powerpc/kernel/optprobes.c, the same at v6.1 and v6.12 but for the
trampoline's name. Registering a probe on an instruction that can be
emulated builds a detour buffer in ``optinsn_slot`` (kernel text, so every
word goes through ``patch_instruction``): the template, the address of the
probe, calls to ``optimized_callback`` and ``emulate_step``, the probed
instruction, and a branch back. Later a kworker (``kprobe_optimizer``, the
delayed work) swaps the trap for ``b buffer`` -- one more ``patch_instruction``.
A CPU that fetches that branch runs the buffer: every word of it must be the
finished detour (the fetch check below), and the buffer must outlive every
CPU inside it.

Simplified: the optimizer runs when the walk starts it (operation
``optprobes.optimizer``, a kworker), not after OPTIMIZE_DELAY; disabling or
unregistering an optimized probe takes the forced path (``force_unoptimize_kprobe``:
branch -> trap, then ``arch_disarm_kprobe``: trap -> original) at once rather
than queueing it for the optimizer; prefixed instructions are not optimized;
the 64-bit immediate loads are two words, not five.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer import (
    PAGE_OFFSET,
    ConfigOption,
    Initcall,
    InvariantViolation,
    Operation,
    RunConfig,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
)
from fuzzer.kernel import down_read, synchronize_rcu_tasks, tasks_rcu_enter, tasks_rcu_exit, up_read
from fuzzer_plugins.kprobes import KPROBES_C, SYMBOLS, Kprobe, kstate

if TYPE_CHECKING:
    from fuzzer import Cpu, Machine

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]
OPTPROBES_C = "arch/powerpc/kernel/optprobes.c"
#: ``optinsn_slot`` (arch/powerpc/kernel/optprobes_head.S): in kernel text, near the probes.
OPTINSN_SLOT = PAGE_OFFSET + 0x0005_C000
SLOTS = 4
SLOT_WORDS = 16
#: optprobe_template_entry..: saving the registers and setting up the call (model words).
TEMPLATE = (0xF821_FE81, 0x7C08_02A6, 0xF801_0190, 0xFBC1_0170, 0x3881_0000, 0x6000_0000,
            0x6000_0000, 0x6000_0000, 0x6000_0000, 0x6000_0000, 0x6000_0000, 0x6000_0000,
            0x6000_0000)
#: Indices of the fixed-up words (TMPL_OP_IDX, TMPL_CALL_HDLR_IDX, TMPL_EMULATE_IDX,
#: TMPL_INSN_IDX, TMPL_RET_IDX).
OP_IDX, CALL_IDX, EMU_IDX, INSN_IDX, RET_IDX = 5, 7, 8, 9, 12
BL_CALLBACK = 0x4800_0001 | 0x0400
BL_EMULATE = 0x4800_0001 | 0x0500


def branch(frm: int, to: int, link: bool = False) -> int:
    """``create_branch``: ``b``/``bl`` with a 26-bit signed offset (within 32MB)."""
    return 0x4800_0000 | ((to - frm) & 0x03FF_FFFC) | int(link)


def branch_target(at: int, word: int) -> int | None:
    """Where an I-form ``b`` at ``at`` goes, or None if ``word`` is not one."""
    if word >> 26 != 18 or word & 3:
        return None
    off = word & 0x03FF_FFFC
    if off & 0x0200_0000:
        off -= 0x0400_0000
    return at + off


@attrs.define(eq=False)
class Optimized:
    """A ``struct optimized_kprobe``: its detour buffer and where it stands."""

    kp: Kprobe
    buff: int
    words: tuple[int, ...]
    """The finished detour, as ``arch_prepare_optimized_kprobe`` leaves it."""
    queued: bool = False
    """On ``optimizing_list`` (KPROBE_FLAG_OPTIMIZED set, branch not yet in place)."""
    optimized: bool = False
    """The branch is in the text."""

    @property
    def branch(self) -> int:
        """The ``b buffer`` that replaces the trap."""
        return branch(self.kp.addr, self.buff)


@attrs.define(eq=False)
class OptState:
    free: list[int] = attrs.Factory(list)
    ops: dict[int, Optimized] = attrs.Factory(dict)
    """By probe address."""
    by_buff: dict[int, Optimized] = attrs.Factory(dict)
    allow: bool = False
    """``kprobes_allow_optimization``: set by init_optprobes (subsys_initcall)."""


def ostate(m: Machine) -> OptState:
    return m.state["optprobes"]


def enabled(config: RunConfig) -> bool:
    return config.enabled("CONFIG_OPTPROBES")


@hookimpl
def fuzzer_addconfig() -> list[ConfigOption]:
    return [ConfigOption("CONFIG_OPTPROBES", True, "kprobes jump optimization (powerpc"
                         " HAVE_OPTPROBES): a branch to a detour buffer replaces the trap",
                         arch="powerpc")]


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    if not enabled(machine.run):
        return
    machine.write_text(OPTINSN_SLOT, [0] * (SLOTS * SLOT_WORDS))  # .space in .text
    machine.attach("optprobes", OptState(
        free=[OPTINSN_SLOT + 4 * SLOT_WORDS * i for i in range(SLOTS)]))


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    if not enabled(config):
        return []
    return [try_to_optimize_kprobe, arch_prepare_optimized_kprobe, optimize_kprobe,
            unoptimize_kprobe, kprobe_optimizer, arch_optimize_kprobes, optimize_all_kprobes,
            optimized_callback, free_aggr_kprobe]


@hookimpl
def fuzzer_initcalls(config: RunConfig) -> list[Initcall]:
    if not enabled(config):
        return []
    return [Initcall("init_optprobes", init_optprobes, level="subsys")]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    if not enabled(config):
        return []
    return [Operation("optprobes.optimizer", op_optimizer, {},
                      doc="the delayed kprobe_optimizer work: swap queued probes' traps for"
                          " branches", comm="kworker/u8:1", kthread=True)]


def init_optprobes(cpu: Cpu) -> Gen:
    """``init_optprobes()`` (kernel/kprobes.c:2762 v6.1), a subsys_initcall."""
    if "kprobes" not in cpu.m.state:  # the kprobes plugin is blocked: no kprobes at all
        return 0
    return (yield from cpu.k.optimize_all_kprobes(cpu))


def op_optimizer(cpu: Cpu) -> Gen:
    if "kprobes" not in cpu.m.state:
        return 0
    return (yield from cpu.k.kprobe_optimizer(cpu))


# ---------------------------------------------------------------------------
# Preparing: the detour buffer
# ---------------------------------------------------------------------------


def can_optimize(m: Machine, kp: Kprobe) -> int:
    """``can_optimize()`` (optprobes.c:47): the NIP after emulating the probed instruction,
    or 0. The trampoline's nop always; other kernel text unless the instruction is a
    conditional branch or cannot be emulated, or emulating it with the dummy registers
    gives NIP 0 (a return: ``blr``)."""
    if kp.addr == PAGE_OFFSET + SYMBOLS["__kretprobe_trampoline"].offset:
        return kp.addr + 4
    # Prefixed (opcode 1); conditional branches (16); and the XL-form branches (19:
    # blr, bctr), whose target emulate_step takes from the dummy pt_regs' LR or CTR, 0.
    return 0 if kp.opcode >> 26 in (1, 16, 19) else kp.addr + 4


def detour(buff: int, kp: Kprobe, nip: int) -> tuple[int, ...]:
    words = list(TEMPLATE)
    words[OP_IDX] = 0x3C60_0000 | (kp.addr >> 16 & 0xFFFF)
    words[OP_IDX + 1] = 0x6063_0000 | (kp.addr & 0xFFFF)
    words[CALL_IDX] = BL_CALLBACK
    words[EMU_IDX] = BL_EMULATE
    words[INSN_IDX] = 0x3C80_0000 | (kp.opcode >> 16)
    words[INSN_IDX + 1] = 0x6084_0000 | (kp.opcode & 0xFFFF)
    words[RET_IDX] = branch(buff + 4 * RET_IDX, nip)
    return tuple(words)


@routine("try_to_optimize_kprobe", KPROBES_C)
def try_to_optimize_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``try_to_optimize_kprobe()`` (kernel/kprobes.c:851, v6.1 and v6.12), at the end of
    ``register_kprobe`` (:1686 v6.1).

    Under ``cpus_read_lock``, ``jump_label_lock`` (not modelled) and ``text_mutex``:
    ``alloc_aggr_kprobe`` -> ``arch_prepare_optimized_kprobe``; on success
    ``optimize_kprobe`` (which only queues it, and only once optimization is allowed).
    """
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    op = yield from cpu.k.arch_prepare_optimized_kprobe(cpu, kp)
    if op is not None:
        ostate(m).ops[kp.addr] = op
        ostate(m).by_buff[op.buff] = op
        yield from cpu.k.optimize_kprobe(cpu, kp)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])


@routine("arch_prepare_optimized_kprobe", OPTPROBES_C)
def arch_prepare_optimized_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``arch_prepare_optimized_kprobe()`` (optprobes.c:154-249, v6.1 and v6.12).

    ``can_optimize`` (-EILSEQ: stays a trap probe); a slot of ``optinsn_slot``
    (-ENOMEM); then, one ``patch_instruction`` each, the template (:191-196), the
    probe's address (:202), the calls to ``optimized_callback`` and
    ``emulate_step`` (:223-224), the probed instruction (:230) and the branch
    back to the NIP (``patch_branch``, :235); ``flush_icache_range``.
    """
    m = cpu.m
    s = ostate(m)
    yield
    nip = can_optimize(m, kp)
    if not nip or not s.free:
        return None
    buff = s.free.pop(0)
    words = detour(buff, kp, nip)
    fixups = (OP_IDX, OP_IDX + 1, CALL_IDX, EMU_IDX, INSN_IDX, INSN_IDX + 1, RET_IDX)
    for i, w in [*enumerate(TEMPLATE), *((i, words[i]) for i in fixups)]:
        err = yield from cpu.k.patch_instruction(cpu, buff + 4 * i, w)
        if err:
            s.free.insert(0, buff)
            return None
    return Optimized(kp, buff, words)


def op_of(m: Machine, kp: Kprobe) -> Optimized | None:
    """The ``optimized_kprobe`` that the hashed probe ``kp`` is, or None.

    In the kernel the optimized probe is an aggregator of its own (``try_to_optimize_kprobe``
    -> ``init_aggr_kprobe(ap, p)``, kernel/kprobes.c:877 v6.12), so it belongs to one
    registration: a probe registered at the same address after the last one was unhashed
    (``hlist_del_rcu``, :1823) is a new plain probe, not ready to optimize
    (``kprobe_optready``, :448), however long the old one's bottom half takes to free its
    detour. The model keeps ``ops`` by address and the optimized probe's first kprobe in
    ``op.kp``: the entry is ``kp``'s only when ``kp`` is that kprobe or its aggregator."""
    op = ostate(m).ops.get(kp.addr)
    if op is None or not (op.kp is kp or op.kp.parent is kp):
        return None
    return op


@routine("optimize_kprobe", KPROBES_C, inlined=True)
def optimize_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``optimize_kprobe()`` (kernel/kprobes.c:678-683 v6.12): nothing unless ``kp`` is an
    optimized probe (``kprobe_optready``), optimization is allowed and the probe is armed;
    else put it on ``optimizing_list`` and kick the optimizer."""
    yield from ()
    op = op_of(cpu.m, kp)
    if op is None or not ostate(cpu.m).allow or not kp.armed or op.optimized:
        return
    op.queued = True


@routine("unoptimize_kprobe", KPROBES_C, inlined=True)
def unoptimize_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``unoptimize_kprobe()`` (kernel/kprobes.c:727) for a probe about to be disarmed.

    Only queued: take it off ``optimizing_list``. Branch in place: the model takes
    the forced path, ``force_unoptimize_kprobe`` (:719) -> ``arch_unoptimize_kprobe``
    (optprobes.c:284) = ``arch_arm_kprobe``: the trap back over the branch.
    """
    op = op_of(cpu.m, kp)
    if op is None:
        return
    op.queued = False
    if op.optimized:
        yield from cpu.k.arch_arm_kprobe(cpu, kp)
        op.optimized = False


@routine("optimize_all_kprobes", KPROBES_C)
def optimize_all_kprobes(cpu: Cpu) -> Gen:
    """``optimize_all_kprobes()`` (kernel/kprobes.c:886): under ``kprobe_mutex`` and
    ``cpus_read_lock``, allow optimization and ``optimize_kprobe`` every probe."""
    m = cpu.m
    yield from mutex_lock(cpu, kstate(m).kprobe_mutex)
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    ostate(m).allow = True
    for p in list(kstate(m).table.values()):
        yield from cpu.k.optimize_kprobe(cpu, p)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_unlock(cpu, kstate(m).kprobe_mutex)
    return 0


# ---------------------------------------------------------------------------
# The optimizer: trap -> branch
# ---------------------------------------------------------------------------


@routine("kprobe_optimizer", KPROBES_C)
def kprobe_optimizer(cpu: Cpu) -> Gen:
    """``kprobe_optimizer()`` (kernel/kprobes.c:607-643, v6.1 and v6.12), the delayed work.

    Under ``kprobe_mutex``, ``cpus_read_lock`` and ``text_mutex``: unoptimize what
    is queued for it (nothing, in the model), ``synchronize_rcu_tasks()`` (:628),
    ``do_optimize_kprobes`` -> ``arch_optimize_kprobes`` for ``optimizing_list``.
    """
    m = cpu.m
    yield from mutex_lock(cpu, kstate(m).kprobe_mutex)
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    yield from synchronize_rcu_tasks(cpu)
    queued = [op for op in ostate(m).ops.values() if op.queued]
    if queued:
        yield from cpu.k.arch_optimize_kprobes(cpu, queued)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_unlock(cpu, kstate(m).kprobe_mutex)


@routine("arch_optimize_kprobes", OPTPROBES_C)
def arch_optimize_kprobes(cpu: Cpu, oplist: list[Optimized]) -> Gen:
    """``arch_optimize_kprobes()`` (optprobes.c:266-281): for each, back up the probed
    word, ``create_branch(addr -> buffer)`` and ``patch_instruction`` it over the trap."""
    for op in oplist:
        err = yield from cpu.k.patch_instruction(cpu, op.kp.addr, branch(op.kp.addr, op.buff))
        op.queued = False
        op.optimized = not err


@routine("free_aggr_kprobe", KPROBES_C)
def free_aggr_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """The end of an optimized probe (``do_free_cleaned_kprobes``, kernel/kprobes.c:583 ->
    ``free_aggr_kprobe`` -> ``arch_remove_optimized_kprobe``, optprobes.c:118), which the
    kernel reaches from ``kprobe_optimizer`` after its ``synchronize_rcu_tasks()`` (:628):
    no CPU is still inside the detour; then the slot is free for another.

    ``kp`` is the unhashed probe that ``__unregister_kprobe_bottom`` frees (kernel/kprobes.c:
    1833-1838 v6.12): its own optimized probe, found by identity -- not whatever a later
    registration at the same address has optimized since (``op_of``)."""
    s = ostate(cpu.m)
    op = next((o for o in s.by_buff.values() if o.kp is kp or o.kp.parent is kp), None)
    if op is None:
        return
    if s.ops.get(kp.addr) is op:
        del s.ops[kp.addr]
    yield from synchronize_rcu_tasks(cpu)
    del s.by_buff[op.buff]
    s.free.append(op.buff)
    s.free.sort()


# ---------------------------------------------------------------------------
# Running through the branch
# ---------------------------------------------------------------------------


@routine("optimized_callback", OPTPROBES_C)
def optimized_callback(cpu: Cpu, addr: int, word: int) -> Gen:
    """A CPU executes ``b buffer`` at a probe: the detour (optprobe_template_entry ..
    ``optimized_callback``, optprobes.c:96, then ``emulate_step`` and the branch back).

    Every word it fetches must be the finished detour of a live optimized probe:
    the branch may only go in once the buffer is complete, and the buffer may
    only be freed or reused once no CPU can be inside it (a tasks-RCU read side).
    """
    m = cpu.m
    buff = branch_target(addr, word)
    tasks_rcu_enter(cpu)  # the detour runs preemptible: only tasks RCU waits for it
    op = ostate(m).by_buff.get(buff) if buff is not None else None
    for i in range(SLOT_WORDS if op is None else len(op.words)):
        yield  # fetch and run the next word of the detour
        got = m.fetch(cpu, buff + 4 * i) if buff is not None else 0
        if op is None or op.kp.addr != addr or got != op.words[i]:
            raise InvariantViolation(
                "optprobe detour complete",
                f"CPU {cpu.n} branched from {addr:#x} into {buff:#x} and fetched {got:#010x}"
                f" at word {i}: not the finished detour of the probe there",
            )
        if i == CALL_IDX:  # optimized_callback -> opt_pre_handler: each enabled probe's handler
            p = kstate(m).table.get(addr)
            for q in (p.children if p.children is not None else (p,)) if p is not None else ():
                if not q.disabled:
                    q.hits += 1
    tasks_rcu_exit(cpu)
