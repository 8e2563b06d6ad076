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

The optimized probe is an aggregator of its own, as in the kernel: it takes the
probe's place in the hash table (``init_aggr_kprobe``), carries ``KPROBE_FLAG_OPTIMIZED``
and sits on one of three staging lists. Disabling or unregistering it only queues it on
``unoptimizing_list`` (``unoptimize_kprobe(p, false)``; ``__disarm_kprobe`` leaves a queued
probe armed): the branch stays until the optimizer's ``do_unoptimize_kprobes`` puts the trap
back, disarms the disabled ones and unhashes the unused ones, which
``do_free_cleaned_kprobes`` frees after ``synchronize_rcu_tasks``. Meanwhile the last
probe's unregister leaves the aggregator hashed and unused, and a probe registered there
rescues it (``reuse_unused_kprobe``). kernel/kprobes.c's OPTPROBES block (:395-1030) is
line for line the same at 6.1.192 and 6.12.117; next-20221215 and v6.2 predate
4fbd2f83fda0 (``do_unoptimize_kprobes``).

The ``debug.kprobes-optimization`` sysctl (operation ``optprobes.sysctl``) allows or
forbids optimizing (``kprobes_allow_optimization``): ``unoptimize_all_kprobes`` queues every
enabled optimized probe for unoptimizing and waits for the optimizer
(``wait_for_kprobe_optimizer``, which drops ``kprobe_mutex`` while the work runs), as does
debugfs ``kprobes/enabled`` = 0 (the kprobes plugin's ``disarm_all_kprobes``), whose
``kprobes_all_disarmed`` takes ``unoptimize_kprobe``'s forced path.

Simplified: the optimizer runs when the walk starts it (operation ``optprobes.optimizer``,
a kworker), not OPTIMIZE_DELAY after a kick, and ``flush_delayed_work`` runs it on the
waiting CPU; of the forced path's callers only ``kprobes_all_disarmed`` is modelled (not
post handlers, nor module text's ``kill_optimized_kprobe``; ``get_optimized_kprobe`` finds
nothing on powerpc); prefixed instructions are not optimized; the 64-bit immediate loads
are two words, not five.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer import (
    PAGE_OFFSET,
    ConfigOption,
    Initcall,
    IntRange,
    InvariantViolation,
    KnownFinding,
    Mutex,
    Operation,
    RunConfig,
    Signature,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
)
from fuzzer.kernel import (
    EINVAL,
    down_read,
    synchronize_rcu_tasks,
    tasks_rcu_enter,
    tasks_rcu_exit,
    up_read,
    warn,
)
from fuzzer_plugins.kprobes import KPROBES_C, SYMBOLS, Kprobe, arch_remove_kprobe, kstate

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


#: ``op->list``: the staging list an optimized probe is on (kernel/kprobes.c:513-515).
OPTIMIZING, UNOPTIMIZING, FREEING = "optimizing_list", "unoptimizing_list", "freeing_list"
#: Versions whose kernel/kprobes.c predates 4fbd2f83fda0 ("kprobes: Fix to handle forcibly
#: unoptimized kprobes on freeing_list", v6.3-rc1, Cc stable): ``do_unoptimize_kprobes``
#: returns at once when ``unoptimizing_list`` is empty. v6.1 is 6.1.192, which carries it.
BEFORE_FREEING_FIX = ("next-20221215", "v6.2")
#: kernel/kprobes.c lines of the optimizer's WARN_ON_ONCEs: the same at 6.1.192 and 6.12.117
#: (the OPTPROBES block, :395-1030, is line for line the same), and at v6.2 and next-20221215:
#: 4fbd2f83fda0's hunks there (-555,17 +555,15 and -797 +795 as applied to 6.2) sit two lines
#: above 6.1.192's, and undoing its net -2 puts :589 back where it is.
WARN_LINES = {v: {"free": 589, "optimize": 711, "reuse": 777}
              for v in ("v6.1", "next-20221215", "v6.2", "v6.12")}


@attrs.define(eq=False)
class Optimized:
    """A ``struct optimized_kprobe``: its aggregator, its detour buffer, where it stands.

    ``kp`` is the aggregator ``try_to_optimize_kprobe`` made for it (``op->kp``): the kernel's
    optimized probe is always an aggregator of its own, hashed in place of the probe it was
    made for (``init_aggr_kprobe``, kernel/kprobes.c:1283-1300 v6.12)."""

    kp: Kprobe
    buff: int
    words: tuple[int, ...]
    """The finished detour, as ``arch_prepare_optimized_kprobe`` leaves it."""
    flag: bool = False
    """``KPROBE_FLAG_OPTIMIZED``: set when queued for optimizing, kept while queued for
    unoptimizing, cleared once the branch is gone (or the optimizing is cancelled)."""
    lst: str | None = None
    """``op->list``: which staging list it is on (``OPTIMIZING`` ...), None when empty."""
    in_text: bool = False
    """The branch to the detour is in the text (the model's record, as ``Kprobe.armed``)."""

    @property
    def queued(self) -> bool:
        """On ``optimizing_list``: flagged, the branch not yet in place."""
        return self.lst == OPTIMIZING

    @property
    def optimized(self) -> bool:
        """The branch is in the text."""
        return self.in_text

    @property
    def branch(self) -> int:
        """The ``b buffer`` that replaces the trap."""
        return branch(self.kp.addr, self.buff)


@attrs.define(eq=False)
class OptState:
    free: list[int] = attrs.Factory(list)
    by_buff: dict[int, Optimized] = attrs.Factory(dict)
    """Every optimized probe not yet freed (``free_aggr_kprobe``), by its detour buffer."""
    lists: dict[str, list[Optimized]] = attrs.Factory(
        lambda: {OPTIMIZING: [], UNOPTIMIZING: [], FREEING: []})
    """The staging lists, head first (``list_add`` puts an entry at the head)."""
    allow: bool = False
    """``kprobes_allow_optimization``: set by init_optprobes (subsys_initcall)."""
    sysctl_mutex: Mutex = attrs.Factory(lambda: Mutex("kprobe_sysctl_mutex"))
    """``kprobe_sysctl_mutex`` (kernel/kprobes.c:942): serializes the sysctl's writers."""
    stuck: set[int] = attrs.Factory(set)
    """CPUs sleeping in ``wait_for_kprobe_optimizer`` on an optimizer that cannot end it."""

    def move(self, op: Optimized, to: str | None) -> None:
        """``list_del_init`` (``to`` None), ``list_add`` or ``list_move`` of ``op->list``."""
        if op.lst is not None:
            self.lists[op.lst].remove(op)
        op.lst = to
        if to is not None:
            self.lists[to].insert(0, op)

    def of(self, p: Kprobe) -> Optimized | None:
        """The ``optimized_kprobe`` whose aggregator ``p`` is (``kprobe_optready``), or None."""
        return next((op for op in self.by_buff.values() if op.kp is p), None)

    def queued_probe(self, p: Kprobe) -> bool:
        """``kprobe_queued()`` (kernel/kprobes.c:475): an aggregator on a staging list."""
        op = self.of(p)
        return op is not None and op.lst is not None

    def disarmed(self, p: Kprobe) -> bool:
        """``kprobe_disarmed()`` (kernel/kprobes.c:461): disabled and on no staging list."""
        return p.disabled and not self.queued_probe(p)


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
            force_unoptimize_kprobe, unoptimize_kprobe, reuse_unused_kprobe, kprobe_optimizer,
            do_unoptimize_kprobes, arch_unoptimize_kprobes, arch_optimize_kprobes,
            do_free_cleaned_kprobes, optimize_all_kprobes, optimized_callback, free_aggr_kprobe,
            proc_kprobes_optimization_handler, unoptimize_all_kprobes,
            wait_for_kprobe_optimizer]


@hookimpl
def fuzzer_initcalls(config: RunConfig) -> list[Initcall]:
    if not enabled(config):
        return []
    return [Initcall("init_optprobes", init_optprobes, level="subsys"),
            Initcall("kprobe_optimizer", boot_optimizer, level="late")]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    if not enabled(config):
        return []
    return [Operation("optprobes.optimizer", op_optimizer, {},
                      doc="the delayed kprobe_optimizer work: swap queued probes' traps for"
                          " branches", comm="kworker/u8:1", kthread=True),
            Operation("optprobes.sysctl", op_sysctl, {"on": IntRange(0, 1)},
                      doc="write the debug.kprobes-optimization sysctl: optimize_all_kprobes()"
                          " or unoptimize_all_kprobes()", comm="sysctl")]


#: The modelled versions whose kernel/kprobes.c has both findings below: the functions they
#: run through are the same at 6.1.192, v6.2 (and next-20221215) and 6.12.118.
ALL_VERSIONS = ("v6.1", "next-20221215", "v6.2", "v6.12")


@hookimpl
def fuzzer_known_findings(config: RunConfig) -> list[KnownFinding]:
    """Two findings of debugfs ``kprobes/enabled`` = 0 with optimized probes, at every version.

    1. ``debug.kprobes-optimization`` = 0 (``unoptimize_all_kprobes``, kernel/kprobes.c:912-939)
       queues every enabled optimized probe on ``unoptimizing_list`` and drops
       ``kprobe_mutex`` to wait for the optimizer. A ``kprobes/enabled`` = 0 there
       (``disarm_all_kprobes``, :2948 v6.1, :2956 v6.12) sets ``kprobes_all_disarmed`` and
       ``__disarm_kprobe`` calls ``unoptimize_kprobe(p, true)`` (:1007 v6.1, :1006 v6.12): the
       probe is queued for unoptimizing, so the forced path puts the trap back over the branch
       and moves it to ``freeing_list`` (:744-748); still queued (``kprobe_queued``), it is not
       disarmed (:1009 v6.1, :1008 v6.12). It is not disabled either, and
       ``do_unoptimize_kprobes`` disarms only disabled probes (:568): the trap stays, its
       handlers run while kprobes are "globally disabled". An unregister then disables it without disarming
       (``__disable_kprobe``, :1740 v6.1, :1750 v6.12), unhashes it as disarmed
       (``kprobe_disarmed``, :1776 v6.1, :1786 v6.12) and frees it: a trap no kprobe owns, and the
       next CPU to execute it dies ("Oops: Exception in kernel mode, sig: 5").
    2. ``disarm_all_kprobes`` skips the kretprobe trampoline's probe
       (``arch_trampoline_kprobe``) and then ``wait_for_kprobe_optimizer`` (:647-663) loops
       while ``optimizing_list`` is not empty; if the trampoline's optimized probe is queued
       there (after boot, or after ``debug.kprobes-optimization`` 0 then 1, until the delayed
       optimizer runs OPTIMIZE_DELAY later), ``do_optimize_kprobes`` leaves it queued while
       ``kprobes_all_disarmed`` (:541) and the writer loops for ever -- until someone writes
       ``kprobes/enabled`` = 1.
    """
    if not enabled(config):
        return []
    fields: dict[str, Any] = {"kernels": ALL_VERSIONS}
    return [
        KnownFinding(
            signature=Signature("INVARIANT", "kprobes globally disarmed", ""),
            **fields,
            title=("kprobes/enabled=0 while debug.kprobes-optimization=0 waits for the optimizer:"
                   " __disarm_kprobe's forced unoptimize_kprobe(p, true) (kernel/kprobes.c:1006"
                   " in v6.12)"
                   " moves the probe queued on unoptimizing_list to freeing_list with the trap"
                   " back in the text; still queued, it is not disarmed (:1008), and"
                   " do_unoptimize_kprobes disarms only disabled probes (:568): the trap stays"
                   " armed while kprobes are globally disabled, and an unregister then frees the"
                   " probe with its trap still in the text (an oops at the next hit)"),
            fix=("none upstream that we know of; e.g. __disarm_kprobe disarms a probe the forced"
                 " path unoptimized (not optimized any more though queued), or"
                 " do_unoptimize_kprobes disarms every non-trampoline probe while"
                 " kprobes_all_disarmed"),
            reference="kernel/kprobes.c of linux-source-6.1 (6.1.192) and linux-source-6.12"
                      " (6.12.118), read line by line; not seen on a real boot",
        ),
        KnownFinding(
            signature=Signature("INVARIANT", "kprobe optimizer wait ends", ""),
            **fields,
            title=("kprobes/enabled=0 loops for ever in wait_for_kprobe_optimizer"
                   " (kernel/kprobes.c:647-663) while the kretprobe trampoline's probe, which"
                   " disarm_all_kprobes skips, waits on optimizing_list: do_optimize_kprobes"
                   " does nothing while kprobes_all_disarmed (:541)"),
            fix=("none upstream that we know of; e.g. wait_for_kprobe_optimizer waits for"
                 " optimizing_list only while optimizing can happen (!kprobes_all_disarmed"
                 " && kprobes_allow_optimization)"),
            reference="kernel/kprobes.c of linux-source-6.1 (6.1.192) and linux-source-6.12"
                      " (6.12.118), read line by line; not seen on a real boot",
        ),
    ]


def init_optprobes(cpu: Cpu) -> Gen:
    """``init_optprobes()`` (kernel/kprobes.c:2762 v6.1), a subsys_initcall."""
    if "kprobes" not in cpu.m.state:  # the kprobes plugin is blocked: no kprobes at all
        return 0
    return (yield from cpu.k.optimize_all_kprobes(cpu))


def boot_optimizer(cpu: Cpu) -> Gen:
    """The delayed ``optimizing_work`` that ``init_optprobes`` (through
    ``optimize_all_kprobes`` -> ``optimize_kprobe`` -> ``kick_kprobe_optimizer``,
    kernel/kprobes.c v6.1/v6.12) queues OPTIMIZE_DELAY (5 jiffies) ahead: it has run long
    before user space can write ``kprobes/enabled`` or the sysctl, so the boot's
    kretprobe-trampoline probe is optimized when the search starts. Modelled as the last
    initcall (the kernel runs it from a workqueue while later initcalls go on); the
    optimizer's later runs are the walk's (``optprobes.optimizer``)."""
    if "kprobes" not in cpu.m.state:
        return 0
    yield from cpu.k.kprobe_optimizer(cpu)
    return 0


def op_sysctl(cpu: Cpu, on: int) -> Gen:
    if "kprobes" not in cpu.m.state:
        return 0
    return (yield from cpu.k.proc_kprobes_optimization_handler(cpu, bool(on)))


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


def op_at(m: Machine, addr: int) -> Optimized | None:
    """The optimized probe hashed at ``addr``, or None (what tests and the table check read)."""
    p = kstate(m).table.get(addr)
    return ostate(m).of(p) if p is not None else None


def _warn_at(cpu: Cpu, which: str) -> str:
    return f"{KPROBES_C}:{cpu.m.version.lookup(WARN_LINES, 'kprobes.c optimizer lines')[which]}"


@routine("try_to_optimize_kprobe", KPROBES_C)
def try_to_optimize_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``try_to_optimize_kprobe()`` (kernel/kprobes.c:851-879, v6.1 and v6.12), at the end of
    ``register_kprobe`` (:1686 v6.1).

    Under ``cpus_read_lock``, ``jump_label_lock`` (not modelled here, though
    ``register_aggr_kprobe`` takes it: adding it moves every recorded schedule that registers
    a probe) and ``text_mutex``:
    ``alloc_aggr_kprobe`` (:830, kzalloc) -> ``arch_prepare_optimized_kprobe``; on failure
    the probe stays a plain trap probe; else ``init_aggr_kprobe(ap, kp)`` (:1283-1300 v6.12:
    the aggregator takes the probe's opcode, insn slot and flags, lists it, and replaces it
    in the hash table, ``hlist_replace_rcu``) and ``optimize_kprobe(ap)``, which only queues it.
    """
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    op = yield from cpu.k.arch_prepare_optimized_kprobe(cpu, kp)
    if op is not None:
        ap = op.kp = Kprobe(kp.addr, owner="optimized_kprobe")
        ostate(m).by_buff[op.buff] = op
        yield from cpu.k.init_aggr_kprobe(cpu, ap, kp)
        yield from cpu.k.optimize_kprobe(cpu, ap)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])


@routine("arch_prepare_optimized_kprobe", OPTPROBES_C)
def arch_prepare_optimized_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``arch_prepare_optimized_kprobe()`` (optprobes.c:154-249, v6.1 and v6.12).

    ``can_optimize`` (-EILSEQ: stays a trap probe); a slot of ``optinsn_slot``
    (-ENOMEM); then, one ``patch_instruction`` each, the template (:191-196: an error
    frees the slot, -ERANGE), the probe's address (:202), the calls to
    ``optimized_callback`` and ``emulate_step`` (:223-224), the probed instruction (:230)
    and the branch back to the NIP (``patch_branch``, :235) -- the fixups' errors are
    ignored, the detour is ready all the same; ``flush_icache_range``. Returns the
    ``optimized_kprobe`` (its ``kp`` is the caller's to set), or None. Called by
    ``alloc_aggr_kprobe`` (``try_to_optimize_kprobe``, ``register_aggr_kprobe``).
    """
    m = cpu.m
    s = ostate(m)
    yield
    nip = can_optimize(m, kp)
    if not nip or not s.free:
        return None
    buff = s.free.pop(0)
    words = detour(buff, kp, nip)
    for i, w in enumerate(TEMPLATE):
        err = yield from cpu.k.patch_instruction(cpu, buff + 4 * i, w)
        if err:
            s.free.insert(0, buff)
            return None
    for i in (OP_IDX, OP_IDX + 1, CALL_IDX, EMU_IDX, INSN_IDX, INSN_IDX + 1, RET_IDX):
        yield from cpu.k.patch_instruction(cpu, buff + 4 * i, words[i])  # errors ignored
    return Optimized(kp, buff, words)


@routine("optimize_kprobe", KPROBES_C, inlined=True)
def optimize_kprobe(cpu: Cpu, p: Kprobe) -> Gen:
    """``optimize_kprobe()`` (kernel/kprobes.c:678-716, v6.1 and v6.12; e4add247789e, v5.6).

    Nothing unless ``p`` is an optimized probe (``kprobe_optready``), optimization is allowed
    and ``p`` is enabled and kprobes are not globally disarmed (:683-685; no post handlers in
    the model; ``arch_check_optimized_kprobe`` is 0 on powerpc). Already flagged: if it is
    queued for unoptimizing, dequeue it -- the branch is still in the text -- and stop. Else
    flag it, and (``WARN_ON_ONCE`` if it is on a list already, :711) put it on
    ``optimizing_list`` and kick the optimizer."""
    yield from ()
    s = ostate(cpu.m)
    op = s.of(p)
    if op is None or not s.allow or p.disabled or kstate(cpu.m).all_disarmed:
        return
    if op.flag:
        if op.lst == UNOPTIMIZING:  # optprobe_queued_unopt(op)
            s.move(op, None)
        return
    op.flag = True
    if op.lst is not None:
        warn(cpu, _warn_at(cpu, "optimize"), function="optimize_kprobe",
             detail="WARN_ON_ONCE(!list_empty(&op->list))")
        return
    s.move(op, OPTIMIZING)


@routine("force_unoptimize_kprobe", KPROBES_C, inlined=True)
def force_unoptimize_kprobe(cpu: Cpu, op: Optimized) -> Gen:
    """``force_unoptimize_kprobe()`` (kernel/kprobes.c:719-724): ``arch_unoptimize_kprobe``
    (optprobes.c:284, ``arch_arm_kprobe``: the trap over the branch), clear the flag."""
    yield from cpu.k.arch_arm_kprobe(cpu, op.kp)
    op.in_text = False
    op.flag = False


@routine("unoptimize_kprobe", KPROBES_C, inlined=True)
def unoptimize_kprobe(cpu: Cpu, p: Kprobe, force: bool = False) -> Gen:
    """``unoptimize_kprobe()`` (kernel/kprobes.c:727-765, v6.1 and v6.12).

    Nothing for a probe that is no optimized probe, already disarmed (``kprobe_disarmed``)
    or not flagged. Queued: for unoptimizing, only ``force`` acts (``force_unoptimize_kprobe``
    and ``list_move`` to ``freeing_list``, :746-747 since 4fbd2f83fda0's parent e4add247789e);
    for optimizing, dequeue it and clear the flag (the branch was never written). Optimized:
    ``force`` unoptimizes at once; else it goes on ``unoptimizing_list`` for the optimizer --
    the branch stays in the text until ``kprobe_optimizer`` runs. ``force`` is
    ``kprobes_all_disarmed`` from ``__disarm_kprobe`` (:1007 v6.1, :1006 v6.12); post handlers and
    ``get_optimized_kprobe``'s overlaps (none on powerpc, whose MAX_OPTIMIZED_LENGTH is one
    word) are not modelled."""
    s = ostate(cpu.m)
    op = s.of(p)
    if op is None or s.disarmed(p) or not op.flag:
        return
    # The staging lists, for the interleaving feedback: the sysctl's and debugfs'
    # unoptimizing of one probe is a race (fuzzer_known_findings).
    cpu.m.note_access(cpu, ("optprobe lists", p.addr), True)
    if op.lst is not None:
        if op.lst == UNOPTIMIZING:
            if force:
                yield from cpu.k.force_unoptimize_kprobe(cpu, op)
                s.move(op, FREEING)
        else:
            s.move(op, None)
            op.flag = False
        return
    if force:
        yield from cpu.k.force_unoptimize_kprobe(cpu, op)
    else:
        s.move(op, UNOPTIMIZING)


@routine("reuse_unused_kprobe", KPROBES_C, inlined=True)
def reuse_unused_kprobe(cpu: Cpu, ap: Kprobe) -> Gen:
    """``reuse_unused_kprobe()`` (kernel/kprobes.c:768-786), from ``register_aggr_kprobe`` when
    the hashed aggregator is unused (disabled, its list empty: the last probe unregistered
    while the optimizer had yet to unoptimize it). ``WARN_ON_ONCE`` unless it is on a
    staging list (:777); enable it and ``optimize_kprobe`` it again, which takes it off
    ``unoptimizing_list`` with its branch still in place. -EINVAL if not optready."""
    s = ostate(cpu.m)
    op = s.of(ap)
    if op is None or op.lst is None:
        warn(cpu, _warn_at(cpu, "reuse"), function="reuse_unused_kprobe",
             detail="WARN_ON_ONCE(list_empty(&op->list))")
    ap.disabled = False
    if op is None:
        return -EINVAL
    yield from cpu.k.optimize_kprobe(cpu, ap)
    return 0


@routine("optimize_all_kprobes", KPROBES_C)
def optimize_all_kprobes(cpu: Cpu) -> Gen:
    """``optimize_all_kprobes()`` (kernel/kprobes.c:886-909): under ``kprobe_mutex`` (nothing
    if already allowed) and ``cpus_read_lock``, allow optimization and ``optimize_kprobe``
    every enabled hashed probe."""
    m = cpu.m
    yield from mutex_lock(cpu, kstate(m).kprobe_mutex)
    if not ostate(m).allow:
        yield from down_read(cpu, m.state["cpu_hotplug_lock"])
        ostate(m).allow = True
        for p in list(kstate(m).table.values()):
            if not p.disabled:
                yield from cpu.k.optimize_kprobe(cpu, p)
        yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_unlock(cpu, kstate(m).kprobe_mutex)
    return 0


@routine("unoptimize_all_kprobes", KPROBES_C)
def unoptimize_all_kprobes(cpu: Cpu) -> Gen:
    """``unoptimize_all_kprobes()`` (kernel/kprobes.c:912-939, v6.1 and v6.12): under
    ``kprobe_mutex`` (nothing if optimizing is already forbidden) and ``cpus_read_lock``,
    forbid optimizing and ``unoptimize_kprobe(p, false)`` every enabled hashed probe -- an
    optimized one is queued on ``unoptimizing_list``, its branch still in the text -- then
    drop the mutex and ``wait_for_kprobe_optimizer()``."""
    m = cpu.m
    k, s = kstate(m), ostate(m)
    yield from mutex_lock(cpu, k.kprobe_mutex)
    if not s.allow:
        yield from mutex_unlock(cpu, k.kprobe_mutex)
        return 0
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    s.allow = False
    for p in list(k.table.values()):
        if not p.disabled:
            yield from cpu.k.unoptimize_kprobe(cpu, p, False)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_unlock(cpu, k.kprobe_mutex)
    yield from cpu.k.wait_for_kprobe_optimizer(cpu)
    return 0


@routine("proc_kprobes_optimization_handler", KPROBES_C)
def proc_kprobes_optimization_handler(cpu: Cpu, on: bool) -> Gen:
    """``proc_kprobes_optimization_handler()`` (kernel/kprobes.c:944-959, v6.1 and v6.12), a
    write of ``debug.kprobes-optimization``: under ``kprobe_sysctl_mutex``,
    ``optimize_all_kprobes`` for 1, ``unoptimize_all_kprobes`` for 0."""
    s = ostate(cpu.m)
    yield from mutex_lock(cpu, s.sysctl_mutex)
    if on:
        yield from cpu.k.optimize_all_kprobes(cpu)
    else:
        yield from cpu.k.unoptimize_all_kprobes(cpu)
    yield from mutex_unlock(cpu, s.sysctl_mutex)
    return 0


def optimizer_stuck(m: Machine) -> bool:
    """The optimizer can never empty its lists: nothing to unoptimize, and probes on
    ``optimizing_list`` that ``do_optimize_kprobes`` will not touch while kprobes are globally
    disarmed (or optimizing is forbidden, :540-543) -- only another writer can change that."""
    s = ostate(m)
    return (not s.lists[UNOPTIMIZING] and bool(s.lists[OPTIMIZING])
            and (kstate(m).all_disarmed or not s.allow))


@routine("wait_for_kprobe_optimizer", KPROBES_C)
def wait_for_kprobe_optimizer(cpu: Cpu) -> Gen:
    """``wait_for_kprobe_optimizer()`` (kernel/kprobes.c:647-663, v6.1 and v6.12).

    Under ``kprobe_mutex``, while ``optimizing_list`` or ``unoptimizing_list`` is not empty:
    drop the mutex, ``flush_delayed_work(&optimizing_work)`` -- the model runs
    ``kprobe_optimizer`` here, as the flush makes the pending work run now and waits for it --
    ``cpu_relax()``, take the mutex again. Nothing else ends the loop: if the optimizer can
    never empty the lists (``optimizer_stuck``), each flush runs a pass that changes nothing;
    the model sleeps instead, until another CPU changes that (writes ``kprobes/enabled`` = 1
    or the sysctl) or no CPU but those sleeping so is busy, and then reports the endless loop as the broken
    invariant "kprobe optimizer wait ends"."""
    m = cpu.m
    k, s = kstate(m), ostate(m)

    def others_may_unstick() -> bool:
        return optimizer_stuck(m) and any(c.n not in s.stuck for c in m.busy())

    yield from mutex_lock(cpu, k.kprobe_mutex)
    while s.lists[OPTIMIZING] or s.lists[UNOPTIMIZING]:
        yield from mutex_unlock(cpu, k.kprobe_mutex)
        if optimizer_stuck(m):
            s.stuck.add(cpu.n)
            yield others_may_unstick  # flush_delayed_work: passes that change nothing
            s.stuck.discard(cpu.n)
            if optimizer_stuck(m):
                queued = ", ".join(f"{op.kp.addr:#x}" for op in s.lists[OPTIMIZING])
                raise InvariantViolation(
                    "kprobe optimizer wait ends",
                    f"CPU {cpu.n} loops in wait_for_kprobe_optimizer for ever: {queued} stay"
                    " on optimizing_list, which kprobe_optimizer leaves alone while"
                    + (" kprobes are globally disarmed" if k.all_disarmed
                       else " optimizing is forbidden") + " (kernel/kprobes.c:541)")
        else:
            yield from cpu.k.kprobe_optimizer(cpu)  # flush_delayed_work(&optimizing_work)
        yield  # cpu_relax()
        yield from mutex_lock(cpu, k.kprobe_mutex)
    yield from mutex_unlock(cpu, k.kprobe_mutex)
    return 0


# ---------------------------------------------------------------------------
# The optimizer: unoptimize, wait, optimize, free
# ---------------------------------------------------------------------------


@routine("kprobe_optimizer", KPROBES_C)
def kprobe_optimizer(cpu: Cpu) -> Gen:
    """``kprobe_optimizer()`` (kernel/kprobes.c:607-643, v6.1 and v6.12), the delayed work.

    Under ``kprobe_mutex``, ``cpus_read_lock`` and ``text_mutex``: ``do_unoptimize_kprobes``
    (branches back to traps, disabled ones disarmed, unused ones unhashed),
    ``synchronize_rcu_tasks()`` (:628: no CPU is still in a detour, nor in a trap handler
    of an unhashed probe), ``do_optimize_kprobes`` (nothing while kprobes are globally
    disarmed or optimizing is not allowed, :540-543), ``do_free_cleaned_kprobes``. Step 5's
    re-kick is the walk's to start again (``optprobes.optimizer``).
    """
    m = cpu.m
    yield from mutex_lock(cpu, kstate(m).kprobe_mutex)
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    yield from cpu.k.do_unoptimize_kprobes(cpu)
    yield from synchronize_rcu_tasks(cpu)
    s = ostate(m)
    if s.allow and not kstate(m).all_disarmed and s.lists[OPTIMIZING]:  # do_optimize_kprobes
        yield from cpu.k.arch_optimize_kprobes(cpu, list(s.lists[OPTIMIZING]))
    yield from cpu.k.do_free_cleaned_kprobes(cpu)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_unlock(cpu, kstate(m).kprobe_mutex)


def kprobe_unused(p: Kprobe) -> bool:
    """``kprobe_unused()`` (kernel/kprobes.c:401): an aggregator, disabled, its list empty."""
    return p.children is not None and p.disabled and not p.children


@routine("do_unoptimize_kprobes", KPROBES_C, inlined=True)
def do_unoptimize_kprobes(cpu: Cpu) -> Gen:
    """``do_unoptimize_kprobes()`` (kernel/kprobes.c:552-580, 6.1.192 and 6.12).

    ``arch_unoptimize_kprobes`` moves ``unoptimizing_list`` to ``freeing_list``, each
    branch back to the trap; then for each probe on ``freeing_list``: clear the flag,
    ``arch_disarm_kprobe`` a disabled one (trap -> original), and unhash an unused one
    (``hlist_del_rcu``: it stays on ``freeing_list`` to be freed after the grace period)
    or take any other off the list. Before 4fbd2f83fda0 (v6.3-rc1; next-20221215, v6.2):
    nothing at all when ``unoptimizing_list`` is empty, so a probe the forced path put on
    ``freeing_list`` directly is never disarmed nor unhashed (unreachable in the model:
    no forced path runs, see ``unoptimize_kprobe``)."""
    m = cpu.m
    s = ostate(m)
    if not s.lists[UNOPTIMIZING] and cpu.m.version.is_(*BEFORE_FREEING_FIX):
        return
    if s.lists[UNOPTIMIZING]:
        yield from cpu.k.arch_unoptimize_kprobes(cpu)
    for op in list(s.lists[FREEING]):
        op.flag = False
        if op.kp.disabled:
            yield from cpu.k.arch_disarm_kprobe(cpu, op.kp)
        if kprobe_unused(op.kp):
            m.note_access(cpu, ("kprobe table", op.kp.addr), True)
            if kstate(m).table.get(op.kp.addr) is op.kp:
                del kstate(m).table[op.kp.addr]
        else:
            s.move(op, None)


@routine("arch_unoptimize_kprobes", OPTPROBES_C)
def arch_unoptimize_kprobes(cpu: Cpu) -> Gen:
    """``arch_unoptimize_kprobes()`` (optprobes.c:289-298): each probe on ``unoptimizing_list``
    gets its trap back over the branch (``arch_unoptimize_kprobe`` = ``arch_arm_kprobe``,
    :284-287) and moves to ``freeing_list`` (``list_move``, to its head)."""
    s = ostate(cpu.m)
    for op in list(s.lists[UNOPTIMIZING]):
        yield from cpu.k.arch_arm_kprobe(cpu, op.kp)
        op.in_text = False
        s.move(op, FREEING)


@routine("arch_optimize_kprobes", OPTPROBES_C)
def arch_optimize_kprobes(cpu: Cpu, oplist: list[Optimized]) -> Gen:
    """``arch_optimize_kprobes()`` (optprobes.c:266-282): for each, back up the probed
    word, ``create_branch(addr -> buffer)``, ``patch_instruction`` it over the trap (its
    error ignored) and ``list_del_init``."""
    s = ostate(cpu.m)
    for op in oplist:
        err = yield from cpu.k.patch_instruction(cpu, op.kp.addr, branch(op.kp.addr, op.buff))
        op.in_text = op.in_text or not err
        s.move(op, None)


@routine("do_free_cleaned_kprobes", KPROBES_C, inlined=True)
def do_free_cleaned_kprobes(cpu: Cpu) -> Gen:
    """``do_free_cleaned_kprobes()`` (kernel/kprobes.c:583-598 v6.1/v6.12): after the grace
    period, each probe on ``freeing_list`` leaves it and, if unused, is freed
    (``free_aggr_kprobe``: its detour, its insn slot, the aggregator); one still in use
    is kept hashed, with a ``WARN_ON_ONCE`` (:589)."""
    m = cpu.m
    s = ostate(m)
    for op in list(s.lists[FREEING]):
        s.move(op, None)
        if not kprobe_unused(op.kp):
            warn(cpu, _warn_at(cpu, "free"), function="do_free_cleaned_kprobes",
                 detail="WARN_ON_ONCE(!kprobe_unused(&op->kp))")
            continue
        arch_remove_kprobe(kstate(m), op.kp, cpu)
        op.kp.freed = True  # kfree(op)
        yield from cpu.k.free_aggr_kprobe(cpu, op.kp)


@routine("free_aggr_kprobe", KPROBES_C)
def free_aggr_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``free_aggr_kprobe()`` (kernel/kprobes.c:437-445)'s ``arch_remove_optimized_kprobe``
    (optprobes.c:119-125): the detour slot is free for another probe (``arch_remove_kprobe``
    and ``kfree`` are the caller's in the model).

    Called from ``do_free_cleaned_kprobes`` after the optimizer's ``synchronize_rcu_tasks()``,
    or from ``__unregister_kprobe_bottom`` (kernel/kprobes.c:1833-1838 v6.12) for an
    aggregator unhashed disarmed -- never optimized since the optimizer last ran, whose
    grace period followed the last unoptimizing: no CPU is inside the detour either way.
    ``kp`` is found by identity, not by address (a later registration there has its own)."""
    yield from ()
    s = ostate(cpu.m)
    op = s.of(kp)
    if op is None:
        return
    del s.by_buff[op.buff]
    s.free.append(op.buff)
    s.free.sort()


# ---------------------------------------------------------------------------
# Running through the branch
# ---------------------------------------------------------------------------


@routine("optimized_callback", OPTPROBES_C)
def optimized_callback(cpu: Cpu, addr: int, word: int) -> Gen:
    """A CPU executes ``b buffer`` at a probe: the detour (optprobe_template_entry ..
    ``optimized_callback``, optprobes.c:96-116, then ``emulate_step`` and the branch back).

    Every word it fetches must be the finished detour of a live optimized probe:
    the branch may only go in once the buffer is complete, and the buffer may
    only be freed or reused once no CPU can be inside it (a tasks-RCU read side).
    The callback returns at once for a disabled aggregator (:100, "under delayed
    unoptimizing"); else ``opt_pre_handler`` runs each enabled probe on its list.
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
        if i == CALL_IDX and not op.kp.disabled:  # opt_pre_handler(&op->kp, regs)
            for q in op.kp.children or ():
                if not q.disabled:
                    q.hits += 1
    tasks_rcu_exit(cpu)
