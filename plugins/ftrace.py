"""Dynamic ftrace as powerpc does it: every call site patched at boot, then on every toggle.

With ``CONFIG_FUNCTION_TRACER`` and ``CONFIG_DYNAMIC_FTRACE``, ``start_kernel``
calls ``ftrace_init`` right after ``poking_init`` (init/main.c:974-975 in
6.1, :936-937 in 6.12), and it patches every call site through
``patch_instruction``: the first user of the patching context after it is set
up. Before 6.12 a site is the ``bl _mcount`` of ``-mprofile-kernel``, made a
nop by ``ftrace_make_nop``; in 6.12 it is a pair of ``-fpatchable-function-
entry`` nops, the first made ``mflr r0`` by ``ftrace_init_nop``.

Turning tracing on or off patches every site again. powerpc overrides
``arch_ftrace_update_code`` to call ``ftrace_modify_all_code`` directly: no
``stop_machine``, and ``ftrace_arch_code_modify_prepare`` is the empty weak
one, so the only lock held is ``ftrace_lock`` -- neither ``text_mutex`` nor
``cpus_read_lock``. ftrace therefore patches concurrently with kprobes, jump
labels and CPU hotplug; each ``patch_instruction`` brings its own IRQ-off
window on its own CPU's patching context.

``CONFIG_FUNCTION_TRACER`` defaults to y, as in the distribution configs,
except at next-20221215: the reported boot (the seed crash) reached
``init_kprobes`` first, so that version's default reproduces the report; with
``--config CONFIG_FUNCTION_TRACER=y`` it dies where the source says a kernel
with ftrace would, in ``ftrace_init`` on swapper/0.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from fuzzer import (
    PAGE_OFFSET,
    Boolean,
    ConfigOption,
    Initcall,
    Mutex,
    Operation,
    RunConfig,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
)
from fuzzer.kernel import NEXT, V61, V62, V612, warn

if TYPE_CHECKING:
    from fuzzer import Cpu, Machine

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]
FTRACE_C = "kernel/trace/ftrace.c"
ARCH_FTRACE_C = "arch/powerpc/kernel/trace/ftrace.c"
EINVAL, ENODEV = 22, 19
BEFORE_612 = V61 + NEXT + V62

NOP = 0x6000_0000
MFLR_R0 = 0x7C08_02A6
#: ftrace call sites, one per traced function.
FTRACE_SITES_AT = PAGE_OFFSET + 0x0010_0800
FTRACE_SITES = 6
FTRACE_STRIDE = 0x40
#: ``bl ftrace_caller``: a site while tracing.
BL_FTRACE_CALLER = 0x4800_0001 | 0x0200
#: ``bl _mcount``: a site as built with -mprofile-kernel (before 6.12).
BL_MCOUNT = 0x4800_0001 | 0x0300

#: Lines per version: ftrace_bug's FTRACE_WARN_ON_ONCE(1) in kernel/trace/ftrace.c.
LINES = {"v6.1": {"ftrace_bug": 2161}, "v6.12": {"ftrace_bug": 2235}}


def enabled(config: RunConfig) -> bool:
    """Call sites are patched at run time: ``CONFIG_FUNCTION_TRACER`` and ``CONFIG_DYNAMIC_FTRACE``."""
    return config.enabled("CONFIG_FUNCTION_TRACER") and config.enabled("CONFIG_DYNAMIC_FTRACE")


def site(i: int) -> int:
    """The address of call site ``i`` (the instruction ftrace toggles)."""
    return FTRACE_SITES_AT + FTRACE_STRIDE * i


@hookimpl
def fuzzer_addconfig() -> list[ConfigOption]:
    return [
        ConfigOption("CONFIG_FUNCTION_TRACER", True,
                     "the function tracer: ftrace_init patches every call site at boot"
                     " (default n at next-20221215, the config of the reported boot)",
                     arch="powerpc", version_defaults={"next-20221215": False}),
        ConfigOption("CONFIG_DYNAMIC_FTRACE", True,
                     "call sites patched at run time (n: static _mcount calls, no patching)",
                     arch="powerpc"),
    ]


@hookimpl
def fuzzer_report_header(config: RunConfig) -> list[str]:
    if config.arch != "powerpc":
        return []
    if enabled(config):
        return ["ftrace: on -- ftrace_init patches every call site in start_kernel, right after"
                " poking_init"]
    which = "CONFIG_FUNCTION_TRACER=n" if not config.enabled("CONFIG_FUNCTION_TRACER") \
        else "CONFIG_DYNAMIC_FTRACE=n"
    return [f"ftrace: off ({which}) -- no patching in ftrace_init: the first patch after"
            " poking_init comes from the initcalls (init_kprobes)"]


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    if not enabled(machine.run):
        return
    for i in range(FTRACE_SITES):
        if machine.version.is_(*V612):
            # The two nops of -fpatchable-function-entry; the second is the call site.
            machine.write_text(site(i) - 4, [NOP, NOP])
        else:
            # -mprofile-kernel: 'mflr r0; bl _mcount'.
            machine.write_text(site(i) - 4, [MFLR_R0, BL_MCOUNT])
    # "disabled": ftrace_disabled, set by ftrace_kill() after an ftrace_bug.
    machine.attach("ftrace", {"ftrace_lock": Mutex("ftrace_lock"), "tracing": False,
                              "disabled": False})


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [ftrace_init, ftrace_process_locs, ftrace_init_nop, ftrace_make_nop, ftrace_make_call,
            ftrace_modify_code_v61, ftrace_modify_code, ftrace_modify_all_code,
            ftrace_replace_code_generic, ftrace_replace_code]


@hookimpl
def fuzzer_initcalls(config: RunConfig) -> list[Initcall]:
    if not enabled(config):
        return []
    return [Initcall("ftrace_init", ftrace_init_call, level="start_kernel")]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    if not enabled(config):
        return []
    return [Operation("ftrace.toggle", op_ftrace, {"enable": Boolean()},
                      doc="enable or disable function tracing: bulk-patch every call site",
                      comm="bash")]


def ftrace_init_call(cpu: Cpu) -> Gen:
    return (yield from cpu.k.ftrace_init(cpu))


def _ftrace_bug(cpu: Cpu, err: int, ip: int) -> None:
    """``ftrace_bug()``: the "ftrace bug" banner and ``FTRACE_WARN_ON_ONCE(1)`` (kernel/trace/
    ftrace.c:58-64 and :2161 v6.1): a ``WARN_ON_ONCE``, then ``ftrace_kill()`` (:8175-8180
    v6.1) sets ``ftrace_disabled``: ftrace is dead, ``ftrace_startup``/``ftrace_shutdown``
    return -ENODEV from then on. The caller stops its loop and returns."""
    n = cpu.m.version.lookup(LINES, "kernel/trace/ftrace.c line numbers")["ftrace_bug"]
    warn(cpu, f"{FTRACE_C}:{n}", function="ftrace_bug",
         detail=f"ftrace failed to modify {ip:#x}: error {err}")
    cpu.m.state["ftrace"]["disabled"] = True  # ftrace_kill()


# ---------------------------------------------------------------------------
# Boot: ftrace_init
# ---------------------------------------------------------------------------


@routine("ftrace_init", FTRACE_C)
def ftrace_init(cpu: Cpu) -> Gen:
    """``ftrace_init()`` (kernel/trace/ftrace.c:7505 v6.1, :7887 v6.12), from start_kernel
    (init/main.c:975 v6.1, :937 v6.12), right after ``poking_init``.

    ``ftrace_dyn_arch_init`` (trampolines, no patching), then
    ``ftrace_process_locs`` over the kernel's ``__mcount_loc`` table.
    """
    yield
    return (yield from cpu.k.ftrace_process_locs(cpu))


@routine("ftrace_process_locs", FTRACE_C, inlined=True)
def ftrace_process_locs(cpu: Cpu) -> Gen:
    """``ftrace_process_locs()`` (kernel/trace/ftrace.c:6739 v6.1, :7082 v6.12).

    Under ``ftrace_lock``, with interrupts saved and disabled ("we are modifying
    code that an interrupt may execute"), ``ftrace_update_code`` ->
    ``ftrace_nop_initialize`` for every record: ``ftrace_init_nop`` (6.12's own;
    before 6.12 the generic one, ``ftrace_make_nop(mod, rec, MCOUNT_ADDR)``).
    A failure is ``ftrace_bug`` (a WARN; ftrace killed) and stops the loop
    (``ftrace_update_code``'s ``break``, :3191-3192 v6.1); the locks are released and 0
    returned all the same (``ftrace_update_code``'s result is not checked).
    """
    m = cpu.m
    lock = m.state["ftrace"]["ftrace_lock"]
    yield from mutex_lock(cpu, lock)
    flags = cpu.local_irq_save()
    ret = 0
    for i in range(FTRACE_SITES):
        if m.version.is_(*V612):
            ret = yield from cpu.k.ftrace_init_nop(cpu, site(i))
        else:
            ret = yield from cpu.k.ftrace_make_nop(cpu, site(i), BL_MCOUNT)
        if ret:
            _ftrace_bug(cpu, ret, site(i))
            break
    cpu.local_irq_restore(flags)
    yield from mutex_unlock(cpu, lock)
    return 0


@routine("ftrace_init_nop", ARCH_FTRACE_C, versions=V612)
def ftrace_init_nop(cpu: Cpu, ip: int) -> Gen:
    """``ftrace_init_nop()`` (arch/powerpc/kernel/trace/ftrace.c:228, v6.12).

    With patchable function entries: expect nops at ``ip - 4`` and ``ip``
    (-EINVAL otherwise), then ``ftrace_modify_code(ip - 4, nop, mflr r0)``,
    i.e. ``patch_instruction`` -- the first patch after poking_init in 6.12.
    """
    m = cpu.m
    yield
    if m.fetch(cpu, ip - 4) != NOP or m.fetch(cpu, ip) != NOP:
        return -EINVAL
    return (yield from cpu.k.ftrace_modify_code(cpu, ip - 4, NOP, MFLR_R0))


@routine("ftrace_make_nop", ARCH_FTRACE_C, versions=BEFORE_612)
def ftrace_make_nop(cpu: Cpu, ip: int, addr: int) -> Gen:
    """``ftrace_make_nop()`` (arch/powerpc/kernel/trace/ftrace.c:344, v6.1).

    The target is within 32MB of the site (``test_24bit_addr``): replace the
    ``bl addr`` with a nop through ``ftrace_modify_code``. (Farther targets go
    through ``__ftrace_make_nop_kernel``, :305, which ends in the same
    ``patch_instruction``.)
    """
    return (yield from cpu.k.ftrace_modify_code(cpu, ip, addr, NOP))


@routine("ftrace_make_call", ARCH_FTRACE_C, versions=BEFORE_612)
def ftrace_make_call(cpu: Cpu, ip: int, addr: int) -> Gen:
    """``ftrace_make_call()`` (arch/powerpc/kernel/trace/ftrace.c:511, v6.1): nop -> ``bl addr``."""
    return (yield from cpu.k.ftrace_modify_code(cpu, ip, NOP, addr))


@routine("ftrace_modify_code", ARCH_FTRACE_C, versions=BEFORE_612, inlined=True)
def ftrace_modify_code_v61(cpu: Cpu, ip: int, old: int, new: int) -> Gen:
    """``ftrace_modify_code()`` (arch/powerpc/kernel/trace/ftrace.c:54, v6.1).

    ``copy_inst_from_kernel_nofault`` the site; -EINVAL (with a pr_err) unless
    it holds ``old``; then ``patch_instruction(ip, new)``.
    """
    yield
    if cpu.m.fetch(cpu, ip) != old:
        return -EINVAL
    return (yield from cpu.k.patch_instruction(cpu, ip, new))


@routine("ftrace_modify_code", ARCH_FTRACE_C, versions=V612, inlined=True)
def ftrace_modify_code(cpu: Cpu, ip: int, old: int, new: int) -> Gen:
    """``ftrace_modify_code()`` (arch/powerpc/kernel/trace/ftrace.c:81, v6.12).

    ``ftrace_validate_inst(ip, old)`` (-EINVAL on a mismatch), then
    ``patch_instruction(ip, new)``.
    """
    yield
    if cpu.m.fetch(cpu, ip) != old:
        return -EINVAL
    return (yield from cpu.k.patch_instruction(cpu, ip, new))


# ---------------------------------------------------------------------------
# Run time: ftrace_modify_all_code under ftrace_lock only
# ---------------------------------------------------------------------------


@routine("ftrace_modify_all_code", FTRACE_C)
def ftrace_modify_all_code(cpu: Cpu, enable: bool) -> Gen:
    """``ftrace_modify_all_code()`` (kernel/trace/ftrace.c:2797 v6.1, :2888 v6.12).

    Reached from ``ftrace_run_update_code`` through powerpc's
    ``arch_ftrace_update_code`` (arch/powerpc/kernel/trace/ftrace.c:705 v6.1,
    :324 v6.12), which calls it directly instead of through ``stop_machine``;
    the caller holds ``ftrace_lock`` and nothing else. ``FTRACE_UPDATE_CALLS``
    or ``FTRACE_DISABLE_CALLS``: ``ftrace_replace_code``. (The
    ``ftrace_update_ftrace_func`` patches of ``ftrace_call`` are not modelled.)
    """
    yield from cpu.k.ftrace_replace_code(cpu, enable)


@routine("ftrace_replace_code", FTRACE_C, versions=BEFORE_612)
def ftrace_replace_code_generic(cpu: Cpu, enable: bool) -> Gen:
    """``ftrace_replace_code()`` (kernel/trace/ftrace.c:2665, v6.1): the generic, weak one.

    For every record ``__ftrace_replace_code``: ``ftrace_make_call`` to turn a
    site on, ``ftrace_make_nop`` to turn it off; a failure is ``ftrace_bug``
    and stops processing (:2683-2685). Nothing once ftrace is dead (:2673).
    """
    if cpu.m.state["ftrace"]["disabled"]:
        return
    for i in range(FTRACE_SITES):
        if enable:
            ret = yield from cpu.k.ftrace_make_call(cpu, site(i), BL_FTRACE_CALLER)
        else:
            ret = yield from cpu.k.ftrace_make_nop(cpu, site(i), BL_FTRACE_CALLER)
        if ret:
            _ftrace_bug(cpu, ret, site(i))
            return


@routine("ftrace_replace_code", ARCH_FTRACE_C, versions=V612)
def ftrace_replace_code(cpu: Cpu, enable: bool) -> Gen:
    """``ftrace_replace_code()`` (arch/powerpc/kernel/trace/ftrace.c:174, v6.12): powerpc's own.

    For every record, ``ftrace_modify_code(ip, old, new)`` between the nop and
    the call; a failure ends the loop (``goto out``) in ``ftrace_bug``. Each site is one
    instruction with
    its own ``patch_instruction``, so every intermediate state is a mix of
    traced and untraced functions, all safe.
    """
    for i in range(FTRACE_SITES):
        old, new = (NOP, BL_FTRACE_CALLER) if enable else (BL_FTRACE_CALLER, NOP)
        ret = yield from cpu.k.ftrace_modify_code(cpu, site(i), old, new)
        if ret:
            _ftrace_bug(cpu, ret, site(i))
            return


def op_ftrace(cpu: Cpu, enable: bool) -> Gen:
    """``register_ftrace_function``/``unregister_ftrace_function``: under ``ftrace_lock``,
    ``ftrace_startup``/``ftrace_shutdown`` -> ``ftrace_run_update_code`` ->
    ``arch_ftrace_update_code`` -> ``ftrace_modify_all_code`` when the state changes;
    -ENODEV once an ``ftrace_bug`` killed ftrace (kernel/trace/ftrace.c:2981-2982 v6.1)."""
    s = cpu.m.state["ftrace"]
    ret = 0
    yield from mutex_lock(cpu, s["ftrace_lock"])
    if s["disabled"]:
        ret = -ENODEV
    elif s["tracing"] != enable:
        yield from cpu.k.ftrace_modify_all_code(cpu, enable)
        s["tracing"] = enable
    yield from mutex_unlock(cpu, s["ftrace_lock"])
    return ret
