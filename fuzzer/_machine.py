"""The shared emulator: a multi-CPU POWER machine running the modelled kernel.

Kernel routines are generators; each ``yield`` is a point where real hardware
could interleave. A CPU holds a stack of activations (its task, then an
interrupt handler on top when one arrives); advancing a CPU resumes its top
generator to the next yield. A routine that must wait yields a zero-argument
callable that returns True while it is still blocked (``yield lock.busy``).
"""

from __future__ import annotations

import random
import sys
import traceback
from collections.abc import Callable, Generator, Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer import _bootcache, _sched
from fuzzer._errors import (
    Deadlock,
    EndStateViolation,
    Frame,
    InvariantViolation,
    KernelFailure,
    KernelWarning,
    Livelock,
    ModelLimitation,
    PluginError,
    Signature,
)
from fuzzer._mm import MM, PTLOCK_CLASS, Geometry, Lock, Prot, Pte, PtePage, SpinLock, Table
from fuzzer._oops import oops_of
from fuzzer._routines import STEP_ENTRIES, frame_of_code
from fuzzer._steps import Step, StepAction

#: ``--panic-on-warn``'s values (:meth:`Machine.warn`), the default first: known findings'
#: WARNs do not end an example, so they cannot hide what comes after them.
PANIC_ON_WARN = ("known", "1", "0")
PANIC_ON_WARN_DEFAULT = PANIC_ON_WARN[0]

if TYPE_CHECKING:
    from fuzzer._mmu import Mmu
    from fuzzer._model import Model
    from fuzzer._specs import InterruptSource, Operation

Wait = Callable[[], bool]
NOP = 0x6000_0000
USER_PAGE = Prot.PRESENT | Prot.READ | Prot.WRITE | Prot.ACCESSED | Prot.DIRTY


@attrs.define(eq=False)
class Task:
    """A ``task_struct``: what ``current`` is while an activation runs."""

    pid: int
    comm: str
    mm: MM | None = None
    """``current->mm``: None for kernel threads."""
    active_mm: MM | None = None
    """``current->active_mm``."""
    user_sp: int = 0
    """The user stack pointer saved at kernel entry (``task_pt_regs(current)->gpr[1]``)."""
    result: Any = None
    pinned: bool = False
    """A per-CPU kernel thread (``is_percpu_thread()``: the cpuhp threads): never migrates."""
    migration_disabled: int = 0
    """``migrate_disable()`` depth: preemptible, but resumes on the same CPU."""


@attrs.frozen
class Breakpoint:
    """A data breakpoint (``struct arch_hw_breakpoint``) as DAWR/DAWRX hold it."""

    addr: int
    """Start of the watched range (an effective address)."""
    length: int
    """Bytes watched."""
    kernel: bool = False
    """DAWRX privilege bit for kernel mode: a perf event without exclude_kernel."""
    user: bool = True
    """DAWRX privilege bit for problem state (ptrace and perf user watchpoints)."""

    def __repr__(self) -> str:
        modes = "/".join(m for m, on in (("kernel", self.kernel), ("user", self.user)) if on)
        return f"<brk {self.addr:#x}+{self.length} {modes}>"

    def hits(self, va: int, size: int) -> bool:
        return va < self.addr + self.length and self.addr < va + size


@attrs.define(eq=False)
class Activation:
    """One running routine on a CPU's stack: a task, or an interrupt on top of one."""

    gen: Generator[Any, None, Any]
    task: Task
    kind: str
    """``task`` or ``irq``/``nmi``."""
    label: str
    saved_irqs: bool = False
    saved_wait: Wait | None = None
    on_done: Callable[[Any], None] | None = None


class Cpu:
    """One CPU: online state, interrupt state, the loaded mm, TLB, breakpoints, its stack."""

    def __init__(self, machine: Machine, n: int) -> None:
        self.m = machine
        self.k = machine.k
        self.n = n
        self.online = False
        self.irqs_enabled = False
        """Interrupts soft-enabled (``local_irq_save`` clears it)."""
        self.preempt_count = 0
        """Spinlocks held and other atomic sections; sleeping here is a bug."""
        self.irq_depth = 0
        self.loaded_mm: MM | None = None
        """The mm whose translations the CPU uses (what switch_mm_irqs_off loaded)."""
        self.tlb: dict[Any, Any] = {}
        """TLB contents; the key format belongs to the MMU plugin."""
        self.hw: Any = None
        """The MMU plugin's per-CPU hardware state (PID register, SLB, ...)."""
        self.dawr: list[Any] = [None] * machine.nr_wp_slots
        """Hardware breakpoint registers (DAWR/DAWRX), as loaded."""
        self.current_brk: list[Any] = [None] * machine.nr_wp_slots
        """``current_brk``: the breakpoints the kernel intends to be installed."""
        self.state: dict[str, Any] = {}
        """Per-CPU state by name: the kernel's per-CPU variables (``cpu_patching_context``)
        and plugins' own per-CPU objects (see :meth:`attach`)."""
        self.stack: list[Activation] = []
        self.wait: Wait | None = None
        self.idle_task = Task(pid=0, comm=f"swapper/{n}", mm=None, active_mm=None)

    def __repr__(self) -> str:
        return f"<CPU {self.n}>"

    def attach(self, name: str, obj: Any) -> Any:
        """Attach per-CPU state (a kernel per-CPU variable, a plugin's object) under ``name``.

        The per-CPU counterpart of :meth:`Machine.attach`: what ``DEFINE_PER_CPU``
        is to a global. Returns ``obj``; a name attached twice is an error.
        """
        if name in self.state:
            raise ValueError(f"CPU {self.n} state {name!r} is attached twice")
        self.state[name] = obj
        return obj

    @property
    def current(self) -> Task:
        """``current``: the task of the innermost task activation (or the idle task)."""
        for act in reversed(self.stack):
            if act.kind == "task":
                return act.task
        return self.idle_task

    @property
    def idle(self) -> bool:
        return not self.stack

    def runnable(self) -> bool:
        return bool(self.stack) and (self.wait is None or not self.wait())

    def in_interrupt(self) -> bool:
        return self.irq_depth > 0

    # Primitive state changes with no interleaving point of their own.

    def local_irq_save(self) -> bool:
        flags = self.irqs_enabled
        self.irqs_enabled = False
        return flags

    def local_irq_restore(self, flags: bool) -> None:
        if flags and not self.irqs_enabled:
            for fn in self.m._irqs_on_hooks:  # trace_hardirqs_on (lockdep_hardirqs_on_prepare)
                fn(self)
        self.irqs_enabled = flags

    def trace(self) -> tuple[Frame, ...]:
        """The modelled call trace of this CPU's suspended stack, innermost first."""
        frames: list[Frame] = []
        for act in reversed(self.stack):
            frames.extend(suspended_frames(act.gen))
        return tuple(frames)


def suspended_frames(gen: Any) -> list[Frame]:
    """Modelled frames of a suspended generator chain, innermost first."""
    chain: list[Frame] = []
    g = gen
    while g is not None:
        code = getattr(g, "gi_code", None)
        if code is not None:
            f = frame_of_code(code)
            if f is not None:
                chain.append(f)
        g = getattr(g, "gi_yieldfrom", None)
    chain.reverse()
    return chain


def traceback_frames(tb: TracebackType | None) -> list[Frame]:
    """Modelled frames of a traceback, innermost first."""
    frames = [frame_of_code(f.f_code) for f, _ in traceback.walk_tb(tb)]
    out = [f for f in frames if f is not None]
    out.reverse()
    return out


@attrs.define(eq=False)
class CpuhpState:
    """A registered ``CPUHP_AP_ONLINE_DYN`` state: name and callbacks."""

    name: str
    startup: Callable[..., Generator[Any, None, int]] | None
    teardown: Callable[..., Generator[Any, None, int]] | None


class Machine:
    """One emulated machine: CPUs, physical memory, init_mm, the MMU and plugin state.

    Built fresh for every example from a resolved :class:`fuzzer.Model`; a run
    is a pure function of the model and the steps applied to it.
    """

    def __init__(self, model: Model, *, max_steps: int = 200_000, boot_cache: bool = False) -> None:
        self.model = model
        self.run = model.run
        self.config = model.run.config
        self.version = model.chain
        """The kernel version and those it is based on (``m.version.is_("v6.1")``)."""
        self.k = model.routines
        self.layout = model.mmu.layout  # the kernel's address layout (the MMU spec's)
        self.nr_wp_slots = model.mmu.breakpoint_slots(self.config)
        self.max_steps = max_steps
        self.boot_cache = boot_cache  # the boot may be a copy of the same one (fuzzer._bootcache)
        self.nsteps = 0
        self.steps: list[Step] = []
        self.rng = random.Random(0)
        self.draws: list[int] = []
        """The kernel's random draws still to make, as the boot step chose them."""
        self.boot_steps = 0
        """Emulated steps the boot took: the scheduled ones are counted from there."""
        self.arg_pool: dict[int, list[Any]] = {}
        """Operation arguments drawn in this example, by declared argument (the walk reuses them)."""
        self.accesses: Any = None
        """With interleaving feedback: the example's :class:`fuzzer._interleave.AccessLog`."""
        self.mem: dict[int, int] = {}
        """Physical memory, one 32-bit word per 4-byte-aligned physical address."""
        self.pristine_text: dict[int, int] = {}
        """Kernel text as built, before any patching (for the torn-fetch invariant)."""
        self.text_writes: dict[int, set[int]] = {}
        """Per physical text word, every value a patch was asked to write there."""
        self.stores = 0
        """Words stored to memory so far: a check of some text can skip a step that stored none."""
        self.rodata_ro = False  # mark_rodata_ro done: kernel text is read-only in the linear map
        self.static_keys: dict[str, bool] = {}
        self.system_state = "SYSTEM_BOOTING"
        self.booted = False
        self.hotplug_busy = False
        self.cpuhp_states: list[CpuhpState] = []
        self.vmalloc_next = self.layout.vmalloc_start
        self.next_pfn = self.layout.user_memory_start >> model.run.page_shift
        self.mm_ids = 1
        self.next_pid = 2
        self.state: dict[str, Any] = {}
        """Machine-wide state by name: the kernel's global objects (``text_mutex``,
        ``cpu_hotplug_lock``) and plugins' own state (see :meth:`attach`)."""
        self.log: list[str] = []
        self.failure: KernelFailure | None = None
        self.warnings: list[KernelWarning] = []  # printed, and the kernel went on (see warn)
        self._warned_once: set[tuple[str, str]] = set()
        self.cpus = [Cpu(self, n) for n in range(model.run.cpus)]
        self.mmu: Mmu = model.mmu.factory(self)
        self.geometry: Geometry = self.mmu.geometry(model.run.page_shift)
        self.init_mm = MM("init_mm", 0, self.geometry, is_init=True)
        self.mms: dict[int, MM] = {0: self.init_mm}
        self._step_checks = model.step_invariants
        self._step_fns = tuple(c.check for c in self._step_checks)
        self._end_checks = model.end_invariants
        self._observers: list[Callable[[Cpu], None]] = []
        self._entry_hooks: list[Callable[[Cpu], None]] = []
        self._irqs_on_hooks: list[Callable[[Cpu], None]] = []
        if model.machine_setup is not None:
            model.machine_setup(self)  # through pluggy; a raising plugin is blamed by name

    # -- plugin state ------------------------------------------------------------

    def attach(self, name: str, obj: Any) -> Any:
        """Attach machine-wide state (a kernel global, a plugin's own object) under ``name``.

        The one home for state on the machine; per-CPU state goes to
        :meth:`Cpu.attach`. Returns ``obj``; a name attached twice is an error.
        """
        if name in self.state:
            raise ValueError(f"machine state {name!r} is attached twice")
        self.state[name] = obj
        return obj

    def on_exception_entry(self, fn: Callable[[Cpu], None]) -> None:
        """Call ``fn(cpu)`` whenever a CPU runs the exception entry code.

        That is every interrupt delivered, and every fault an MMU takes (a
        hash fault on the patching alias). Plugins that model code in the
        entry path (patched mitigation sequences) check what it executes.
        """
        self._entry_hooks.append(fn)

    def on_hardirqs_on(self, fn: Callable[[Cpu], None]) -> None:
        """Call ``fn(cpu)`` whenever a CPU's interrupts go from off to on, before they are
        on (``trace_hardirqs_on``: the kernel's lockdep registers here)."""
        self._irqs_on_hooks.append(fn)

    def exception_entry(self, cpu: Cpu) -> None:
        for fn in self._entry_hooks:
            fn(cpu)

    def observe_steps(self, fn: Callable[[Cpu], None]) -> None:
        """Call ``fn(cpu)`` after every emulated step (for tracing plugins; costs speed)."""
        self._observers.append(fn)

    # -- memory ----------------------------------------------------------------------

    def new_mm(self, name: str) -> MM:
        mm = MM(f"{name}#{self.mm_ids}", self.mm_ids, self.geometry)
        self.mms[self.mm_ids] = mm
        self.mm_ids += 1
        return mm

    def alloc_vmalloc(self, size: int) -> int | None:
        """Kernel virtual space for a vmalloc/module_alloc range, with a guard page; None when full."""
        addr = self.vmalloc_next
        if addr + size > self.layout.vmalloc_end:
            return None
        self.vmalloc_next = addr + size + self.run.page_size
        return addr

    def translate(self, cpu: Cpu, va: int, write: bool) -> int | None:
        """Physical address of a kernel-mode access by ``cpu``, or None for a fault."""
        lay = self.layout
        if va >= lay.page_offset:
            if va < lay.page_offset + lay.memory_size:
                if write and self.rodata_ro and va < lay.page_offset + lay.kernel_text_end:
                    return None  # STRICT_KERNEL_RWX: text is read-only in the linear map
                return va - lay.page_offset
            if lay.vmalloc_start <= va < lay.vmalloc_end:
                return self.mmu.translate_vmalloc(cpu, va, write)
            return None
        return self.mmu.translate_user(cpu, va, write)

    def store(self, cpu: Cpu, va: int, value: int, size: int = 4) -> bool:
        """A kernel store of 4 or 8 bytes, single-copy atomic; False on a fault.

        A store through a patching mm (the patch itself) must find every DAWR
        suspended: a watchpoint firing there is a failure, and so is any
        breakpoint left live (temp mm loaded <=> breakpoints suspended).
        """
        pa = self.translate(cpu, va, True)
        if pa is None:
            return False
        mm = cpu.loaded_mm
        if mm is not None and mm.is_patching:
            for brk in cpu.dawr:
                if brk is None:
                    continue
                if brk.kernel and brk.hits(va, size):
                    raise InvariantViolation(
                        "no watchpoint in the patch window",
                        f"CPU {cpu.n}'s data breakpoint {brk.addr:#x}+{brk.length} fired on the"
                        f" patching store to {va:#x} through {mm.name}",
                    )
                raise InvariantViolation(
                    "breakpoints suspended in the patch window",
                    f"CPU {cpu.n} stored through {mm.name} with DAWR {brk.addr:#x}+{brk.length}"
                    " still live",
                )
        if self.accesses is not None:
            self.accesses.note(cpu, ("text", pa), True)
            if size == 8:
                self.accesses.note(cpu, ("text", pa + 4), True)
        if size == 8:
            hi, lo = (value >> 32) & 0xFFFF_FFFF, value & 0xFFFF_FFFF
            # Little-endian: the first word in memory is the low half.
            self._write_word(pa, lo)
            self._write_word(pa + 4, hi)
        else:
            self._write_word(pa, value & 0xFFFF_FFFF)
        return True

    def _write_word(self, pa: int, value: int) -> None:
        self.mem[pa] = value
        self.stores += 1

    def fetch(self, cpu: Cpu, va: int) -> int:
        """Instruction fetch of one word: kernel text, or executable vmalloc (insn slots)."""
        base = self.layout.page_offset
        if base <= va < base + self.layout.memory_size:
            pa = va - base
        else:
            mapped = self.translate(cpu, va, False)
            if mapped is None:
                raise ModelLimitation(f"CPU {cpu.n} fetched from unmapped {va:#x}")
            pa = mapped
        if self.accesses is not None:
            self.accesses.note(cpu, ("text", pa), False)
        return self.mem.get(pa, NOP)

    def note_access(self, cpu: Cpu, key: Any, write: bool) -> None:
        """``cpu`` read or wrote the shared object ``key`` (a hashable name, its kind first:
        ``("kprobe table", addr)``): the interleaving feedback pairs conflicting accesses.
        Free when no feedback is collected."""
        if self.accesses is not None:
            self.accesses.note(cpu, key, write)

    def write_text(self, va: int, words: Iterable[int]) -> None:
        """Lay out kernel text at build time (before boot)."""
        for i, w in enumerate(words):
            pa = va - self.layout.page_offset + 4 * i
            self.mem[pa] = w
            self.pristine_text[pa] = w

    def expect_text(self, va: int, words: Iterable[int]) -> None:
        """A patch is about to write ``words`` at ``va``: they are legitimate values there."""
        for i, w in enumerate(words):
            self.text_writes.setdefault(va - self.layout.page_offset + 4 * i, set()).add(w)

    def get_random_long(self) -> int:
        """``get_random_long()``: the next chosen draw (the boot step's ``draws``), else
        from the seeded generator; either way a run is reproducible."""
        return self.random_below(1 << 64)

    def random_below(self, n: int) -> int:
        """``get_random_long() % n``, the way the kernel narrows a draw to ``[0, n)``.

        A chosen draw ``v`` gives ``v % n``: the search picks boundary values of
        the range (0, 1, -1 for ``n - 1``, -2) without knowing ``n``. Without
        one, the seeded generator's next 64 bits, as ``get_random_long`` was
        before draws were decisions (so saved runs replay the same).
        """
        if self.draws:
            return self.draws.pop(0) % n
        return self.rng.getrandbits(64) % n

    # -- the scheduler -----------------------------------------------------------------

    def push(
        self,
        cpu: Cpu,
        gen: Generator[Any, None, Any],
        task: Task,
        *,
        kind: str = "task",
        label: str = "",
        on_done: Callable[[Any], None] | None = None,
    ) -> Activation:
        act = Activation(gen, task, kind, label or task.comm, on_done=on_done)
        if kind != "task":
            act.saved_irqs = cpu.irqs_enabled
            act.saved_wait = cpu.wait
            cpu.irqs_enabled = False
            cpu.irq_depth += 1
            self.mmu.isync(cpu)  # taking an interrupt is context synchronising
            self.exception_entry(cpu)
        cpu.stack.append(act)
        cpu.wait = None
        return act

    def new_task(self, comm: str, mm: MM | None = None) -> Task:
        pid = self.next_pid
        self.next_pid += 1
        return Task(pid=pid, comm=comm, mm=mm, active_mm=mm or self.init_mm)

    def new_user_task(self, comm: str) -> Task:
        """A user process in a syscall: its own mm with a stack page mapped."""
        mm = self.new_mm(f"{comm}_mm")
        stack = self.layout.user_stack_top - self.run.page_size
        self.map_page(mm, stack, Pte(self.alloc_pfn(), USER_PAGE))
        task = self.new_task(comm, mm)
        task.user_sp = stack + self.run.page_size - 256
        return task

    def alloc_pfn(self) -> int:
        pfn = self.next_pfn
        self.next_pfn += 1
        return pfn

    def map_page(self, mm: MM, va: int, pte: Pte) -> None:
        """Map a page outside any modelled routine (machine construction, process setup)."""
        idx = mm.geometry.indices(va)
        node: Any = mm.pgd
        for level in range(3):
            nxt = node.entries.get(idx[level])
            if nxt is None:
                nxt = Table(level + 1) if level < 2 else PtePage(
                    SpinLock(f"ptl({mm.name}, {va:#x})", PTLOCK_CLASS))
                node.entries[idx[level]] = nxt
            node = nxt
        node.entries[idx[3]] = pte

    def copy_from_user(self, cpu: Cpu, va: int) -> int | None:
        """A kernel read of a user word (``copy_from_user_nofault``); None on a fault.

        From interrupt or NMI context the loaded mm must be the task's own
        (the x86 ``nmi_uaccess_okay`` lesson): otherwise the read goes through
        whatever the loaded context maps there -- a patching mm maps kernel text.
        """
        if cpu.in_interrupt() and cpu.loaded_mm is not cpu.current.mm:
            loaded = cpu.loaded_mm.name if cpu.loaded_mm is not None else "none"
            raise InvariantViolation(
                "uaccess under a foreign mm",
                f"CPU {cpu.n} read user memory at {va:#x} from interrupt context with {loaded}"
                f" loaded, not {cpu.current.comm}'s own mm",
            )
        pa = self.mmu.translate_user(cpu, va, False)
        return None if pa is None else self.mem.get(pa & ~3, 0)
    def advance(self, cpu: Cpu) -> None:
        """Resume ``cpu``'s top activation to its next interleaving point."""
        act = cpu.stack[-1]
        try:
            cpu.wait = act.gen.send(None)
        except StopIteration as stop:
            self._returned(cpu, act, stop.value)
        except KernelFailure as failure:
            self._annotate(failure, cpu, traceback_frames(failure.__traceback__) + _below(cpu))
            raise
        except (PluginError, ModelLimitation):
            raise
        except Exception as exc:
            oops = oops_of(exc)  # a modelled routine followed a NULL kernel pointer
            if oops is None:
                raise self._blame(exc) from exc
            self._annotate(oops, cpu, traceback_frames(exc.__traceback__) + _below(cpu))
            raise oops from exc
        n = self.nsteps = self.nsteps + 1
        if n > self.max_steps:
            self._fail(Livelock(f"{self.max_steps} steps without the example ending"), cpu)
        try:
            # The step invariants' functions, bound once (the per-step path: no attribute
            # lookups); a failing one is named from the model's list.
            for check in self._step_fns:
                msg = check(self)
                if msg is not None:
                    self._failed_check(check, msg, cpu)
            for obs in self._observers:
                obs(cpu)
        except KernelFailure:
            raise
        except Exception as exc:
            raise self._blame(exc) from exc

    def _failed_check(self, fn: Callable[[Machine], str | None], msg: str, cpu: Cpu) -> None:
        """The step invariant whose function is ``fn`` found ``msg``: fail it by name."""
        name = next(c.name for c in self._step_checks if c.check is fn)
        self._fail(InvariantViolation(name, msg), cpu)

    def _returned(self, cpu: Cpu, act: Activation, value: Any) -> None:
        """``act``, the top activation of ``cpu``, returned ``value``: pop it."""
        cpu.stack.pop()
        if act.kind != "task":
            cpu.irq_depth -= 1
            cpu.irqs_enabled = act.saved_irqs
            cpu.wait = act.saved_wait
            self.mmu.isync(cpu)  # and so is rfid, the return from it
        else:
            cpu.wait = None
        act.task.result = value
        if act.on_done is not None:
            act.on_done(value)

    def _annotate(self, failure: KernelFailure, cpu: Cpu, frames: list[Frame]) -> None:
        if failure.task is None:  # else annotated where it fired (Machine.warn)
            failure.cpu = cpu.n
            failure.task = f"PID: {cpu.current.pid} Comm: {cpu.current.comm}"
        failure.step_index = len(self.steps)
        if not failure.trace:
            failure.trace = tuple(frames)
        failure.context.setdefault("irqs_enabled", cpu.irqs_enabled)
        failure.context.setdefault("in_interrupt", cpu.in_interrupt())
        if failure not in self.warnings:
            failure.warned = tuple(self.warnings)
        self.failure = failure

    def warn(self, cpu: Cpu, warning: KernelWarning, *, once: bool = True) -> None:
        """A ``WARN`` on ``cpu``, from modelled kernel code: end the example, or print it and
        return so the code goes on, as the run's ``--panic-on-warn`` says.

        ``__warn()`` (kernel/panic.c:773-801, v6.12; the same in v6.1) prints the
        report, then ``check_panic_on_warn()`` (:291) panics when ``panic_on_warn``
        is set; else the caller goes on. ``once``: a ``WARN_ON_ONCE`` /
        ``VM_WARN_ON_ONCE``, which ``report_bug()`` (lib/bug.c:175-185) prints once per
        boot per site (``BUGFLAG_ONCE``/``BUGFLAG_DONE``); a plain ``WARN_ON``/``VM_WARN_ON``
        prints every time. ``1``: every WARN ends the example (syzkaller's setting);
        ``known``: a known finding's WARN (:attr:`fuzzer.Model.warn_past`) is printed
        and the code goes on, any other ends the example; ``0``: every WARN is
        printed and the code goes on, and the first that is not known is the
        example's finding when it ends (:meth:`check_end_state`) unless another
        failure ends it first.
        """
        site = (warning.function, warning.at)
        if once and site in self._warned_once:
            return
        frames: list[Frame] = []
        f: FrameType | None = sys._getframe(1)
        while f is not None and f.f_code is not _ADVANCE:
            frame = frame_of_code(f.f_code)
            if frame is not None:
                frames.append(frame)
            f = f.f_back
        self._annotate(warning, cpu, frames + _below(cpu))
        self.failure = None
        sig = warning.signature
        panic = str(self.run.option("panic_on_warn", PANIC_ON_WARN_DEFAULT))
        if panic == "1" or (panic == "known" and sig not in self.model.warn_past):
            raise warning  # the caller's activation dies here (panic): the example ends
        if once:
            self._warned_once.add(site)
        self.warnings.append(warning)
        pid = cpu.current.pid
        self.log.append(f"WARNING: CPU: {cpu.n} PID: {pid} at {warning.at} {sig.function}"
                        f" ({'known, ' if sig in self.model.warn_past else ''}not panic_on_warn:"
                        f" the kernel goes on)")

    def warned_past(self) -> list[Signature]:
        """The known findings' signatures this example printed a WARNING for and went on
        from, each once, in the order it first printed them."""
        return list(dict.fromkeys(w.signature for w in self.warnings if w.signature in self.model.warn_past))

    def _fail(self, failure: KernelFailure, cpu: Cpu) -> None:
        self._annotate(failure, cpu, list(cpu.trace()))
        raise failure

    def _blame(self, exc: BaseException) -> BaseException:
        """A Python exception from model code: whose fault is it?"""
        owner = self.model.plugin_of_traceback(exc.__traceback__)
        if owner is not None:
            plugin, where = owner
            return PluginError(plugin, where, exc)
        return exc

    def runnable(self) -> list[Cpu]:
        return [c for c in self.cpus if c.stack and (c.wait is None or not c.wait())]

    def busy(self) -> list[Cpu]:
        return [c for c in self.cpus if c.stack]

    def _deadlock(self) -> None:
        waiting = self.busy()
        lines, wheres, on_locks = [], [], set()
        for c in waiting:
            w = getattr(c.wait, "__self__", c.wait)
            where = c.trace()[0].function if c.trace() else "?"
            wheres.append(where)
            if isinstance(w, Lock):  # a lock: queued behind the cycle
                on_locks.add(where)
            lines.append(f"CPU {c.n} in {where} waits on {w!r}")
        # Named by the routine most of the waiting CPUs wait in, if two or more do; on a
        # tie, one whose CPUs wait on something other than a lock (the cycle, not its queue).
        common = max(dict.fromkeys(wheres), key=lambda r: (wheres.count(r), r not in on_locks))
        name = common if wheres.count(common) >= 2 and common != "?" else "deadlock"
        self._fail(Deadlock("; ".join(lines), function=name), waiting[0])

    def run_bytes(self, schedule: bytes) -> tuple[int, ...]:
        """Advance CPUs by a block of schedule decisions; return the CPUs advanced.

        Each byte picks one of the runnable CPUs (lowest number first, modulo
        their count), so zero bytes -- what Hypothesis shrinks towards -- mean
        "the first runnable CPU". Stops early when nothing is left to run.
        """
        done: list[int] = []
        for b in schedule:
            r = self.runnable()
            if not r:
                if self.busy():
                    self._record_run(done)
                    self._deadlock()
                break
            cpu = r[b % len(r)]
            done.append(cpu.n)
            try:
                self.advance(cpu)
            except BaseException:
                self._record_run(done)
                raise
        self._record_run(done)
        return tuple(done)

    def _record_run(self, cpus: list[int]) -> None:
        # Consecutive schedule blocks are one step: replaying them is the same.
        if not cpus:
            return
        steps = self.steps
        if steps and steps[-1].action is StepAction.RUN:
            steps[-1] = Step(StepAction.RUN, cpus=steps[-1].cpus + tuple(cpus))
        else:
            steps.append(Step(StepAction.RUN, cpus=cpus))

    def run_cpus(self, cpus: Iterable[int]) -> None:
        """Replay a recorded schedule: advance each CPU in turn (skipping any that cannot run)."""
        for n in cpus:
            c = self.cpus[n]
            if c.runnable():
                self.advance(c)

    def run_to_completion(self, cpus: list[Cpu] | None = None, bound: int = 100_000) -> None:
        """Round-robin every runnable CPU until none has work: what the end of an example does."""
        cpus = cpus if cpus is not None else self.cpus
        for _ in range(bound):
            moved = False
            for c in cpus:
                if c.stack and (c.wait is None or not c.wait()):
                    self.advance(c)
                    moved = True
            if not moved:
                if any(c.stack for c in cpus):
                    self._deadlock()
                return
        busy = [c for c in cpus if c.stack]
        self._fail(
            Livelock(
                f"CPUs {', '.join(str(c.n) for c in busy)} still running after {bound} rounds"
            ),
            busy[0],
        )

    # -- steps (fuzzer._engine.replay.apply_step applies a recorded one) --------------

    def boot(self, seed: int, draws: Iterable[int] = ()) -> None:
        """Boot CPU 0 (``start_kernel`` to the end of initcalls); only CPU 0 is online.

        ``draws``: the kernel's random draws, chosen (see :meth:`random_below`). A boot
        already run twice on this model comes from :mod:`fuzzer._bootcache`, the same state.
        """
        draws = tuple(draws)
        key = _bootcache.key(self, seed, draws)
        if key is None:
            self._boot(seed, draws)
            return
        if _bootcache.restore(self, key):
            return
        entered = getattr(self.k, "_entered", None)
        before = set(entered) if entered is not None else set()
        if entered is not None:
            entered.clear()  # so what the boot enters is known (the recorder's set is shared)
        try:
            self._boot(seed, draws)
            _bootcache.boot_recorded(self, key, frozenset(entered or ()))
        finally:
            if entered is not None:
                entered |= before

    def _boot(self, seed: int, draws: Iterable[int]) -> None:
        self.steps.append(Step("boot", seed=seed, draws=draws))
        self.rng = random.Random(seed)
        self.draws = list(draws)
        cpu0 = self.cpus[0]
        cpu0.online = True
        cpu0.loaded_mm = self.init_mm
        self.mmu.switch_context(cpu0, self.init_mm)
        cpu0.idle_task.active_mm = self.init_mm
        self.push(cpu0, self.k.start_kernel(cpu0), cpu0.idle_task, label="start_kernel")
        self.run_to_completion([cpu0])
        # rest_init: kernel_init runs as PID 1, still named after the idle task.
        self.system_state = "SYSTEM_SCHEDULING"
        init = Task(pid=1, comm="swapper/0", mm=None, active_mm=self.init_mm)
        self.push(cpu0, self.k.kernel_init(cpu0), init, label="kernel_init")
        self.run_to_completion([cpu0])
        self.booted = True
        self.boot_steps = self.nsteps

    # Preconditions, so the state machine only offers steps that make sense.

    def can_online(self, cpu: Cpu) -> bool:
        return self.booted and not cpu.online and not cpu.stack and not self.hotplug_busy

    def can_offline(self, cpu: Cpu) -> bool:
        # CPU 0 stays: the model's boot CPU runs no hotplug of its own.
        return (
            self.booted and cpu.n != 0 and cpu.online and not cpu.stack and not self.hotplug_busy
        )

    def can_start(self, cpu: Cpu) -> bool:
        return self.booted and cpu.online and not cpu.stack

    def can_interrupt(self, cpu: Cpu, source: InterruptSource) -> bool:
        return self.booted and cpu.online and (source.nmi or cpu.irqs_enabled)

    def cpu_up(self, cpu: Cpu) -> None:
        if not self.can_online(cpu):
            raise ValueError(f"CPU {cpu.n} cannot come online now")
        self.steps.append(Step("online", cpu=cpu.n))
        self.hotplug_busy = True
        task = Task(pid=self.next_pid, comm=f"cpuhp/{cpu.n}", active_mm=self.init_mm, pinned=True)
        self.next_pid += 1

        def done(_: Any) -> None:
            self.hotplug_busy = False

        self.push(cpu, self.k.cpuhp_bringup_ap(cpu), task, label="cpu_up", on_done=done)

    def cpu_down(self, cpu: Cpu) -> None:
        if not self.can_offline(cpu):
            raise ValueError(f"CPU {cpu.n} cannot go offline now")
        self.steps.append(Step("offline", cpu=cpu.n))
        self.hotplug_busy = True
        task = Task(pid=self.next_pid, comm=f"cpuhp/{cpu.n}", active_mm=self.init_mm, pinned=True)
        self.next_pid += 1

        def done(_: Any) -> None:
            self.hotplug_busy = False

        self.push(cpu, self.k.cpuhp_teardown_ap(cpu), task, label="cpu_down", on_done=done)

    def start(self, cpu: Cpu, op: Operation, args: dict[str, Any]) -> Task:
        if not self.can_start(cpu):
            raise ValueError(f"CPU {cpu.n} cannot start {op.name} now")
        self.steps.append(Step("start", cpu=cpu.n, name=op.name, args=args))
        comm = op.comm or op.name.rsplit(".", 1)[-1]
        task = self.new_task(comm) if op.kthread else self.new_user_task(comm)
        try:
            gen = op.routine(cpu, **args)
        except Exception as exc:
            raise self._blame(exc) from exc
        # The scheduler switched to this task: a process's mm is loaded while it
        # runs in the kernel; once it is done the CPU switches to its idle task.
        # What a kernel thread or the idle task has loaded is the MMU's business
        # (init_mm, or the previous mm borrowed lazily).
        self.mmu.context_switch(cpu, task)

        def done(_: Any) -> None:
            self.mmu.context_switch(cpu, cpu.idle_task)

        self.push(cpu, gen, task, label=op.name, on_done=done)
        return task

    def interrupt(self, cpu: Cpu, source: InterruptSource) -> None:
        if not self.can_interrupt(cpu, source):
            raise ValueError(f"CPU {cpu.n} cannot take {source.name} now")
        self.steps.append(Step("irq", cpu=cpu.n, name=source.name))
        try:
            self.push(
                cpu, source.handler(cpu), cpu.current, kind="nmi" if source.nmi else "irq",
                label=source.name,
            )
        except KernelFailure as failure:  # the exception entry code itself failed
            self._annotate(failure, cpu, list(cpu.trace()))
            raise
        except (PluginError, ModelLimitation):
            raise
        except Exception as exc:
            raise self._blame(exc) from exc

    def speculative_fill(self, cpu: Cpu, va: int) -> None:
        """The MMU loads a translation of ``va`` into ``cpu``'s TLB unasked (see ``_sched``)."""
        if not _sched.can_fill(self, cpu, va):
            raise ValueError(f"CPU {cpu.n} has no live mapping of {va:#x} to fill")
        self.steps.append(Step("fill", cpu=cpu.n, args={"va": va}))
        mm = _sched.fill_context(self, cpu, va)
        assert mm is not None
        try:
            self.mmu.speculative_fill(cpu, mm, va)
        except Exception as exc:
            raise self._blame(exc) from exc
        self._check_now(cpu)

    def migrate(self, cpu: Cpu, to: Cpu) -> None:
        """Preempt the task on ``cpu`` (CONFIG_PREEMPT); it resumes on ``to`` (see ``_sched``)."""
        if not _sched.can_migrate(self, cpu, to):
            raise ValueError(f"the task on CPU {cpu.n} cannot move to CPU {to.n} now")
        self.steps.append(Step("migrate", cpu=cpu.n, cpus=(to.n,)))
        try:
            _sched.migrate(self, cpu, to)
        except Exception as exc:
            raise self._blame(exc) from exc
        self._check_now(cpu)

    def _check_now(self, cpu: Cpu) -> None:
        """The step invariants, after a decision that is not an emulated step."""
        try:
            for check in self._step_checks:
                msg = check.check(self)
                if msg is not None:
                    self._fail(InvariantViolation(check.name, msg), cpu)
        except KernelFailure:
            raise
        except Exception as exc:
            raise self._blame(exc) from exc

    def finish(self) -> None:
        """End of an example: every CPU runs to completion, then the end-state checks."""
        self.run_to_completion()
        self.check_end_state()

    def quiescent(self) -> bool:
        """No CPU has anything to run: the state :meth:`finish` checks, reached early."""
        return not any(c.stack for c in self.cpus)

    def check_end_state(self) -> None:
        """The end-state invariants, on a quiescent machine (what :meth:`finish` ends with).

        Checking them at a quiescent point in the middle of an example is the
        same as ending the example there: a failure found so replays, from the
        steps so far, at :meth:`finish`.
        """
        for i, warning in enumerate(self.warnings):
            if warning.signature not in self.model.warn_past:  # printed under panic_on_warn=0
                warning.warned = tuple(self.warnings[:i])
                warning.step_index = len(self.steps)
                self.failure = warning
                raise warning
        for check in self._end_checks:
            try:
                msg = check.check(self)
            except Exception as exc:
                raise self._blame(exc) from exc
            if msg is not None:
                failure = EndStateViolation(check.name, msg)
                failure.step_index = len(self.steps)
                failure.warned = tuple(self.warnings)
                self.failure = failure
                raise failure


#: Where :meth:`Machine.warn` stops walking the Python stack: the CPU's activations start there.
_ADVANCE = Machine.advance.__code__
STEP_ENTRIES.update(id(fn.__code__) for fn in (
    Machine.advance, Machine.boot, Machine.cpu_up, Machine.cpu_down, Machine.start,
    Machine.interrupt, Machine.speculative_fill, Machine.migrate, Machine.finish))


def _below(cpu: Cpu) -> list[Frame]:
    """Frames of the activations under the top one (an interrupted task)."""
    frames: list[Frame] = []
    for act in reversed(cpu.stack[:-1]):
        frames.extend(suspended_frames(act.gen))
    return frames
