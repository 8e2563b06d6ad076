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
from hypothesis import strategies as st

from fuzzer import (
    PAGE_KERNEL,
    PAGE_KERNEL_ROX,
    PAGE_OFFSET,
    Initcall,
    InvariantViolation,
    KernelFailure,
    KernelWarning,
    Mutex,
    Operation,
    Prot,
    Pte,
    RunConfig,
    UsageError,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
)
from fuzzer.kernel import V612, down_read, up_read
from fuzzer.kernel.rcu import rcu_read_lock, rcu_read_unlock, synchronize_rcu

if TYPE_CHECKING:
    import argparse

    from fuzzer import Cpu, Machine

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
EINVAL, ENOMEM, ENOENT = 22, 12, 2

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


@attrs.define(eq=False)
class Kprobe:
    """A ``struct kprobe`` registered by someone: boot's trampoline probe or an operation."""

    addr: int
    owner: str
    opcode: int = 0
    insn_slot: int = 0
    armed: bool = False
    disabled: bool = False
    hits: int = 0
    busy: bool = False
    """An operation is working on it (a user never races two calls on one kprobe)."""


@attrs.define(eq=False)
class KprobesState:
    """Per-machine kprobes state: the kprobe table, insn slots, the mutex."""

    kprobe_mutex: Mutex = attrs.Factory(lambda: Mutex("kprobe_mutex"))
    table: dict[int, list[Kprobe]] = attrs.Factory(dict)
    """``kprobe_table``: probes by address (aggregated probes share one)."""
    user: dict[int, Kprobe] = attrs.Factory(dict)
    """Operations' own kprobes, by site index."""
    free_slots: list[int] = attrs.Factory(list)
    initialized: bool = False


def kstate(m: Machine) -> KprobesState:
    return m.state["kprobes"]


# ---------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------


@hookimpl
def fuzzer_addoption(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument(
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


@hookimpl
def fuzzer_initcalls(config: RunConfig) -> list[Initcall]:
    return [Initcall("init_kprobes", init_kprobes, level="early")]


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [
        init_kprobes, arch_init_kprobes, arch_init_kprobes_612, register_kprobe,
        arch_prepare_kprobe,
        arm_kprobe, arch_arm_kprobe, disarm_kprobe, arch_disarm_kprobe,
        unregister_kprobe, kprobe_handler,
    ]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    sites = st.sampled_from(_sites(config))
    return [
        Operation("kprobes.register", op_register, {"site": sites},
                  doc="register_kprobe() on a text site (armed at once)", comm="perf"),
        Operation("kprobes.disable", op_disable, {"site": sites},
                  doc="disable_kprobe(): disarm, patching the original back", comm="perf"),
        Operation("kprobes.enable", op_enable, {"site": sites},
                  doc="enable_kprobe(): arm again", comm="perf"),
        Operation("kprobes.unregister", op_unregister, {"site": sites},
                  doc="unregister_kprobe(): disarm and free the insn slot", comm="perf"),
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


@routine("register_kprobe", KPROBES_C)
def register_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``register_kprobe()`` (kernel/kprobes.c, v6.1/v6.2).

    Under ``kprobe_mutex``: a probe already at the address aggregates
    (no patching); else under ``cpus_read_lock`` and ``text_mutex``
    ``prepare_kprobe`` -> ``arch_prepare_kprobe``; add it to the table; arm
    it unless disabled (``arm_kprobe``).
    """
    m = cpu.m
    s = kstate(m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    ret = 0
    if kp.addr in s.table:
        s.table[kp.addr].append(kp)
        kp.opcode = s.table[kp.addr][0].opcode
        kp.armed = s.table[kp.addr][0].armed
    else:
        yield from down_read(cpu, m.state["cpu_hotplug_lock"])
        yield from mutex_lock(cpu, m.state["text_mutex"])
        ret = yield from cpu.k.arch_prepare_kprobe(cpu, kp)
        yield from mutex_unlock(cpu, m.state["text_mutex"])
        yield from up_read(cpu, m.state["cpu_hotplug_lock"])
        if ret == 0:
            s.table[kp.addr] = [kp]
            if not kp.disabled:
                ret = yield from cpu.k.arm_kprobe(cpu, kp)
                if ret:
                    del s.table[kp.addr]
        if ret == 0 and "optprobes" in m.state:
            yield from cpu.k.try_to_optimize_kprobe(cpu, kp)  # kernel/kprobes.c:1686
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    return ret


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
    """``disarm_kprobe()`` (kernel/kprobes.c): as arm_kprobe, with ``__disarm_kprobe``:
    ``unoptimize_kprobe`` (the branch back to a trap), then arch_disarm_kprobe."""
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, m.state["text_mutex"])
    if "optprobes" in m.state:
        yield from cpu.k.unoptimize_kprobe(cpu, kp)
    yield from cpu.k.arch_disarm_kprobe(cpu, kp)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    return 0


def free_insn_slot(s: KprobesState, slot: int) -> None:
    """``free_insn_slot(slot, 0)`` (kernel/kprobes.c): the slot is clean again at once, and
    ``__get_insn_slot`` hands out the first clean slot of the page -- so the slot just freed
    is the next one reused unless a lower one is free."""
    s.free_slots.append(slot)
    s.free_slots.sort()


@routine("unregister_kprobe", KPROBES_C)
def unregister_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``unregister_kprobes()`` (kernel/kprobes.c:1857 v6.1, :1867 v6.12): under
    ``kprobe_mutex`` disarm the last probe at the address and unlink it;
    ``synchronize_rcu()`` (:1869 v6.1, :1879 v6.12) -- which returns only once no
    CPU is still in a kprobe trap (``kprobe_handler`` runs with preemption off,
    arch kprobes.c:317 to the single-step's end) that began before; then free the
    insn slot, which a later probe may reuse."""
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    probes = s.table.get(kp.addr, [])
    if kp not in probes:
        yield from mutex_unlock(cpu, s.kprobe_mutex)
        return -EINVAL
    if len(probes) == 1:
        if kp.armed:
            yield from cpu.k.disarm_kprobe(cpu, kp)
        del s.table[kp.addr]
        last = True
    else:
        probes.remove(kp)
        last = False
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    # synchronize_rcu(): no CPU still in a kprobe trap that began before the unlink.
    yield from synchronize_rcu(cpu)
    if last and kp.insn_slot:
        free_insn_slot(s, kp.insn_slot)
    if last and "optprobes" in cpu.m.state:
        yield from cpu.k.free_aggr_kprobe(cpu, kp)
    return 0


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
    if prev and prev[0].insn_slot and _read_inst(m, cpu, prev[0].insn_slot) >> 32:
        m.log.append("Cannot register a kprobe on the second word of prefixed instruction")
        ret = -EINVAL
    if ret == 0:
        if not s.free_slots:
            return -ENOMEM
        kp.insn_slot = s.free_slots.pop(0)  # __get_insn_slot: the first clean slot
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
    if err:
        raise KernelWarning(_warn_at(cpu, "arm"), detail=f"patch_instruction returned {err}")
    for p in kstate(cpu.m).table.get(kp.addr, [kp]):
        p.armed = True
    kp.armed = True


@routine("arch_disarm_kprobe", ARCH_KPROBES_C)
def arch_disarm_kprobe(cpu: Cpu, kp: Kprobe) -> Gen:
    """``arch_disarm_kprobe()`` (kprobes.c:199-202 v6.1, :182-185 v6.12): patch the saved
    opcode back, ``WARN_ON_ONCE`` on error (:201 v6.1, :184 v6.12)."""
    err = yield from cpu.k.patch_instruction(cpu, kp.addr, kp.opcode)
    if err:
        raise KernelWarning(_warn_at(cpu, "disarm"), detail=f"patch_instruction returned {err}")
    for p in kstate(cpu.m).table.get(kp.addr, [kp]):
        p.armed = False
    kp.armed = False


@routine("kprobe_handler", ARCH_KPROBES_C)
def kprobe_handler(cpu: Cpu, addr: int) -> Gen:
    """``kprobe_handler()`` (arch/powerpc/kernel/kprobes.c:299 v6.1), for a trap at ``addr``.

    With a probe registered there: run it and single-step the copy in its
    insn slot, which must hold the original instruction. With none: if the
    text no longer holds the trap, another CPU removed the probe after we hit
    it -- return 1 and re-execute; if the trap is still there it is not ours,
    and the program check becomes an oops.
    """
    m = cpu.m
    s = kstate(m)
    yield
    probes = s.table.get(addr)
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
        return 1
    if m.fetch(cpu, addr) != BREAKPOINT_INSTRUCTION:
        return 1
    raise KernelFailure(
        f"Oops: Exception in kernel mode, sig: 5 (unexpected trap at {addr:#x})",
        at=f"{ARCH_KPROBES_C}:346",
    )


# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------


def _claim(cpu: Cpu, site: int) -> Kprobe | None:
    kp = kstate(cpu.m).user.get(site)
    if kp is None or kp.busy:
        return None
    kp.busy = True
    return kp


def op_register(cpu: Cpu, site: int) -> Gen:
    s = kstate(cpu.m)
    if site in s.user:
        return -EINVAL  # this kprobe is already registered (or being registered)
    kp = s.user[site] = Kprobe(site_addr(site), owner=f"op:{site_name(site)}", busy=True)
    ret = yield from cpu.k.register_kprobe(cpu, kp)
    if ret:
        del s.user[site]
    kp.busy = False
    return ret


def op_unregister(cpu: Cpu, site: int) -> Gen:
    kp = _claim(cpu, site)
    if kp is None:
        return -ENOENT
    ret = yield from cpu.k.unregister_kprobe(cpu, kp)
    del kstate(cpu.m).user[site]
    return ret


def op_disable(cpu: Cpu, site: int) -> Gen:
    """``disable_kprobe()``: under kprobe_mutex, disarm once no probe at the address wants it."""
    kp = _claim(cpu, site)
    if kp is None:
        return -ENOENT
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    kp.disabled = True
    probes = s.table.get(kp.addr, [])
    if kp.armed and all(p.disabled for p in probes):
        yield from cpu.k.disarm_kprobe(cpu, kp)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    kp.busy = False
    return 0


def op_enable(cpu: Cpu, site: int) -> Gen:
    """``enable_kprobe()``: under kprobe_mutex, arm again if disarmed."""
    kp = _claim(cpu, site)
    if kp is None:
        return -ENOENT
    s = kstate(cpu.m)
    yield from mutex_lock(cpu, s.kprobe_mutex)
    kp.disabled = False
    if not kp.armed:
        yield from cpu.k.arm_kprobe(cpu, kp)
    yield from mutex_unlock(cpu, s.kprobe_mutex)
    kp.busy = False
    return 0


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
        # The program check runs the handler with interrupts off, and kprobe_handler
        # with preemption off to the single-step's end: an RCU read-side section
        # from the trap on, which unregister_kprobe's synchronize_rcu waits out.
        flags = cpu.local_irq_save()
        rcu_read_lock(cpu)
        yield from cpu.k.kprobe_handler(cpu, addr)
        rcu_read_unlock(cpu)
        cpu.local_irq_restore(flags)
    return 0
