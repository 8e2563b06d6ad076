"""Boot (init/main.c), the kernel config, the modelled kernel versions, a timer interrupt."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from fuzzer._config import ConfigOption, KernelConfig, KernelVersion, RunConfig
from fuzzer._known import KnownFinding
from fuzzer._machine import PANIC_ON_WARN, PANIC_ON_WARN_DEFAULT
from fuzzer._mm import SpinLock
from fuzzer._plugins import hookimpl
from fuzzer._routines import routine
from fuzzer._specs import InterruptSource, Invariant
from fuzzer.kernel import lockdep, smp
from fuzzer.kernel.known import known_findings
from fuzzer.kernel.locking import Mutex, RwSem

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine
    from fuzzer._options import OptionGroup

Gen = Generator[Any, None, Any]


@hookimpl
def fuzzer_addoption(parser: OptionGroup) -> None:
    parser.addoption(
        "--panic-on-warn", metavar="WHEN", default=PANIC_ON_WARN_DEFAULT, choices=PANIC_ON_WARN,
        help="the kernel's panic_on_warn (kernel/panic.c): 'known' (default) prints a known"
        " finding's WARNING and goes on, so it cannot hide what comes after it, and ends the"
        " example at any other; '1' ends it at every WARNING (syzkaller's setting); '0' goes on"
        " after every WARNING, as a kernel booted without it, and reports the first that is not"
        " known when the example ends",
    )


@hookimpl
def fuzzer_addconfig() -> list[ConfigOption]:
    return [
        ConfigOption("CONFIG_SMP", True, "symmetric multi-processing (mm_patch_enabled needs it)"),
        ConfigOption(
            "CONFIG_DEBUG_VM", True, "VM debug checks: assert_pte_locked is empty without it"
        ),
        ConfigOption(
            "CONFIG_STRICT_KERNEL_RWX", True, "read-only kernel text: patching goes through an alias"
        ),
        ConfigOption(
            "CONFIG_PROVE_LOCKING", True, "lockdep: lock-class dependency graph, circular"
            " dependencies and inconsistent hardirq lock state reported at once",
        ),
        ConfigOption(
            "CONFIG_FAULT_INJECTION", True, "the search may fail allocations (failslab,"
            " fail_page_alloc; one 'fail' step per injected failure, as syzkaller's fail_nth)",
        ),
        ConfigOption("CONFIG_PPC_64K_PAGES", True, "64K base pages (n: 4K)", arch="powerpc"),
        ConfigOption(
            "CONFIG_PPC_NR_DAWR", 1, "hardware breakpoint slots per CPU (POWER10: 2)", choices=(1, 2),
            arch="powerpc",
        ),
        ConfigOption(
            "CONFIG_PREEMPT", False, "full preemption (PREEMPT): a preemptible task may be"
            " preempted at any point and resume on another CPU (n: PREEMPT_NONE/VOLUNTARY)"
        ),
    ]


def dawr_slots(config: KernelConfig) -> int:
    """``nr_wp_slots()`` on powerpc: the DAWR/DAWRX pairs per CPU (``CONFIG_PPC_NR_DAWR``;
    POWER10 has two). What the powerpc MMU specs give as ``breakpoint_slots``."""
    return int(config.values.get("CONFIG_PPC_NR_DAWR", 1) or 1)


@hookimpl
def fuzzer_known_findings(config: RunConfig) -> list[KnownFinding]:
    """The modelled kernels' own known findings (:mod:`fuzzer.kernel.known`)."""
    return known_findings()


@hookimpl
def fuzzer_kernel_versions() -> list[KernelVersion]:
    return [
        KernelVersion(
            "v6.1", 610, "code patching through a per-CPU vmalloc-area alias in init_mm, every MMU"
        ),
        KernelVersion(
            "next-20221215",
            615,
            "c28c15b6d28a: temporary mm for Radix with the PTE pointer cached at CPU online",
        ),
        KernelVersion(
            "v6.2", 620, "980411a4d1bb: temporary mm, PTE looked up and locked for every patch"
        ),
        KernelVersion(
            "v6.12", 6120, "linux-source-6.12 (6.12.117): patch_mem, patch_instructions;"
            " ftrace patches at boot, before kprobes"
        ),
        KernelVersion(
            # Sorts just before v6.12 so that the released kernel stays the default.
            "v6.12-fixed", 6119, "v6.12 with the fixes for its two findings: tlb_finish_mmu() in"
            " put_patching_mm() and 21641bd9a7a7 (lazy TLB off before CPU offline)",
            based_on="v6.12",
        ),
    ]


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    # kernel/smp.c as powerpc runs it; another architecture brings its own (x86's example).
    cross_cpu = smp.ROUTINES if config.arch == "powerpc" else ()
    return [start_kernel, kernel_init, kernel_init_freeable, do_one_initcall, mark_readonly,
            timer_interrupt, *cross_cpu]


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    machine.attach("text_mutex", Mutex("text_mutex"))
    machine.attach("cpu_hotplug_lock", RwSem("cpu_hotplug_lock"))
    machine.on_hardirqs_on(lockdep.hardirqs_on_prepare)
    for cpu in machine.cpus:
        cpu.irqs_enabled = False


@hookimpl
def fuzzer_interrupt_sources(config: RunConfig) -> list[InterruptSource]:
    if config.arch != "powerpc":
        return []  # the decrementer is powerpc's; another architecture brings its own timer
    return [InterruptSource("timer", timer_interrupt, doc="decrementer: the timer interrupt")]


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [
        Invariant("locks released", _locks_released, when="end",
                  doc="every spinlock, mutex and rwsem is free once all CPUs are done"),
        Invariant("irqs restored", _irqs_restored, when="end",
                  doc="every online idle CPU has interrupts enabled again"),
    ]


def _locks_released(m: Machine) -> str | None:
    for name, lock in m.state.items():
        if not isinstance(lock, Mutex | RwSem | SpinLock):
            continue
        if getattr(lock, "owner", None) is not None or getattr(lock, "writer", None) is not None:
            return f"{name} still held: {lock!r}"
        readers = getattr(lock, "readers", 0)
        if readers:
            return f"{name} still held by {readers} readers"
    for mm in m.mms.values():
        for page in mm.pte_pages():
            if page.ptl.owner is not None:
                return f"PTE lock {page.ptl.name} still held by CPU {page.ptl.owner.n}"
    return None


def _irqs_restored(m: Machine) -> str | None:
    for cpu in m.cpus:
        if cpu.online and not cpu.irqs_enabled:
            return f"CPU {cpu.n} finished with interrupts disabled"
        if cpu.preempt_count:
            return f"CPU {cpu.n} finished with preempt_count {cpu.preempt_count}"
    return None


@routine("timer_interrupt", "arch/powerpc/kernel/time.c")
def timer_interrupt(cpu: Cpu) -> Gen:
    """``timer_interrupt()`` (arch/powerpc/kernel/time.c, v6.1-v6.2): does no patching.

    It only takes the CPU for a step: what matters is when it may arrive.
    """
    yield


@routine("start_kernel", "init/main.c")
def start_kernel(cpu: Cpu) -> Gen:
    """``start_kernel()`` (init/main.c, v6.1/v6.2), the parts that matter here.

    ``poking_init()`` runs right after ``mm_init`` (init/main.c:974 in v6.1),
    with interrupts still off and only the boot CPU up; interrupts come on
    later (``local_irq_enable``, :1040); then ``arch_call_rest_init`` starts
    ``kernel_init`` as PID 1, which the machine runs as a task of its own
    once this returns. (ftrace_init, :975, patches no text in this model.)
    """
    cpu.irqs_enabled = False
    yield
    yield from cpu.k.poking_init(cpu)
    # Initcalls of level "start_kernel" are the calls start_kernel makes itself
    # right after poking_init (v6.12: ftrace_init, init/main.c:937).
    for call in cpu.m.model.initcalls:
        if call.level == "start_kernel":
            yield from call.routine(cpu)
    cpu.irqs_enabled = True
    yield


@routine("kernel_init", "init/main.c")
def kernel_init(cpu: Cpu) -> Gen:
    """``kernel_init()`` (init/main.c, v6.1/v6.2): kernel_init_freeable, then mark_readonly."""
    yield from cpu.k.kernel_init_freeable(cpu)
    yield from cpu.k.mark_readonly(cpu)
    cpu.m.system_state = "SYSTEM_RUNNING"


@routine("kernel_init_freeable", "init/main.c")
def kernel_init_freeable(cpu: Cpu) -> Gen:
    """``kernel_init_freeable()`` (init/main.c, v6.1/v6.2).

    ``do_pre_smp_initcalls`` runs the early initcalls (``init_kprobes`` is an
    early_initcall) before ``smp_init``; then ``do_basic_setup`` runs the rest.
    The model brings no secondary CPU up here: ``smp_init``'s bring-ups are
    the state machine's ``online`` steps, which may come at any later point.
    """
    for initcall in cpu.m.model.initcalls:
        if initcall.level == "early":
            yield from cpu.k.do_one_initcall(cpu, initcall)
    for initcall in cpu.m.model.initcalls:
        if initcall.level not in ("early", "start_kernel"):
            yield from cpu.k.do_one_initcall(cpu, initcall)


@routine("do_one_initcall", "init/main.c")
def do_one_initcall(cpu: Cpu, initcall: Any) -> Gen:
    """``do_one_initcall()`` (init/main.c): a failing initcall is only logged."""
    ret = yield from initcall.routine(cpu)
    if isinstance(ret, int) and ret < 0:
        cpu.m.log.append(f"initcall {initcall.name} returned {ret}")
    return ret


@routine("mark_readonly", "init/main.c")
def mark_readonly(cpu: Cpu) -> Gen:
    """``mark_readonly()`` -> ``mark_rodata_ro()`` under STRICT_KERNEL_RWX: text becomes RO."""
    if cpu.m.config.enabled("CONFIG_STRICT_KERNEL_RWX"):
        cpu.m.rodata_ro = True
    cpu.m.system_state = "SYSTEM_FREEING_INITMEM"
    yield
