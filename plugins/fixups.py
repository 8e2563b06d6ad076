"""Multi-instruction patching: a mitigation sequence in the exception entry, toggled at runtime.

Like the entry-flush and STF-barrier fixups (arch/powerpc/lib/feature-fixups.c),
the kernel patches a sequence of instructions in exception entry code one
``patch_instruction`` at a time. Any CPU taking an exception runs that code,
and so does the patching CPU itself when the store to the patching alias
takes a hash fault (49b39ec248af, 5b48ba2fbd77; aec86b052df6 for other
CPUs). Every intermediate state must therefore be safe to execute.

The modelled sequence is the fallback flush's shape: ``mflr r10;
bl flush_fallback; mtlr r10`` when enabled, three nops when disabled. A
state is unsafe when the ``bl`` can run without LR saved and restored
around it, or ``mtlr r10`` can run without the ``mflr r10`` that set r10.
The model's patch orders keep every intermediate state safe: enable the
save, then the restore, then the branch; disable the branch first, then
the restore, then the save. (This follows the rule those commits state; the
exact order in v6.2's feature-fixups.c was not checked line by line.)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from fuzzer import (
    PAGE_KERNEL_ROX,
    PAGE_OFFSET,
    Boolean,
    IntRange,
    InvariantViolation,
    Mutex,
    Operation,
    Pte,
    RunConfig,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
)
from fuzzer.kernel import down_read, up_read

if TYPE_CHECKING:
    from fuzzer import Cpu, Machine

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]
FEATURE_FIXUPS_C = "arch/powerpc/lib/feature-fixups.c"
NOP = 0x6000_0000
MFLR_R10 = 0x7D48_02A6
MTLR_R10 = 0x7D48_03A6
#: The sequence's place in the exception entry text.
SEQUENCE_AT = PAGE_OFFSET + 0x0000_4000
BL_FALLBACK = 0x4800_0001 | 0x0100  # bl .+0x100 (flush_fallback)
OLD = (NOP, NOP, NOP)
NEW = (MFLR_R10, BL_FALLBACK, MTLR_R10)
#: Patch orders (word indices) that keep every intermediate state safe.
ENABLE_ORDER = (0, 2, 1)
DISABLE_ORDER = (1, 2, 0)


def unsafe(words: tuple[int, ...]) -> str | None:
    """Why executing ``words`` (the sequence, first to last) would crash, or None."""
    saved = words[0] == MFLR_R10
    if words[1] == BL_FALLBACK and not (saved and words[2] == MTLR_R10):
        return "bl clobbers LR with no mflr/mtlr around it"
    if words[2] == MTLR_R10 and not saved:
        return "mtlr r10 restores LR from an r10 nothing saved"
    if any(w not in (o, n) for w, o, n in zip(words, OLD, NEW, strict=True)):
        return "a word that is neither the old nor the new instruction"
    return None


def read_sequence(m: Machine, cpu: Cpu) -> tuple[int, ...]:
    return tuple(m.fetch(cpu, SEQUENCE_AT + 4 * i) for i in range(len(OLD)))


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    machine.write_text(SEQUENCE_AT, OLD)
    # A BPF prog pack: two pages of module_alloc'd memory, read-only and
    # executable, written only through patch_instructions (v6.12).
    pack = machine.alloc_vmalloc(2 * machine.run.page_size)
    assert pack is not None
    for i in range(2):
        machine.map_page(machine.init_mm, pack + i * machine.run.page_size,
                         Pte(machine.alloc_pfn(), PAGE_KERNEL_ROX))
    machine.attach("fixups", {"mutex": Mutex("fixups_mutex"), "enabled": False,
                              "bpf_pack": pack})

    def execute_entry(cpu: Cpu) -> None:
        words = read_sequence(machine, cpu)
        why = unsafe(words)
        if why is not None:
            raise InvariantViolation(
                "patched sequence safe at every step",
                f"CPU {cpu.n} ran the exception entry sequence in an intermediate state"
                f" ({', '.join(f'{w:#010x}' for w in words)}): {why}",
            )

    machine.on_exception_entry(execute_entry)


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [do_entry_flush_fixups, bpf_arch_text_copy, bpf_arch_text_invalidate]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    return [
        Operation("fixups.entry_flush", op_toggle, {"enable": Boolean()},
                  doc="debugfs entry_flush: patch the exception-entry flush sequence", comm="bash"),
        *([Operation("bpf.load", op_bpf, {"slot": IntRange(0, 3), "nwords": IntRange(1, 24)},
                     doc="JIT a BPF program into the prog pack, then free it (patch_instructions)",
                     comm="bpftool")] if config.kernel == "v6.12" else []),
    ]


BPF_TRAP = 0x7FE0_0008  #: what bpf_arch_text_invalidate fills a freed program with


def _bpf_slot(m: Machine, slot: int) -> int:
    """Program slots of the pack; slot 3 straddles the boundary between its two pages."""
    page = m.run.page_size
    return m.state["fixups"]["bpf_pack"] + (page - 32 if slot == 3 else slot * 256)


@routine("bpf_arch_text_copy", "arch/powerpc/net/bpf_jit_comp.c", versions=("v6.12",))
def bpf_arch_text_copy(cpu: Cpu, dst: int, code: tuple[int, ...]) -> Gen:
    """``bpf_arch_text_copy()`` (arch/powerpc/net/bpf_jit_comp.c, v6.12): under
    ``text_mutex``, ``patch_instructions(dst, src, len, false)``."""
    m = cpu.m
    yield from mutex_lock(cpu, m.state["text_mutex"])
    err = yield from cpu.k.patch_instructions(cpu, dst, code, False, len(code))
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    return err


@routine("bpf_arch_text_invalidate", "arch/powerpc/net/bpf_jit_comp.c", versions=("v6.12",))
def bpf_arch_text_invalidate(cpu: Cpu, dst: int, nwords: int) -> Gen:
    """``bpf_arch_text_invalidate()`` (v6.12): fill with traps, ``patch_instructions(.., true)``."""
    m = cpu.m
    yield from mutex_lock(cpu, m.state["text_mutex"])
    err = yield from cpu.k.patch_instructions(cpu, dst, (BPF_TRAP,), True, nwords)
    yield from mutex_unlock(cpu, m.state["text_mutex"])
    return err


def op_bpf(cpu: Cpu, slot: int, nwords: int) -> Gen:
    """Load a program into a pack slot and free it again (each slot used by one op at a time)."""
    m = cpu.m
    busy = m.state["fixups"].setdefault("bpf_busy", set())
    if slot in busy:
        return -16  # -EBUSY: the pack allocator would hand out another chunk
    busy.add(slot)
    dst = _bpf_slot(m, slot)
    code = tuple(0x3860_0000 | (slot << 8) | i for i in range(nwords))
    err = yield from cpu.k.bpf_arch_text_copy(cpu, dst, code)
    if not err:
        if [m.fetch(cpu, dst + 4 * i) for i in range(nwords)] != list(code):
            raise InvariantViolation("bpf text copied", f"CPU {cpu.n}: the pack slot differs")
        err = yield from cpu.k.bpf_arch_text_invalidate(cpu, dst, nwords)
    busy.discard(slot)
    return err


@routine("do_entry_flush_fixups", FEATURE_FIXUPS_C)
def do_entry_flush_fixups(cpu: Cpu, enable: bool) -> Gen:
    """``do_entry_flush_fixups()`` (arch/powerpc/lib/feature-fixups.c, after 49b39ec248af).

    Patch the sequence one instruction at a time, each with its own
    ``patch_instruction`` (its own IRQ-off window, map, store, unmap, flush),
    in an order whose every intermediate state is safe to execute.
    """
    target = NEW if enable else OLD
    for i in ENABLE_ORDER if enable else DISABLE_ORDER:
        yield from cpu.k.patch_instruction(cpu, SEQUENCE_AT + 4 * i, target[i])


def op_toggle(cpu: Cpu, enable: bool) -> Gen:
    """The debugfs write: under ``cpus_read_lock`` and the fixups mutex, patch if the state changes."""
    m = cpu.m
    s = m.state["fixups"]
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, s["mutex"])
    if s["enabled"] != enable:
        yield from cpu.k.do_entry_flush_fixups(cpu, enable)
        s["enabled"] = enable
    yield from mutex_unlock(cpu, s["mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
