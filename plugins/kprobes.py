"""kprobes: boot's trampoline probe, register/arm/disarm/unregister/hit operations.

Follows kernel/kprobes.c and arch/powerpc/kernel/kprobes.c at v6.1/v6.2
(the two files do not change between the modelled versions). Every probe
patches kernel text through ``patch_instruction``, so this is the first
and most frequent user of the code-patching model.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer import (
    PAGE_KERNEL,
    PAGE_KERNEL_ROX,
    PAGE_OFFSET,
    Choice,
    Initcall,
    IntRange,
    Invariant,
    InvariantViolation,
    KernelFailure,
    KernelOops,
    KnownFinding,
    Mutex,
    Operation,
    Prot,
    Pte,
    RunConfig,
    Signature,
    UsageError,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
)
from fuzzer.kernel import EINVAL, V612, deref, down_read, kernel_struct, synchronize_rcu, up_read, warn

if TYPE_CHECKING:
    from fuzzer import Cpu, Machine, OptionGroup

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]
KPROBES_C = "kernel/kprobes.c"
ARCH_KPROBES_C = "arch/powerpc/kernel/kprobes.c"
RETHOOK_C = "arch/powerpc/kernel/rethook.c"
BEFORE_612 = ("v6.1", "next-20221215", "v6.2")
#: arch/powerpc/kernel/kprobes.c lines of arch_arm_kprobe's and arch_disarm_kprobe's
#: WARN_ON_ONCE (the file is the same at v6.1, next-20221215 and v6.2).
WARN_LINES = {
    "v6.1": {"arm": 195, "disarm": 201},
    "next-20221215": {"arm": 195, "disarm": 201},
    "v6.2": {"arm": 195, "disarm": 201},
    "v6.12": {"arm": 178, "disarm": 184},
}
ENOMEM, ENOENT = 12, 2

BREAKPOINT_INSTRUCTION = 0x7FE0_0008  # tw 31,0,0
NOP = 0x6000_0000
BLR = 0x4E80_0020
MFLR_R0 = 0x7C08_02A6
STD_R0 = 0xF801_0010
STDU_R1 = 0xF821_FFD1
ADDI = 0x3863_0001
RFID = 0x4C00_0024
#: paddi r3,0,0x1000,1: prefix word, then suffix word (little-endian: prefix first).
PADDI = (0x3860_1000 << 32) | 0x0610_0000


@attrs.frozen
class Symbol:
    name: str
    offset: int
    """Offset from PAGE_OFFSET (the linear map of kernel text)."""
    words: tuple[int, ...]


#: A few kernel text symbols, laid out as a ppc64le build would (64-byte
#: aligned, no prefixed instruction across a 64-byte boundary).
TEXT = (
    Symbol("__kretprobe_trampoline", 0x0005_A000, (NOP, BLR)),
    # 6.12's name for the same trampoline (arch/powerpc/kernel/rethook.c:15).
    Symbol("arch_rethook_trampoline", 0x0005_A000, (NOP, BLR)),
    Symbol("do_sys_open", 0x0010_0000, (MFLR_R0, STD_R0, STDU_R1, BLR)),
    Symbol("vfs_read", 0x0010_0100, (MFLR_R0, ADDI, BLR)),
    Symbol("pcrel_copy", 0x0010_0200, (PADDI & 0xFFFF_FFFF, PADDI >> 32, BLR)),
    Symbol("fast_interrupt_return", 0x0010_0300, (RFID,)),
    Symbol("schedule", 0x0010_0340, (MFLR_R0, STD_R0, BLR)),
)
SYMBOLS = {s.name: s for s in TEXT}

#: Where an operation may put a probe: (symbol, byte offset). Some are
#: rejected by arch_prepare_kprobe on purpose.
SITES = (
    ("do_sys_open", 0),
    ("do_sys_open", 4),
    ("do_sys_open", 2),  # unaligned
    ("vfs_read", 0),
    ("vfs_read", 4),
    ("pcrel_copy", 0),  # a prefixed instruction
    ("pcrel_copy", 4),  # its suffix word
    ("pcrel_copy", 8),  # right after the prefixed instruction
    ("fast_interrupt_return", 0),  # rfid: cannot be single-stepped
    ("schedule", 0),
)


def site_addr(i: int) -> int:
    sym, off = SITES[i]
    return PAGE_OFFSET + SYMBOLS[sym].offset + off


def site_name(i: int) -> str:
    sym, off = SITES[i]
    return f"{sym}+{off:#x}"


#: Bumped by every change to a kprobe, a probe list or the hash table (any machine's):
#: with ``Machine.stores``, what lets the table check skip a step that changed nothing.
CHANGES = [0]


def _changed(inst: Any, attribute: Any, value: Any) -> Any:
    CHANGES[0] += 1
    return value


class ProbeList(list):
    """An aggregator's ``ap->list``: a list whose every change is noted in ``CHANGES``."""

    def _note(name: str) -> Any:  # type: ignore[misc]  # a class-body helper, not a method
        base = getattr(list, name)

        def method(self: Any, *args: Any) -> Any:
            CHANGES[0] += 1
            return base(self, *args)

        return method

    append = _note("append")
    remove = _note("remove")
    clear = _note("clear")
    insert = _note("insert")
    pop = _note("pop")
    extend = _note("extend")
    __setitem__ = _note("__setitem__")
    __delitem__ = _note("__delitem__")


class ProbeTable(dict):
    """``kprobe_table``: a dict whose every change is noted in ``CHANGES``."""

    def __setitem__(self, key: Any, value: Any) -> None:
        CHANGES[0] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        CHANGES[0] += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        CHANGES[0] += 1
        return super().pop(*args)


@kernel_struct("struct kprobe")
@attrs.define(eq=False, on_setattr=_changed)
class Kprobe:
    """A ``struct kprobe``: boot's trampoline probe, an operation's, or an aggregator."""

    addr: int
    owner: str
    opcode: int = 0
    insn_slot: int = 0
    armed: bool = False
    """What ``arch_arm_kprobe``/``arch_disarm_kprobe`` last did to the text (the model's record)."""
    disabled: bool = False
    """``KPROBE_FLAG_DISABLED``."""
    hits: int = 0
    busy: bool = False
    """An operation is working on it (a user never races two calls on one kprobe)."""
    children: list[Kprobe] | None = None
    """An aggregator's ``ap->list`` (``kprobe_aggrprobe``); None for any other probe."""
    parent: Kprobe | None = None
    """The aggregator whose list this probe joined (``register_aggr_kprobe``)."""
    freed: bool = False
    """kfree()d: by its owner after unregistering it, or ``free_aggr_kprobe``."""
    enabled_disarmed: bool = False
    """Enabled by ``enable_kprobe`` while kprobes were globally disarmed, its aggregator left
    disabled (the model's record, for :func:`enables_reach_the_aggregator`)."""


@attrs.define(eq=False)
class KprobesState:
    """Per-machine kprobes state: the kprobe table, insn slots, the mutex."""

    kprobe_mutex: Mutex = attrs.Factory(lambda: Mutex("kprobe_mutex"))
    table: dict[int, Kprobe] = attrs.Factory(ProbeTable)
    """``kprobe_table``: the hashed probe at each address (an aggregator when there are several)."""
    user: dict[tuple[int, int], Kprobe] = attrs.Factory(dict)
    """Operations' own kprobes, by (site index, which of the two a user may have there)."""
    free_slots: list[int] = attrs.Factory(list)
    initialized: bool = False
    probed: tuple[tuple[int, int], ...] = ()
    """(address, physical address) of every place a probe can be: what the table check reads."""
    checked: tuple[int, int] = (-1, -1)
    """(``Machine.stores``, ``CHANGES``) when the table check last found everything consistent."""
    all_disarmed: bool = False
    """``kprobes_all_disarmed`` (kernel/kprobes.c:64): debugfs ``kprobes/enabled`` is 0."""
    enabled_disarmed: int = 0
    """How many times ``enable_kprobe`` enabled a child under a disabled aggregator while
    kprobes were globally disarmed (0: :func:`enables_reach_the_aggregator` has nothing to do)."""


def kstate(m: Machine) -> KprobesState:
    return m.state["kprobes"]


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


@hookimpl
def fuzzer_addoption(parser: OptionGroup) -> None:
    parser.addoption(
        "--kprobe-sites",
        metavar="LIST",
        default=None,
        help="comma-separated probe sites operations may use (default: all): "
        + ", ".join(site_name(i) for i in range(len(SITES))),
    )


def _sites(config: RunConfig) -> list[int]:
    text = config.option("kprobe_sites")
    if not text:
        return list(range(len(SITES)))
    names = {site_name(i): i for i in range(len(SITES))}
    out = []
    for part in text.split(","):
        part = part.strip()
        if part not in names:
            raise UsageError(
                f"--kprobe-sites: unknown site {part!r}; known: {', '.join(names)}"
            )
        out.append(names[part])
    return out


@hookimpl
def fuzzer_configure(config: RunConfig) -> None:
    _sites(config)


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    st_ = machine.attach("kprobes", KprobesState())
    for sym in TEXT:
        machine.write_text(PAGE_OFFSET + sym.offset, sym.words)
    # The insn-slot page: module_alloc'd (vmalloc space), then made read-only
    # executable by set_memory_rox when strict_module_rwx_enabled() (modelled
    # as following STRICT_KERNEL_RWX): then patch_instruction is the only way
    # to write it.
    va = machine.alloc_vmalloc(machine.run.page_size)
    assert va is not None
    pfn = 0x0300_0000 >> machine.run.page_shift  # a physical page past the kernel image
    rox = machine.config.enabled("CONFIG_STRICT_KERNEL_RWX")
    machine.map_page(machine.init_mm, va, Pte(pfn, PAGE_KERNEL_ROX if rox else PAGE_KERNEL | Prot.EXEC))
    st_.free_slots = [va + 64 * i for i in range(16)]
    st_.probed = tuple((a, a - PAGE_OFFSET) for a in probed_addresses())


@hookimpl
def fuzzer_initcalls(config: RunConfig) -> list[Initcall]:
    return [Initcall("init_kprobes", init_kprobes, level="early")]


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [
        init_kprobes, arch_init_kprobes, arch_init_kprobes_612, register_kprobe,
        register_aggr_kprobe, init_aggr_kprobe,
        arch_prepare_kprobe, arm_kprobe, arch_arm_kprobe, disarm_kprobe, arch_disarm_kprobe,
        __disable_kprobe, disable_kprobe, enable_kprobe, unregister_kprobe,
        __unregister_kprobe_top, __unregister_kprobe_bottom, kprobe_handler,
        write_enabled_file_bool, arm_all_kprobes, disarm_all_kprobes,
    ]


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [
        Invariant("kprobes match the text", table_matches_text,
                  doc="kprobe_mutex free: every enabled hashed probe's address holds the trap"
                      " (while kprobes are globally disarmed: see the next), no other probe"
                      " site does, no saved opcode is the trap, an aggregator is disabled"
                      " exactly when all its probes are"),
        Invariant("kprobe enable reaches its aggregator", enables_reach_the_aggregator,
                  doc="kprobe_mutex free: no aggregator stays disabled under a probe"
                      " enable_kprobe enabled while kprobes were globally disarmed"),
        Invariant("kprobes globally disarmed", all_disarmed_matches_text,
                  doc="kprobe_mutex free while debugfs kprobes/enabled is 0: no enabled probe"
                      " but the kretprobe trampoline's holds its trap or branch in the text"),
    ]


@hookimpl
def fuzzer_known_findings(config: RunConfig) -> list[KnownFinding]:
    """``enable_kprobe()`` of an aggregated probe while kprobes are globally disarmed (every
    version: kernel/kprobes.c:2428-2463 v6.1, :2424-2459 v6.12).

    It clears the probe's ``KPROBE_FLAG_DISABLED`` (:2449 v6.1, :2445 v6.12) but enables and
    arms the disabled aggregator only ``if (!kprobes_all_disarmed && kprobe_disabled(p))``
    (:2451, :2447); ``arm_all_kprobes`` (:2902, :2910) later arms only enabled hashed probes,
    so the probe reads enabled and never fires -- until it is disabled and enabled again or
    another probe registers at its address. Every optimizable probe is aggregated (its
    ``optimized_kprobe``), so with optprobes any enable of one while ``kprobes/enabled`` is 0
    is lost so. (A plain probe's enable is ignored outright there: it stays disabled.)
    """
    fields: dict[str, Any] = {"kernels": ("v6.1", "next-20221215", "v6.2", "v6.12")}
    return [KnownFinding(
        signature=Signature("INVARIANT", "kprobe enable reaches its aggregator", ""),
        title=("enable_kprobe() of an aggregated probe while kprobes/enabled is 0 enables the"
               " probe but leaves its aggregator disabled (kernel/kprobes.c:2447 in v6.12,"
               " :2451 in v6.1), and arm_all_kprobes arms only enabled hashed probes: the"
               " probe reads enabled and never fires, even after kprobes/enabled=1"),
        fix=("none upstream that we know of; e.g. enable_kprobe clears the aggregator's"
             " KPROBE_FLAG_DISABLED whatever kprobes_all_disarmed, and arms it only if not"
             " kprobes_all_disarmed (as register_aggr_kprobe does, :1358-1362 v6.1)"),
        reference="kernel/kprobes.c of linux-source-6.1 (6.1.192) and linux-source-6.12"
                  " (6.12.118), read line by line; not seen on a real boot",
        **fields,
    )]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    sites = Choice(_sites(config))
    probe = IntRange(0, 1)  # a user's first or second kprobe at the site: two aggregate
    return [
        Operation("kprobes.register", op_register, {"site": sites, "probe": probe},
                  doc="register_kprobe() on a text site (armed at once; a second probe"
                      " at one address aggregates)", comm="perf", makes=True),
        Operation("kprobes.disable", op_disable, {"site": sites, "probe": probe},
                  doc="disable_kprobe(): disarm once no probe at the address is enabled",
                  comm="perf"),
        Operation("kprobes.enable", op_enable, {"site": sites, "probe": probe},
                  doc="enable_kprobe(): arm again", comm="perf"),
        Operation("kprobes.unregister", op_unregister, {"site": sites, "probe": probe},
                  doc="unregister_kprobe(): disarm, unhash, free the insn slot and the probe",
                  comm="perf", unmakes=True),
        Operation("kprobes.enabled", op_enabled, {"on": IntRange(0, 1)},
                  doc="write debugfs kprobes/enabled: arm_all_kprobes() or disarm_all_kprobes()",
                  comm="sh"),
        Operation("kprobes.hit", op_hit, {"site": sites},
                  doc="a CPU executes the instruction at a site (traps into a probe if armed)",
                  comm="bash"),
    ]


# ---------------------------------------------------------------------------
# Boot
# ---------------------------------------------------------------------------


@routine("init_kprobes", KPROBES_C)
def init_kprobes(cpu: Cpu) -> Gen:
    """``init_kprobes()`` (kernel/kprobes.c:2716 v6.1), an early_initcall.

    Sets up the tables, ``kprobes_all_disarmed = false``, then
    ``arch_init_kprobes()``; ``kprobes_initialized = (err == 0)``.
    """
    err = yield from cpu.k.arch_init_kprobes(cpu)
    kstate(cpu.m).initialized = err == 0
    return err


@routine("arch_init_kprobes", ARCH_KPROBES_C, versions=BEFORE_612)
def arch_init_kprobes(cpu: Cpu) -> Gen:
    """``arch_init_kprobes()`` (arch/powerpc/kernel/kprobes.c:564 v6.1).

    ``register_kprobe(&trampoline_p)`` on ``__kretprobe_trampoline``: the
    first patch_instruction after poking_init on the crash path.
    """
    kp = Kprobe(PAGE_OFFSET + SYMBOLS["__kretprobe_trampoline"].offset, owner="trampoline_p")
    return (yield from cpu.k.register_kprobe(cpu, kp))


@routine("arch_init_kprobes", RETHOOK_C, versions=V612)
def arch_init_kprobes_612(cpu: Cpu) -> Gen:
    """``arch_init_kprobes()`` (arch/powerpc/kernel/rethook.c:70, v6.12): kretprobes became
    rethook, and ``register_kprobe(&trampoline_p)`` probes ``arch_rethook_trampoline``."""
    kp = Kprobe(PAGE_OFFSET + SYMBOLS["arch_rethook_trampoline"].offset, owner="trampoline_p")
    return (yield from cpu.k.register_kprobe(cpu, kp))


# ---------------------------------------------------------------------------
# kernel/kprobes.c
# ---------------------------------------------------------------------------


def get_kprobe(m: Machine, addr: int) -> Kprobe | None:
    """``get_kprobe()`` (kernel/kprobes.c): the hash table's entry for ``addr``, or None."""
    return kstate(m).table.get(addr)


def _jump_label_mutex(m: Machine) -> Mutex | None:
    """``jump_label_lock()``'s mutex, when the jump_label plugin models it."""
    jl = m.state.get("jump_label")
    return getattr(jl, "mutex", None) if jl is not None else None


@routine("register_kprobe", KPROBES_C)
def register_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``register_kprobe()`` (kernel/kprobes.c:1624 v6.1, :1634 v6.12).

    Under ``kprobe_mutex``: a probe already at the address goes to
    ``register_aggr_kprobe`` (no patching of the text); else under
    ``cpus_read_lock`` and ``text_mutex`` ``prepare_kprobe`` ->
    ``arch_prepare_kprobe``; add it to the hash table; arm it unless disabled
    (``arm_kprobe``) unless kprobes are globally disarmed (:1676 v6.1, :1686 v6.12),
    unhashing it again if that fails; then ``try_to_optimize_kprobe``.
    """
    m = cpu.m
    s = kstate(m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    old = get_kprobe(m, kp.addr)
    if old is not None:
        ret = yield from cpu.k.register_aggr_kprobe(cpu, old, kp)
    else:
        yield from down_read(cpu, m.state["cpu_hotplug_lock"])
        yield from mutex_lock(cpu, m.state["text_mutex"])
        ret = yield from cpu.k.arch_prepare_kprobe(cpu, kp)
        yield from mutex_unlock(cpu, m.state["text_mutex"])
        yield from up_read(cpu, m.state["cpu_hotplug_lock"])
        if ret == 0:
            m.note_access(cpu, ("kprobe table", kp.addr), True)
            s.table[kp.addr] = kp
            if not s.all_disarmed and not kp.disabled:
                ret = yield from cpu.k.arm_kprobe(cpu, kp)
                if ret:
                    del s.table[kp.addr]
        if ret == 0 and "optprobes" in m.state:
            yield from cpu.k.try_to_optimize_kprobe(cpu, kp)  # kernel/kprobes.c:1686
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    return ret


@routine("register_aggr_kprobe", KPROBES_C)
def register_aggr_kprobe(cpu: Cpu, orig: Kprobe, p: Kprobe) -> Gen:
    """``register_aggr_kprobe()`` (kernel/kprobes.c:1296 v6.1, :1305 v6.12): a second probe.

    The second or later probe at an address. Under ``cpus_read_lock``,
    ``jump_label_lock`` and ``text_mutex``: if the hashed probe is not an
    aggregator yet, ``alloc_aggr_kprobe`` (with optprobes, an ``optimized_kprobe`` whose
    detour ``arch_prepare_optimized_kprobe`` tries to build: ready, it is optimized at the
    next ``optimize_kprobe`` -- enable, re-arm, another probe's unregister) and
    ``init_aggr_kprobe`` (the aggregator copies its opcode and insn slot,
    takes its flags, lists it, and replaces it in the hash table); an unused one
    (``kprobe_unused``: an optimized aggregator whose last probe was unregistered
    while it waited for the optimizer, :1315-1319 v6.1) is rescued by
    ``reuse_unused_kprobe``; then ``copy_kprobe(ap, p)`` and ``add_new_kprobe``.
    After unlocking, an aggregator that was disabled is enabled if ``p`` is, and armed again
    unless kprobes are globally disarmed (:1358-1362 v6.1, :1367-1371 v6.12).
    """
    m = cpu.m
    orig = deref(orig, "struct kprobe", member="pre_handler")
    jl = _jump_label_mutex(m)
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    if jl is not None:
        yield from mutex_lock(cpu, jl)
    yield from mutex_lock(cpu, m.state["text_mutex"])
    ap = orig
    if orig.children is None:
        yield  # alloc_aggr_kprobe(): kzalloc(GFP_KERNEL)
        ap = Kprobe(orig.addr, owner="aggr_kprobe")
        opt = m.state.get("optprobes")
        # optprobes' alloc_aggr_kprobe prepares a detour (:830-843 v6.1); it returns at once
        # (-EILSEQ, -ENOMEM) for an instruction it cannot emulate or with no slot free.
        if opt is not None and opt.free and _can_optimize(m, orig):
            op = yield from cpu.k.arch_prepare_optimized_kprobe(cpu, orig)
            if op is not None:  # orig got none at its registration (no slot was free then)
                op.kp = ap
                opt.by_buff[op.buff] = op
        yield from cpu.k.init_aggr_kprobe(cpu, ap, orig)
    elif ap.disabled and not ap.children and "optprobes" in m.state:  # kprobe_unused(ap)
        ret = yield from cpu.k.reuse_unused_kprobe(cpu, ap)
        if ret:
            yield from mutex_unlock(cpu, m.state["text_mutex"])
            if jl is not None:
                yield from mutex_unlock(cpu, jl)
            yield from up_read(cpu, m.state["cpu_hotplug_lock"])
            return ret
    p.opcode, p.insn_slot = ap.opcode, ap.insn_slot  # copy_kprobe(ap, p)
    assert ap.children is not None
    ap.children.append(p)  # add_new_kprobe: list_add_rcu(&p->list, &ap->list)
    p.parent = ap
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    if jl is not None:
        yield from mutex_unlock(cpu, jl)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    if ap.disabled and not p.disabled:
        ap.disabled = False
        if not kstate(m).all_disarmed:
            yield from cpu.k.arm_kprobe(cpu, ap)
    return 0


@routine("init_aggr_kprobe", KPROBES_C, inlined=True)
def init_aggr_kprobe(cpu: Cpu, ap: Kprobe, p: Kprobe) -> Gen:
    """``init_aggr_kprobe()`` (kernel/kprobes.c:1274-1291 v6.1, :1283-1300 v6.12), from
    ``register_aggr_kprobe`` and (optprobes) ``try_to_optimize_kprobe``: the new aggregator
    takes ``p``'s opcode and insn slot (``copy_kprobe``) and flags, lists ``p``, and only
    then replaces it in the hash table (``hlist_replace_rcu``)."""
    yield from ()
    ap.opcode, ap.insn_slot, ap.armed, ap.disabled = p.opcode, p.insn_slot, p.armed, p.disabled
    ap.children = ProbeList([p])
    p.parent = ap
    kstate(cpu.m).table[p.addr] = ap  # hlist_replace_rcu


@routine("arm_kprobe", KPROBES_C, inlined=True)
def arm_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``arm_kprobe()`` (kernel/kprobes.c): ``cpus_read_lock``, ``text_mutex``,
    ``__arm_kprobe``: arch_arm_kprobe, then ``optimize_kprobe`` (queue it for the optimizer)."""
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    yield from cpu.k.arch_arm_kprobe(cpu, kp)
    if "optprobes" in m.state:
        yield from cpu.k.optimize_kprobe(cpu, kp)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    return 0


@routine("disarm_kprobe", KPROBES_C, inlined=True)
def disarm_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``disarm_kprobe()`` (kernel/kprobes.c): as arm_kprobe, with ``__disarm_kprobe``
    (:1000-1022 v6.1, :999-1021 v6.12): ``unoptimize_kprobe(p, kprobes_all_disarmed)`` (:1007 v6.1,
    :1006 v6.12) -- an optimized probe is queued for the optimizer, or, from
    ``disarm_all_kprobes``, unoptimized at once -- then ``arch_disarm_kprobe`` unless the
    probe is queued (``kprobe_queued``, :1009 v6.1, :1008 v6.12): the optimizer disarms a
    disabled one after unoptimizing."""
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    opt = m.state.get("optprobes")
    if opt is not None:
        yield from cpu.k.unoptimize_kprobe(cpu, kp, kstate(m).all_disarmed)
    if opt is None or not opt.queued_probe(kp):
        yield from cpu.k.arch_disarm_kprobe(cpu, kp)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    return 0


def _can_optimize(m: Machine, p: Kprobe) -> bool:
    from fuzzer_plugins.optprobes import can_optimize  # optprobes imports this module

    probe: Any = p  # this module is fuzzer_plugins.kprobes to optprobes, plugins.kprobes to mypy
    return bool(can_optimize(m, probe))


def get_valid_kprobe(m: Machine, p: Kprobe) -> Kprobe | None:
    """``__get_valid_kprobe()`` (kernel/kprobes.c): the hashed probe ``p`` is, or is listed on."""
    ap = get_kprobe(m, p.addr)
    if ap is None:
        return None
    ap = deref(ap, "struct kprobe", member="list")
    if ap is p or (ap.children is not None and p in ap.children):
        return ap
    return None


@routine("__disable_kprobe", KPROBES_C, inlined=True)
def __disable_kprobe(cpu: Cpu, p: Kprobe) -> Gen:
    """``__disable_kprobe()`` (kernel/kprobes.c:1715 v6.1, :1725 v6.12), ``kprobe_mutex`` held.

    A child of an aggregator is marked disabled; the hashed probe is disarmed
    and disabled only when it is ``p`` itself or when every probe on its list
    is disabled (``aggr_kprobe_disabled``) -- disarmed only if kprobes are not globally
    disarmed (:1740 v6.1, :1750 v6.12). Returns the hashed probe, or None (-EINVAL) when
    ``p`` is not registered.
    """
    orig = get_valid_kprobe(cpu.m, p)
    if orig is None:
        return None
    if not p.disabled:
        if p is not orig:
            p.disabled = True
            p.enabled_disarmed = False
        if p is orig or aggr_kprobe_disabled(orig):
            if not kstate(cpu.m).all_disarmed and not orig.disabled:
                yield from cpu.k.disarm_kprobe(cpu, orig)
            orig.disabled = True
    return orig


def aggr_kprobe_disabled(ap: Kprobe) -> bool:
    """``aggr_kprobe_disabled()`` (kernel/kprobes.c:1698 v6.1): every probe on the list disabled."""
    return all(kp.disabled for kp in ap.children or ())


@routine("disable_kprobe", KPROBES_C)
def disable_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``disable_kprobe()`` (kernel/kprobes.c:2410 v6.1, :2406 v6.12): under ``kprobe_mutex``.

    ``__disable_kprobe``; -EINVAL when the probe is not registered.
    """
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    p = yield from cpu.k.__disable_kprobe(cpu, kp)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    return 0 if p is not None else -EINVAL


@routine("enable_kprobe", KPROBES_C)
def enable_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``enable_kprobe()`` (kernel/kprobes.c:2428 v6.1, :2424 v6.12).

    Under ``kprobe_mutex``: -EINVAL unless registered; a child is enabled; a disabled hashed
    probe is enabled and armed unless kprobes are globally disarmed (:2451 v6.1, :2447 v6.12:
    then it stays disabled -- an aggregator too, though the child is enabled, and
    ``arm_all_kprobes`` arms only enabled hashed probes).
    """
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    p = get_valid_kprobe(cpu.m, kp)
    ret = -EINVAL
    if p is not None:
        ret = 0
        if p is not kp:
            kp.disabled = False
            if s.all_disarmed and p.disabled:
                kp.enabled_disarmed = True
                s.enabled_disarmed += 1
        if not s.all_disarmed and p.disabled:
            p.disabled = False
            ret = yield from cpu.k.arm_kprobe(cpu, p)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    return ret


@routine("unregister_kprobe", KPROBES_C)
def unregister_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``unregister_kprobes()`` (kernel/kprobes.c:1857 v6.1, :1867 v6.12): top half,
    ``synchronize_rcu()``, bottom half.

    ``__unregister_kprobe_top`` under ``kprobe_mutex``; ``synchronize_rcu()`` (:1869
    v6.1, :1879 v6.12) -- which returns only once no CPU is still in a kprobe trap
    (``kprobe_handler`` runs with preemption off, arch kprobes.c:317 to the
    single-step's end) that began before; then ``__unregister_kprobe_bottom``,
    which frees the insn slot a later probe may reuse.
    """
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    ret = yield from cpu.k.__unregister_kprobe_top(cpu, kp)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    if ret:
        return ret
    # A CPU in kprobe_handler (interrupts off: an RCU reader) may still hold the probe and
    # single-step its insn slot: the bottom half frees them after a grace period.
    yield from synchronize_rcu(cpu)
    yield from cpu.k.__unregister_kprobe_bottom(cpu, kp)
    return 0


@routine("__unregister_kprobe_top", KPROBES_C, inlined=True)
def __unregister_kprobe_top(cpu: Cpu, p: Kprobe) -> Gen:
    """``__unregister_kprobe_top()`` (kernel/kprobes.c:1757 v6.1, :1767 v6.12).

    ``__disable_kprobe`` (disarming if needed); ``WARN_ON`` (:1774 v6.1, :1784 v6.12) if
    the hashed probe it returns is neither ``p`` nor an aggregator, then on (its empty list is
    not singular: ``p`` is unlisted, nothing unhashed); a plain probe, or the last
    one on a disarmed aggregator (``kprobe_disarmed``: not queued for the optimizer either),
    takes the hashed probe out of the table (``hlist_del_rcu``); any other child is only
    unlisted (``list_del_rcu``) and an enabled aggregator re-optimized (:1808 v6.1, :1818
    v6.12) -- the last one of an optimized probe still being unoptimized too: the aggregator
    stays hashed, unused, for the optimizer to unhash and free.
    """
    s = kstate(cpu.m)
    ap = yield from cpu.k.__disable_kprobe(cpu, p)
    if ap is None:
        return -EINVAL
    if ap is p:
        cpu.m.note_access(cpu, ("kprobe table", ap.addr), True)
        del s.table[ap.addr]
        return 0
    opt = cpu.m.state.get("optprobes")
    if ap.children is None:  # WARN_ON, and on as if ap were an aggregator with an empty list
        at = f"{KPROBES_C}:{1784 if cpu.m.version.is_('v6.12') else 1774}"
        warn(cpu, at, function="__unregister_kprobe_top", once=False,
             detail="WARN_ON(!kprobe_aggrprobe(ap))")
        # Not singular: list_del_rcu(&p->list) takes p off whatever list it is on, and
        # optimize_kprobe(ap) does nothing for a probe that is no aggregator.
        if p.parent is not None and p.parent.children is not None and p in p.parent.children:
            p.parent.children.remove(p)
        return 0
    if len(ap.children) == 1 and (ap.disabled if opt is None else opt.disarmed(ap)):
        del s.table[ap.addr]  # p stays listed: the bottom half frees the aggregator
    else:
        ap.children.remove(p)
        if not ap.disabled and not s.all_disarmed and opt is not None:
            yield from cpu.k.optimize_kprobe(cpu, ap)
    return 0


@routine("__unregister_kprobe_bottom", KPROBES_C, inlined=True)
def __unregister_kprobe_bottom(cpu: Cpu, p: Kprobe) -> Gen:
    """``__unregister_kprobe_bottom()`` (kernel/kprobes.c:1817 v6.1, :1827 v6.12).

    A plain probe: ``arch_remove_kprobe`` (its insn slot). The last child of
    an aggregator: unlist it and ``free_aggr_kprobe`` (the slot they share,
    and the aggregator). Any other unlisted child: nothing.
    """
    yield from ()
    s = kstate(cpu.m)
    ap = p.parent
    if ap is None:
        arch_remove_kprobe(s, p, cpu)
    elif ap.children == [p]:
        ap.children.clear()
        arch_remove_kprobe(s, ap, cpu)
        ap.freed = True  # kfree(ap)
        if "optprobes" in cpu.m.state:  # its optimized_kprobe, if it is one
            yield from cpu.k.free_aggr_kprobe(cpu, ap)


def arch_trampoline_kprobe(p: Kprobe) -> bool:
    """``arch_trampoline_kprobe()`` (arch/powerpc/kernel/kprobes.c:569 v6.1, :489 v6.12): the
    probe on ``__kretprobe_trampoline`` (``arch_rethook_trampoline`` in 6.12, same place)."""
    return p.addr == PAGE_OFFSET + SYMBOLS["__kretprobe_trampoline"].offset


@routine("write_enabled_file_bool", KPROBES_C)
def write_enabled_file_bool(cpu: Cpu, enable: bool) -> Gen:
    """``write_enabled_file_bool()`` (kernel/kprobes.c:3013 v6.1, :3021 v6.12): a write to
    debugfs ``kprobes/enabled`` calls ``arm_all_kprobes`` or ``disarm_all_kprobes``."""
    if enable:
        return (yield from cpu.k.arm_all_kprobes(cpu))
    return (yield from cpu.k.disarm_all_kprobes(cpu))


@routine("arm_all_kprobes", KPROBES_C)
def arm_all_kprobes(cpu: Cpu) -> Gen:
    """``arm_all_kprobes()`` (kernel/kprobes.c:2902 v6.1, :2910 v6.12).

    Under ``kprobe_mutex``, nothing if kprobes are not globally disarmed; else clear
    ``kprobes_all_disarmed`` first (``optimize_kprobe``, from ``arm_kprobe``, reads it) and
    ``arm_kprobe`` every enabled hashed probe (best effort; ``arm_kprobe`` cannot fail here).
    """
    m = cpu.m
    s = kstate(m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    if s.all_disarmed:
        s.all_disarmed = False
        for p in list(s.table.values()):
            if not p.disabled:
                yield from cpu.k.arm_kprobe(cpu, p)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    return 0


@routine("disarm_all_kprobes", KPROBES_C)
def disarm_all_kprobes(cpu: Cpu) -> Gen:
    """``disarm_all_kprobes()`` (kernel/kprobes.c:2948-2998 v6.1, :2956-3000 v6.12).

    Under ``kprobe_mutex``, nothing if already disarmed; else set ``kprobes_all_disarmed``
    and ``disarm_kprobe(p, false)`` every enabled hashed probe but the kretprobe trampoline's
    (``arch_trampoline_kprobe``) -- ``__disarm_kprobe`` then takes ``unoptimize_kprobe``'s
    forced path (``force`` is ``kprobes_all_disarmed``) and leaves a probe still queued
    (``kprobe_queued``) to the optimizer. The probes keep their flags: none is marked
    disabled. Then, without the mutex, ``wait_for_kprobe_optimizer()`` (OPTPROBES only).
    """
    m = cpu.m
    s = kstate(m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    if s.all_disarmed:
        yield from mutex_unlock(cpu, s.kprobe_mutex)
        return 0
    s.all_disarmed = True
    for p in list(s.table.values()):
        if not arch_trampoline_kprobe(p) and not p.disabled:
            yield from cpu.k.disarm_kprobe(cpu, p)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    if "optprobes" in m.state:
        yield from cpu.k.wait_for_kprobe_optimizer(cpu)
    return 0


def arch_remove_kprobe(s: KprobesState, p: Kprobe, cpu: Cpu | None = None) -> None:
    """``arch_remove_kprobe()`` (arch/powerpc/kernel/kprobes.c): ``free_insn_slot``."""
    if cpu is not None:
        cpu.m.note_access(cpu, ("kprobe insn slot", p.addr), True)
    if p.insn_slot:
        free_insn_slot(s, p.insn_slot)
        p.insn_slot = 0


def free_insn_slot(s: KprobesState, slot: int) -> None:
    """``free_insn_slot(slot, 0)`` (kernel/kprobes.c, from ``arch_remove_kprobe``): clean at once."""
    s.free_slots.append(slot)


def get_insn_slot(s: KprobesState) -> int | None:
    """``get_insn_slot()`` (kernel/kprobes.c ``__get_insn_slot``): the first clean slot of the
    page, by index -- so a slot just freed is the next one handed out."""
    if not s.free_slots:
        return None
    slot = min(s.free_slots)
    s.free_slots.remove(slot)
    return slot


# ---------------------------------------------------------------------------
# arch/powerpc/kernel/kprobes.c
# ---------------------------------------------------------------------------


def _read_inst(m: Machine, cpu: Cpu, addr: int) -> int:
    """``ppc_inst_read()``: a word, or a prefix word and its suffix as one value."""
    w = m.fetch(cpu, addr)
    if w >> 26 == 1:
        return (m.fetch(cpu, addr + 4) << 32) | w
    return w


def _can_single_step(instr: int) -> bool:
    """``can_single_step()``: not rfid/mtmsrd and friends (opcode 19 rfid, 31 mtmsr[d])."""
    word = instr & 0xFFFF_FFFF
    return word != RFID


@routine("arch_prepare_kprobe", ARCH_KPROBES_C)
def arch_prepare_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``arch_prepare_kprobe()`` (arch/powerpc/kernel/kprobes.c:144, v6.1/v6.2).

    Rejects (-EINVAL, with the kernel's printk) an unaligned address, an
    instruction that cannot be single-stepped, the second word of a prefixed
    instruction, and a probe whose previous word holds a probe on a prefixed
    instruction. Otherwise takes an insn slot (-ENOMEM if none), copies the
    instruction into it with ``patch_instruction`` (the slot page is
    read-only executable; the return value is ignored, as in the kernel) and
    remembers the opcode.
    """
    m = cpu.m
    s = kstate(m)
    yield
    ret = 0
    if kp.addr & 3:
        m.log.append("Attempt to register kprobe at an unaligned address")
        return -EINVAL
    insn = _read_inst(m, cpu, kp.addr)
    if not _can_single_step(insn):
        m.log.append("Cannot register a kprobe on instructions that can't be single stepped")
        ret = -EINVAL
    elif kp.addr & (m.run.page_size - 1) and m.fetch(cpu, kp.addr - 4) >> 26 == 1:
        m.log.append("Cannot register a kprobe on the second word of prefixed instruction")
        ret = -EINVAL
    prev = s.table.get(kp.addr - 4)
    if prev and prev.insn_slot and _read_inst(m, cpu, prev.insn_slot) >> 32:
        m.log.append("Cannot register a kprobe on the second word of prefixed instruction")
        ret = -EINVAL
    if ret == 0:
        slot = get_insn_slot(s)
        if slot is None:
            return -ENOMEM
        kp.insn_slot = slot
        yield from cpu.k.patch_instruction(cpu, kp.insn_slot, insn)
        kp.opcode = insn & 0xFFFF_FFFF
    return ret


def _warn_at(cpu: Cpu, which: str) -> str:
    return f"{ARCH_KPROBES_C}:{cpu.m.version.lookup(WARN_LINES, 'kprobes.c line numbers')[which]}"


@routine("arch_arm_kprobe", ARCH_KPROBES_C)
def arch_arm_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``arch_arm_kprobe()`` (kprobes.c:193-196 v6.1, :176-179 v6.12):
    ``WARN_ON_ONCE(patch_instruction(addr, trap))`` (:195 v6.1, :178 v6.12)."""
    err = yield from cpu.k.patch_instruction(cpu, kp.addr, BREAKPOINT_INSTRUCTION)
    if err:  # WARN_ON_ONCE, and the probe counts as armed
        warn(cpu, _warn_at(cpu, "arm"), detail=f"patch_instruction returned {err}")
    kp.armed = True


@routine("arch_disarm_kprobe", ARCH_KPROBES_C)
def arch_disarm_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``arch_disarm_kprobe()`` (kprobes.c:199-202 v6.1, :182-185 v6.12): patch the saved
    opcode back, ``WARN_ON_ONCE`` on error (:201 v6.1, :184 v6.12)."""
    err = yield from cpu.k.patch_instruction(cpu, kp.addr, kp.opcode)
    if err:  # WARN_ON_ONCE, and the probe counts as disarmed
        warn(cpu, _warn_at(cpu, "disarm"), detail=f"patch_instruction returned {err}")
    kp.armed = False


@routine("kprobe_handler", ARCH_KPROBES_C)
def kprobe_handler(cpu: Cpu, addr: int) -> Gen:
    """``kprobe_handler()`` (arch/powerpc/kernel/kprobes.c:299 v6.1), for a trap at ``addr``.

    With a probe registered there: run its pre-handler (an aggregator's
    ``aggr_pre_handler`` runs each enabled probe on its list) and single-step
    the copy in its insn slot, which must hold the original instruction. With
    none: if the text no longer holds the trap, another CPU removed the probe
    after we hit it -- return 1 and re-execute; if the trap is still there it
    is not ours, and the program check becomes an oops. A freed probe left in
    the table oopses on its poisoned ``pre_handler``.
    """
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


def single_step_slot(m: Machine, cpu: Cpu, p: Kprobe) -> None:
    """``try_to_emulate()``/``prepare_singlestep()``: run the copy in ``p->ainsn.insn``, which
    must hold the probed instruction; a slot already freed (``ainsn.insn`` NULL) oopses."""
    m.note_access(cpu, ("kprobe insn slot", p.addr), False)
    if not p.insn_slot:
        raise KernelOops(0, what="NULL kprobe_opcode_t *p->ainsn.insn (a removed probe's slot)")
    copied = _read_inst(m, cpu, p.insn_slot)
    if copied & 0xFFFF_FFFF != p.opcode:
        raise InvariantViolation(
            "kprobe insn slot",
            f"slot {p.insn_slot:#x} holds {copied:#x}, not the probed {p.opcode:#x}",
        )


# ---------------------------------------------------------------------------
# The hash table against the text
# ---------------------------------------------------------------------------


def probed_addresses() -> list[int]:
    """Every address a probe can be registered at: boot's trampoline and the sites."""
    return [PAGE_OFFSET + SYMBOLS["__kretprobe_trampoline"].offset,
            *(site_addr(i) for i in range(len(SITES)) if not site_addr(i) & 3)]


def table_matches_text(m: Machine) -> str | None:
    """Whenever ``kprobe_mutex`` is free, the hash table and the text agree.

    Every hashed probe that is enabled is armed: its address holds the trap;
    a disabled one's does not; its saved opcode is never the trap; an
    aggregator is disabled exactly when every probe on its list is (what
    ``__disable_kprobe`` and ``enable_kprobe`` keep). And every trap at a
    probe site belongs to a hashed probe. While kprobes are globally disarmed an enabled
    probe other than the kretprobe trampoline's is not armed: that, and its opposite, are
    :func:`all_disarmed_matches_text`'s to judge.
    """
    s = m.state.get("kprobes")
    if s is None or s.kprobe_mutex.owner is not None:
        return None
    seen = (m.stores, CHANGES[0])
    if seen == s.checked:
        return None  # nothing stored, no kprobe or table changed: still consistent
    table, mem = s.table, m.mem
    opt = m.state.get("optprobes")
    for addr, pa in s.probed:
        p = table.get(addr)
        word = mem.get(pa)
        if opt is not None and p is not None and opt.queued_probe(p) \
                and word in (BREAKPOINT_INSTRUCTION, opt.of(p).branch):
            # Queued for the optimizer (kprobe_queued): a disabled or unused optimized
            # aggregator is still armed -- trap or branch -- until do_unoptimize_kprobes
            # disarms and unhashes it (kernel/kprobes.c:552-580).
            if p.children == [] and not p.freed:  # unused: kprobe_unused
                continue
            if not p.disabled and s.all_disarmed and not arch_trampoline_kprobe(p):
                continue  # all_disarmed_matches_text's to judge
            msg = _probe_matches(p, BREAKPOINT_INSTRUCTION if not p.disabled else None,
                                 not p.disabled)
            if msg is not None:
                return f"kprobe at {addr:#x}: {msg}"
            continue
        if opt is not None and word is not None and word >> 26 == 18 and p is not None:
            # An optimized probe is armed with the branch to its detour (optprobes.c:266):
            # only the hashed aggregator's own (an earlier registration's detour is not).
            op = opt.of(p)
            if op is not None and op.in_text and word == op.branch:
                word = BREAKPOINT_INSTRUCTION
        if p is None:
            if word == BREAKPOINT_INSTRUCTION:
                return f"{addr:#x} holds a kprobe trap but no kprobe is registered there"
            continue
        armed = not p.disabled
        if armed and s.all_disarmed and not arch_trampoline_kprobe(p):
            armed = word == BREAKPOINT_INSTRUCTION  # all_disarmed_matches_text's to judge
        if armed != (word == BREAKPOINT_INSTRUCTION) or p.children is not None \
                or p.freed or p.opcode == BREAKPOINT_INSTRUCTION:
            msg = _probe_matches(p, word, armed)
            if msg is not None:
                return f"kprobe at {addr:#x}: {msg}"
    s.checked = seen
    return None


def all_disarmed_matches_text(m: Machine) -> str | None:
    """Whenever ``kprobe_mutex`` is free while kprobes are globally disarmed
    (``kprobes_all_disarmed``: debugfs ``kprobes/enabled`` written 0), no enabled probe but
    the kretprobe trampoline's holds its trap, or the branch to its detour, in the text.

    ``disarm_all_kprobes`` disarms each under the mutex (``__disarm_kprobe``), unoptimizing an
    optimized one at once (``unoptimize_kprobe(p, true)``); the optimizer it then waits for
    disarms only the disabled probes it unoptimizes (``do_unoptimize_kprobes``,
    kernel/kprobes.c:568), so an enabled probe still armed once the mutex is free stays armed:
    its handlers run while kprobes are "globally disabled", and an unregister then unhashes
    and frees it without disarming it (``__disable_kprobe`` does not disarm while
    ``kprobes_all_disarmed``, :1740 v6.1, :1750 v6.12), leaving a trap no kprobe owns.
    """
    s = m.state.get("kprobes")
    if s is None or not s.all_disarmed or s.kprobe_mutex.owner is not None:
        return None
    opt = m.state.get("optprobes")
    for addr, pa in s.probed:
        p = s.table.get(addr)
        if p is None or p.disabled or arch_trampoline_kprobe(p):
            continue
        word = m.mem.get(pa)
        op = opt.of(p) if opt is not None else None
        if word == BREAKPOINT_INSTRUCTION or (op is not None and word == op.branch):
            where = f" (on {op.lst})" if op is not None and op.lst else ""
            what = "trap" if word == BREAKPOINT_INSTRUCTION else "branch to its detour"
            return (f"kprobe at {addr:#x}: kprobes are globally disarmed but this enabled"
                    f" probe{where} still holds its {what} in the text")
    return None


def lost_enable(ap: Kprobe) -> bool:
    """A disabled aggregator whose enabled probes were all enabled while kprobes were
    globally disarmed (``enable_kprobe``, :2451 v6.1, :2447 v6.12)."""
    enabled = [c for c in ap.children or () if not c.disabled]
    return ap.disabled and bool(enabled) and all(c.enabled_disarmed for c in enabled)


def enables_reach_the_aggregator(m: Machine) -> str | None:
    """Whenever ``kprobe_mutex`` is free, no hashed aggregator is disabled while a probe on
    its list is enabled because that probe was enabled while kprobes were globally disarmed.

    ``enable_kprobe`` clears the child's ``KPROBE_FLAG_DISABLED`` but enables and arms the
    aggregator only if ``!kprobes_all_disarmed`` (:2451 v6.1, :2447 v6.12), and
    ``arm_all_kprobes`` arms only enabled hashed probes: the probe reads enabled and never
    fires, even after ``kprobes/enabled`` = 1.
    """
    s = m.state.get("kprobes")
    if s is None or not s.enabled_disarmed or s.kprobe_mutex.owner is not None:
        return None
    for addr, p in s.table.items():
        if p.children is not None and lost_enable(p):
            return (f"kprobe at {addr:#x}: the aggregator stays disabled (not armed) though"
                    " a probe on its list is enabled: enable_kprobe enabled it while kprobes"
                    " were globally disarmed")
    return None


def _probe_matches(p: Kprobe, word: int | None, armed: bool) -> str | None:
    """What is wrong with hashed probe ``p`` whose address holds ``word`` (``armed``: it
    should hold the trap), or None."""
    if p.freed:
        return "the hash table holds a freed kprobe"
    trap = word == BREAKPOINT_INSTRUCTION
    if armed and not trap:
        return f"enabled but not armed: the text holds {word or 0:#010x}, not the trap"
    if not armed and trap:
        return "disabled but the text still holds the trap"
    if p.opcode == BREAKPOINT_INSTRUCTION:
        return "its saved opcode is the trap itself"
    if p.children is not None:
        if not p.children:
            return "an aggregator with no probe on its list"
        if lost_enable(p):
            return None  # enables_reach_the_aggregator's to judge
        if p.disabled != aggr_kprobe_disabled(p):
            state = "disabled" if p.disabled else "enabled"
            return (f"the aggregator is {state} while the probes on its list are"
                    f" {[('disabled' if c.disabled else 'enabled') for c in p.children]}")
    return None


# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------


def _claim(cpu: Cpu, site: int, probe: int) -> Kprobe | None:
    kp = kstate(cpu.m).user.get((site, probe))
    if kp is None or kp.busy:
        return None
    kp.busy = True
    return kp


def op_register(cpu: Cpu, site: int, probe: int = 0) -> Gen:
    """``register_kprobe()`` of one of two kprobes a user may have at a site (a second one
    at an address aggregates)."""
    s = kstate(cpu.m)
    if (site, probe) in s.user:
        return -EINVAL  # this kprobe is already registered (or being registered)
    kp = Kprobe(site_addr(site), owner=f"op:{site_name(site)}#{probe}", busy=True)
    s.user[(site, probe)] = kp
    ret = yield from cpu.k.register_kprobe(cpu, kp)
    if ret:
        del s.user[(site, probe)]
        kp.freed = True  # the caller kfree()s a kprobe that failed to register
    kp.busy = False
    return ret


def op_unregister(cpu: Cpu, site: int, probe: int = 0) -> Gen:
    """``unregister_kprobe()``, then the owner frees its ``struct kprobe``."""
    kp = _claim(cpu, site, probe)
    if kp is None:
        return -ENOENT
    ret = yield from cpu.k.unregister_kprobe(cpu, kp)
    del kstate(cpu.m).user[(site, probe)]
    kp.freed = True
    return ret


def op_disable(cpu: Cpu, site: int, probe: int = 0) -> Gen:
    kp = _claim(cpu, site, probe)
    if kp is None:
        return -ENOENT
    ret = yield from cpu.k.disable_kprobe(cpu, kp)
    kp.busy = False
    return ret


def op_enable(cpu: Cpu, site: int, probe: int = 0) -> Gen:
    kp = _claim(cpu, site, probe)
    if kp is None:
        return -ENOENT
    ret = yield from cpu.k.enable_kprobe(cpu, kp)
    kp.busy = False
    return ret


def op_enabled(cpu: Cpu, on: int) -> Gen:
    """``echo on > /sys/kernel/debug/kprobes/enabled``."""
    return (yield from cpu.k.write_enabled_file_bool(cpu, bool(on)))


def op_hit(cpu: Cpu, site: int) -> Gen:
    """Execute the instruction at a site: the old instruction or the trap, never anything else."""
    m = cpu.m
    addr = site_addr(site)
    if addr & 3:
        return 0  # not an instruction boundary: nothing executes there
    yield  # instruction fetch
    word = m.fetch(cpu, addr)
    pa = addr - PAGE_OFFSET
    legit = {m.pristine_text.get(pa, NOP)} | m.text_writes.get(pa, set())
    if word not in legit:
        raise InvariantViolation(
            "text fetch atomic",
            f"CPU {cpu.n} fetched {word:#010x} at {site_name(site)}: neither the original"
            " instruction nor one a patch wrote",
        )
    if word >> 26 == 18 and "optprobes" in m.state:  # b detour: an optimized probe
        yield from cpu.k.optimized_callback(cpu, addr, word)
    if word == BREAKPOINT_INSTRUCTION:
        # The program check runs the handler with interrupts off (and kprobe_handler
        # with preemption off to the single-step's end): an RCU read-side section
        # from the trap on (fuzzer.kernel.rcu), which unregister_kprobe's
        # synchronize_rcu waits out.
        flags = cpu.local_irq_save()
        yield from cpu.k.kprobe_handler(cpu, addr)
        cpu.local_irq_restore(flags)
    return 0
