"""Jump labels (static keys): a second code-patching user, serialised by its own mutex.

kprobes patch under ``text_mutex`` and ftrace under ``ftrace_lock`` alone;
``static_key_enable`` and ``static_key_disable`` patch under
``jump_label_mutex`` instead, so several CPUs can be inside
``patch_instruction`` at once -- which is what per-CPU patching
contexts exist for. Follows kernel/jump_label.c and
arch/powerpc/kernel/jump_label.c (v6.1-v6.2).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from fuzzer import (
    PAGE_OFFSET,
    InvariantViolation,
    Mutex,
    Operation,
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
JUMP_LABEL_C = "kernel/jump_label.c"
ARCH_JUMP_LABEL_C = "arch/powerpc/kernel/jump_label.c"
NOP = 0x6000_0000
#: Four jump-label sites (``static_branch_unlikely`` nops) and where they jump.
SITES_AT = PAGE_OFFSET + 0x0010_0400
NSITES = 4
TARGET_OFFSET = 0x40


def site(i: int) -> int:
    return SITES_AT + 4 * i


def branch_to_target(i: int) -> int:
    """``create_branch(addr, target, 0)``: ``b target``, a relative I-form branch."""
    return 0x4800_0000 | ((TARGET_OFFSET - 4 * i + 4 * NSITES) & 0x03FF_FFFC)


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    machine.write_text(SITES_AT, [NOP] * NSITES)
    machine.attach("jump_label", {"mutex": Mutex("jump_label_mutex"), "enabled": [False] * NSITES})


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [static_key_toggle, arch_jump_label_transform]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    keys = st.integers(0, NSITES - 1)
    return [
        Operation("jump_label.toggle", op_toggle, {"key": keys},
                  doc="static_key_enable()/disable(): patch a branch or a nop", comm="sysctl"),
        Operation("jump_label.run", op_run, {"key": keys},
                  doc="a CPU executes a jump-label site", comm="bash"),
    ]


@routine("static_key_enable", JUMP_LABEL_C)
def static_key_toggle(cpu: Cpu, key: int) -> Gen:
    """``static_key_enable()``/``static_key_disable()`` (kernel/jump_label.c, v6.1-v6.2).

    ``cpus_read_lock()``, ``jump_label_lock()``, flip the key, and
    ``jump_label_update`` -> ``arch_jump_label_transform`` for its site.
    """
    m = cpu.m
    s = m.state["jump_label"]
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, s["mutex"])
    s["enabled"][key] = not s["enabled"][key]
    yield from cpu.k.arch_jump_label_transform(cpu, key, s["enabled"][key])
    yield from mutex_unlock(cpu, s["mutex"])
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])


@routine("arch_jump_label_transform", ARCH_JUMP_LABEL_C)
def arch_jump_label_transform(cpu: Cpu, key: int, enable: bool) -> Gen:
    """``arch_jump_label_transform()`` (arch/powerpc/kernel/jump_label.c, v6.1-v6.2).

    ``patch_branch(addr, target, 0)`` to enable, ``patch_instruction(addr, nop)``
    to disable; a failure is a WARN in the caller's ``BUG_ON``-free path.
    """
    instr = branch_to_target(key) if enable else NOP
    yield from cpu.k.patch_instruction(cpu, site(key), instr)


def op_toggle(cpu: Cpu, key: int) -> Gen:
    yield from cpu.k.static_key_enable(cpu, key)


def op_run(cpu: Cpu, key: int) -> Gen:
    """Execute a jump-label site: a nop or the branch, never anything else."""
    m = cpu.m
    yield  # instruction fetch
    word = m.fetch(cpu, site(key))
    if word not in (NOP, branch_to_target(key)):
        raise InvariantViolation(
            "text fetch atomic",
            f"CPU {cpu.n} fetched {word:#010x} at jump-label site {key}: neither nop nor its branch",
        )
