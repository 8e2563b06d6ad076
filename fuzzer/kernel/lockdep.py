"""lockdep (kernel/locking/lockdep.c): lock classes, their dependency graph, hardirq usage.

With ``CONFIG_PROVE_LOCKING`` every acquisition the locking primitives make
(:mod:`fuzzer.kernel.locking`) goes through :func:`lock_acquire`, as the
kernel's ``spin_acquire``/``mutex_acquire``/``rwsem_acquire`` do: the lock's
class (its name: all split PTE locks are one class, as ``spin_lock_init`` at
one call site makes them) gets a dependency on the class the task took last,
and a dependency that closes a cycle is reported at once -- "possible
circular locking dependency detected" -- whether or not the interleaving
that deadlocks ever runs. Classes and dependencies live on the machine: one
example is one boot, and lockdep's graph lives as long as the kernel.

Hardirq-state tracing: a class used in hardirq context ({IN-HARDIRQ-W}) and
one held or taken with interrupts enabled ({HARDIRQ-ON-W}) is "inconsistent
lock state" (``mark_lock_irq`` -> ``valid_state``); enabling interrupts marks
every held lock (``lockdep_hardirqs_on_prepare`` -> ``mark_held_locks``).

After its first report lockdep switches itself off (``debug_locks_off``):
later acquisitions are not checked, ``lockdep_assert_*`` go quiet, and only
the model's own checks (deadlock detection, ``might_sleep``, BUGs,
invariants) still report. A report whose signature is a known finding of a
released kernel does not end the example (the kernel goes on running after
printing it); any other ends it, as the fuzzing config's console check does.

The dependencies must not connect the two usages either: a new edge from a
hardirq-safe class to a hardirq-unsafe one (``check_irq_usage``), or a usage
change that makes an existing path do so (``check_usage_forwards`` /
``_backwards``: "possible irq lock inversion dependency detected").

Not modelled: softirq states, the read-lock refinements of those checks
(``exclusive_mask``: no modelled reader is taken in hardirq context), recursive
readers (no modelled lock has one: percpu rwsem readers are non-recursive,
so every cycle is a deadlock), trylocks, ``lock_release`` imbalance reports
(``spinlock_debug`` and ``mutex-debug`` report those), and lockdep in NMI
context (the kernel does not track it there either).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._errors import Frame, LockdepSplat
from fuzzer._routines import FRAME_BY_ID, STEP_ENTRIES
from fuzzer.kernel.bug import warn

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine, Task

LOCKDEP_C = "kernel/locking/lockdep.c"

#: Lines in kernel/locking/lockdep.c of each report's call, per version:
#: ``print_circular_bug`` in check_noncircular, ``print_deadlock_bug`` in
#: check_deadlock, ``print_usage_bug`` in valid_state, and
#: ``DEBUG_LOCKS_WARN_ON(lockdep_hardirq_context())`` in
#: lockdep_hardirqs_on_prepare, ``print_bad_irq_dependency`` in check_irq_usage,
#: ``print_irq_inversion_bug`` in check_usage_forwards/backwards. From linux-source-6.1 (6.1.192) and
#: linux-source-6.12 (6.12.117); next-20221215 and v6.2 were not checked, so
#: their reports name the file without a line (see :func:`location`).
LINES: dict[str, dict[str, int]] = {
    "v6.1": {"circular": 2215, "recursive": 3090, "usage": 4041, "hardirq_context": 4381,
             "irq_usage": 2893, "inversion_forwards": 4136, "inversion_backwards": 4171},
    "v6.12": {"circular": 2234, "recursive": 3117, "usage": 4080, "hardirq_context": 4428,
              "irq_usage": 2916, "inversion_forwards": 4179, "inversion_backwards": 4214},
}

#: The locking primitives' own frames: a report names the function that called them.
LOCK_FUNCTIONS = frozenset({
    "_raw_spin_lock", "_raw_spin_unlock", "mutex_lock", "mutex_unlock",
    "percpu_down_read", "percpu_up_read", "percpu_down_write", "percpu_up_write",
})

#: Usage bits (``enum lock_usage_bit`` of the HARDIRQ state) as usage_str spells them.
IN_HARDIRQ_W, IN_HARDIRQ_R = "IN-HARDIRQ-W", "IN-HARDIRQ-R"
HARDIRQ_ON_W, HARDIRQ_ON_R = "HARDIRQ-ON-W", "HARDIRQ-ON-R"
#: ``mark_lock_irq``: each new bit and the bits that make it inconsistent
#: (``exclusive_bit``; a write use also conflicts with the other direction's read).
EXCLUSIVE = {
    IN_HARDIRQ_W: (HARDIRQ_ON_W, HARDIRQ_ON_R),
    IN_HARDIRQ_R: (HARDIRQ_ON_W,),
    HARDIRQ_ON_W: (IN_HARDIRQ_W, IN_HARDIRQ_R),
    HARDIRQ_ON_R: (IN_HARDIRQ_W,),
}


class LockdepReport(LockdepSplat):
    """A lockdep report: the title line as the message, the whole report as ``detail``."""

    def __init__(self, title: str, text: str, *, at: str, function: str) -> None:
        super().__init__(title, at=at, function=function)
        self.detail = text


IRQ_SAFE = (IN_HARDIRQ_W, IN_HARDIRQ_R)
IRQ_UNSAFE = (HARDIRQ_ON_W, HARDIRQ_ON_R)


@attrs.define(eq=False)
class HeldLock:
    """A ``struct held_lock``: one entry of a task's ``held_locks``."""

    lock: Any
    cls: str
    read: int
    """0 for an exclusive lock, 1 for a (non-recursive) reader."""
    irq_context: int
    """1 if taken in hardirq context: dependencies never cross contexts."""


@attrs.define(eq=False)
class Dependency:
    """An edge ``prev -> next`` of the graph (a ``struct lock_list`` entry)."""

    prev: str
    next: str
    trace: tuple[Frame, ...]
    """Where ``next`` was taken while ``prev`` was held, the first time."""
    task: str


@attrs.define(eq=False)
class LockClass:
    """A ``struct lock_class``: usage bits with where each was first seen, and its edges."""

    name: str
    usage: dict[str, tuple[Frame, ...]] = attrs.Factory(dict)
    after: dict[str, Dependency] = attrs.Factory(dict)
    """``locks_after``: the classes taken while this one was held."""
    before: dict[str, Dependency] = attrs.Factory(dict)
    """``locks_before``: the classes held when this one was taken."""


@attrs.define(eq=False)
class Lockdep:
    """lockdep's state for one machine (one boot)."""

    enabled: bool
    """``CONFIG_PROVE_LOCKING``."""
    debug_locks: bool = True
    """``debug_locks``: cleared by the first report (``debug_locks_off``)."""
    classes: dict[str, LockClass] = attrs.Factory(dict)
    held: dict[Any, list[HeldLock]] = attrs.Factory(dict)
    """Per task (``current->held_locks``)."""
    reports: list[str] = attrs.Factory(list)
    """Reports printed and let pass (known findings)."""

    def cls(self, name: str) -> LockClass:
        c = self.classes.get(name)
        if c is None:
            c = self.classes[name] = LockClass(name)
        return c


def state(m: Machine) -> Lockdep:
    """The machine's lockdep, created on first use (``CONFIG_PROVE_LOCKING`` decides if it checks)."""
    ld = m.state.get("lockdep")
    if ld is None:
        ld = m.attach("lockdep", Lockdep(enabled=m.config.enabled("CONFIG_PROVE_LOCKING")))
    return ld


def lock_class(lock: Any) -> str:
    """The lock's class: its ``key`` (split PTE locks share one), else its name."""
    return getattr(lock, "key", None) or lock.name


def debug_locks_on(m: Machine) -> bool:
    """``__lockdep_enabled`` as ``lockdep_assert_*`` test it: PROVE_LOCKING and not yet off."""
    ld = state(m)
    return ld.enabled and ld.debug_locks


def _in_nmi(cpu: Cpu) -> bool:
    return any(act.kind == "nmi" for act in cpu.stack)


def _tracking(cpu: Cpu) -> Lockdep | None:
    ld = state(cpu.m)
    if not ld.enabled or not ld.debug_locks or _in_nmi(cpu):
        return None
    return ld


def location(cpu: Cpu, what: str) -> str:
    """``kernel/locking/lockdep.c:LINE`` at the running version, or the bare file if unchecked."""
    for v in cpu.m.version.names:
        if v in LINES:
            return f"{LOCKDEP_C}:{LINES[v][what]}"
    return LOCKDEP_C


def frames_here() -> tuple[Frame, ...]:
    """The modelled call trace of the running routine chain, innermost first.

    A running generator's callers are reachable through ``f_back`` (the
    suspended activations below it are not: an interrupt's trace is its own). None is
    below a step entry point (``STEP_ENTRIES``): the walk ends there.
    """
    out: list[Frame] = []
    frames = FRAME_BY_ID  # frame_of_code, without a call per Python frame
    f = inspect.currentframe()
    while f is not None:
        key = id(f.f_code)
        fr = frames.get(key)
        if fr is not None:
            out.append(fr)
        elif key in STEP_ENTRIES:
            break
        f = f.f_back
    return tuple(out)


def _caller(frames: tuple[Frame, ...]) -> str:
    """The function that took the lock: the first frame that is not a locking primitive."""
    for f in frames:
        if f.function not in LOCK_FUNCTIONS:
            return f.function
    return frames[0].function if frames else "lock_acquire"


def _who(cpu: Cpu) -> str:
    return f"{cpu.current.comm}/{cpu.current.pid}"


# -- acquire and release -------------------------------------------------------------------


def lock_acquire(cpu: Cpu, lock: Any, read: int = 0) -> None:
    """``lock_acquire()`` -> ``__lock_acquire()``: usage marks, then ``validate_chain``.

    Called before the lock is actually taken (the kernel checks before it
    spins or sleeps), so a report never needs the deadlocking interleaving.
    """
    ld = _tracking(cpu)
    if ld is None:
        return
    name = lock_class(lock)
    hardirq = cpu.in_interrupt()
    new = HeldLock(lock, name, read, int(hardirq))
    if hardirq:
        _mark(cpu, ld, new, IN_HARDIRQ_R if read else IN_HARDIRQ_W)
    elif cpu.irqs_enabled:
        _mark(cpu, ld, new, HARDIRQ_ON_R if read else HARDIRQ_ON_W)
    held = ld.held.setdefault(cpu.current, [])
    _check_deadlock(cpu, ld, held, new)
    if held and held[-1].irq_context == new.irq_context:
        _check_prev_add(cpu, ld, held, held[-1], new)
    held.append(new)


def lock_release(cpu: Cpu, lock: Any) -> None:
    """``lock_release()``: drop the lock from the task's held locks (any position)."""
    ld = state(cpu.m)
    held = ld.held.get(cpu.current)
    if not held:
        return
    for i in range(len(held) - 1, -1, -1):
        if held[i].lock is lock:
            del held[i]
            return


def hardirqs_on_prepare(cpu: Cpu) -> None:
    """``lockdep_hardirqs_on_prepare()``: interrupts are about to be enabled.

    ``DEBUG_LOCKS_WARN_ON(lockdep_hardirq_context())`` when that happens in
    a hardirq handler; otherwise every held lock is marked {HARDIRQ-ON}
    (``mark_held_locks``), which may be inconsistent with an earlier
    {IN-HARDIRQ} use of its class.
    """
    ld = _tracking(cpu)
    if ld is None or cpu.irqs_enabled:
        return
    if cpu.in_interrupt():
        ld.debug_locks = False  # DEBUG_LOCKS_WARN_ON: debug_locks_off, WARN, return
        warn(cpu, location(cpu, "hardirq_context"), function="lockdep_hardirqs_on_prepare",
             detail="DEBUG_LOCKS_WARN_ON(lockdep_hardirq_context())")
        return
    for h in list(ld.held.get(cpu.current, ())):
        _mark(cpu, ld, h, HARDIRQ_ON_R if h.read else HARDIRQ_ON_W)


# -- the checks ------------------------------------------------------------------------------


def _mark(cpu: Cpu, ld: Lockdep, h: HeldLock, bit: str) -> None:
    """``mark_lock()`` -> ``mark_lock_irq()`` -> ``valid_state()``."""
    c = ld.cls(h.cls)
    if bit in c.usage:
        return
    for bad in EXCLUSIVE[bit]:
        if bad in c.usage:
            _usage_bug(cpu, ld, h, bad, bit)
    c.usage[bit] = frames_here()
    # The dependencies must not connect this usage with the opposite one elsewhere.
    forwards = bit in IRQ_SAFE
    found = _find_usage(ld, h.cls, IRQ_UNSAFE if forwards else IRQ_SAFE, forwards)
    if found is not None:
        _inversion_bug(cpu, ld, h, found, forwards)


def _check_deadlock(cpu: Cpu, ld: Lockdep, held: list[HeldLock], new: HeldLock) -> None:
    """``check_deadlock()``: the task already holds a lock of this class (no recursive readers)."""
    for prev in held:
        if prev.cls == new.cls:
            text = [
                "============================================",
                "WARNING: possible recursive locking detected",
                "--------------------------------------------",
                f"{_who(cpu)} is trying to acquire lock:",
                f" ({new.cls})",
                "",
                "but task is already holding lock:",
                f" ({prev.cls})",
                "",
                "other info that might help us debug this:",
                " Possible unsafe locking scenario:",
                "",
                "       CPU0",
                "       ----",
                f"  {_lock_word(prev)}({prev.cls});",
                f"  {_lock_word(new)}({new.cls});",
                "",
                " *** DEADLOCK ***",
                "",
                " May be due to missing lock nesting notation",
            ]
            _report(cpu, ld, "WARNING: possible recursive locking detected", text, "recursive")


def _check_prev_add(cpu: Cpu, ld: Lockdep, held: list[HeldLock], prev: HeldLock, new: HeldLock) -> None:
    """``check_prevs_add()`` -> ``check_prev_add()``: add ``prev -> new`` unless it closes a cycle.

    Only the most recent held lock of the same irq context gets the edge (the
    ones below it reach ``new`` through it); ``check_noncircular`` looks for a
    path ``new -> ... -> prev`` already in the graph.
    """
    pc = ld.cls(prev.cls)
    if new.cls in pc.after:
        return
    path = _path(ld, new.cls, prev.cls)
    if path is not None:
        _circular_bug(cpu, ld, held, prev, new, path)
    _check_irq_usage(cpu, ld, prev, new)
    dep = Dependency(prev.cls, new.cls, frames_here(), _who(cpu))
    pc.after[new.cls] = dep
    ld.cls(new.cls).before[prev.cls] = dep


def _find_usage(ld: Lockdep, start: str, bits: tuple[str, ...], forwards: bool) -> str | None:
    """``find_usage_forwards``/``_backwards``: the first class from ``start`` (itself
    included) along the dependencies that has one of ``bits``."""
    seen = {start}
    queue = [start]
    while queue:
        node = queue.pop(0)
        c = ld.cls(node)
        if any(b in c.usage for b in bits):
            return node
        for nxt in (c.after if forwards else c.before):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return None


def _check_irq_usage(cpu: Cpu, ld: Lockdep, prev: HeldLock, new: HeldLock) -> None:
    """``check_irq_usage()``: a hardirq-safe class at or before ``prev`` must not reach a
    hardirq-unsafe one at or after ``new`` through the new dependency."""
    safe = _find_usage(ld, prev.cls, IRQ_SAFE, forwards=False)
    if safe is None:
        return
    unsafe = _find_usage(ld, new.cls, IRQ_UNSAFE, forwards=True)
    if unsafe is None:
        return
    text = [
        "=====================================================",
        "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected",
        "-----------------------------------------------------",
        f"{_who(cpu)} [HC{int(cpu.in_interrupt())}[{cpu.irq_depth}]:SC0[0]:HE{int(cpu.irqs_enabled)}:SE1]"
        " is trying to acquire:",
        f" ({new.cls})",
        "",
        "and this task is already holding:",
        f" ({prev.cls})",
        "which would create a new lock dependency:",
        f" ({prev.cls}) -> ({new.cls})",
        "",
        "but this new dependency connects a HARDIRQ-irq-safe lock:",
        f" ({safe})",
        "",
        "... which became HARDIRQ-irq-safe at:",
        *_trace_lines(_usage_trace(ld, safe, IRQ_SAFE)),
        "",
        "to a HARDIRQ-irq-unsafe lock:",
        f" ({unsafe})",
        "",
        "... which became HARDIRQ-irq-unsafe at:",
        *_trace_lines(_usage_trace(ld, unsafe, IRQ_UNSAFE)),
    ]
    _report(cpu, ld, "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", text, "irq_usage")


def _usage_trace(ld: Lockdep, cls: str, bits: tuple[str, ...]) -> tuple[Frame, ...]:
    usage = ld.cls(cls).usage
    return next((usage[b] for b in bits if b in usage), ())


def _path(ld: Lockdep, start: str, goal: str) -> list[Dependency] | None:
    """Breadth-first search (``__bfs``) for a dependency path ``start -> ... -> goal``."""
    parent: dict[str, Dependency | None] = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        if node == goal:
            out: list[Dependency] = []
            dep = parent[node]
            while dep is not None:
                out.append(dep)
                dep = parent[dep.prev]
            out.reverse()
            return out
        for nxt, dep in ld.cls(node).after.items():
            if nxt not in parent:
                parent[nxt] = dep
                queue.append(nxt)
    return None


# -- reports ---------------------------------------------------------------------------------


def _lock_word(h: HeldLock) -> str:
    return "rlock" if h.read else "lock"


def _trace_lines(frames: tuple[Frame, ...]) -> list[str]:
    return [f"       {f.function} ({f.file})" for f in frames] or ["       (no modelled frame)"]


def _held_lines(cpu: Cpu, held: list[HeldLock]) -> list[str]:
    out = [f"{len(held)} lock{'s' if len(held) != 1 else ''} held by {_who(cpu)}:"]
    out += [f" #{i}: ({h.cls})" for i, h in enumerate(held)]
    return out


def _circular_bug(cpu: Cpu, ld: Lockdep, held: list[HeldLock], prev: HeldLock, new: HeldLock,
                  path: list[Dependency]) -> None:
    """``print_circular_bug()``: the header, the existing chain in reverse, the scenario."""
    text = [
        "======================================================",
        "WARNING: possible circular locking dependency detected",
        "------------------------------------------------------",
        f"{_who(cpu)} is trying to acquire lock:",
        f" ({new.cls})",
        "",
        "but task is already holding lock:",
        f" ({prev.cls})",
        "",
        "which lock already depends on the new lock.",
        "",
        "",
        "the existing dependency chain (in reverse order) is:",
    ]
    depth = len(path)
    for dep in reversed(path):
        text += ["", f"-> #{depth} ({dep.next}):", *_trace_lines(dep.trace)]
        depth -= 1
    text += ["", f"-> #0 ({new.cls}):", *_trace_lines(frames_here())]
    # print_circular_lock_scenario: the class before the held one on the path.
    parent = path[-1].prev
    text += ["", "other info that might help us debug this:", ""]
    if parent != new.cls:
        text += ["Chain exists of:", f"  {new.cls} --> {parent} --> {prev.cls}", ""]
    text += [
        " Possible unsafe locking scenario:",
        "",
        "       CPU0                    CPU1",
        "       ----                    ----",
        f"  lock({prev.cls});",
        f"                               lock({parent});",
        f"                               lock({prev.cls});",
        f"  {_lock_word(new)}({new.cls});",
        "",
        " *** DEADLOCK ***",
        "",
        *_held_lines(cpu, held),
    ]
    _report(cpu, ld, "WARNING: possible circular locking dependency detected", text, "circular")


def _usage_bug(cpu: Cpu, ld: Lockdep, h: HeldLock, prev_bit: str, new_bit: str) -> None:
    """``print_usage_bug()``: "inconsistent {prev} -> {new} usage" and where prev was registered."""
    hc = int(cpu.in_interrupt())
    text = [
        "================================",
        "WARNING: inconsistent lock state",
        "--------------------------------",
        f"inconsistent {{{prev_bit}}} -> {{{new_bit}}} usage.",
        f"{_who(cpu)} [HC{hc}[{cpu.irq_depth}]:SC0[0]:HE{int(cpu.irqs_enabled)}:SE1] takes:",
        f" ({h.cls})",
        f"{{{prev_bit}}} state was registered at:",
        *_trace_lines(ld.cls(h.cls).usage[prev_bit]),
        "",
        "other info that might help us debug this:",
        " Possible unsafe locking scenario:",
        "",
        "       CPU0",
        "       ----",
        f"  lock({h.cls});",
        "  <Interrupt>",
        f"    lock({h.cls});",
        "",
        " *** DEADLOCK ***",
        "",
        *_held_lines(cpu, ld.held.get(cpu.current, [])),
    ]
    _report(cpu, ld, "WARNING: inconsistent lock state", text, "usage")


def _inversion_bug(cpu: Cpu, ld: Lockdep, h: HeldLock, other: str, forwards: bool) -> None:
    """``print_irq_inversion_bug()``: a usage change that dependencies make inconsistent."""
    text = [
        "========================================================",
        "WARNING: possible irq lock inversion dependency detected",
        "--------------------------------------------------------",
        f"{_who(cpu)} just changed the state of lock:",
        f" ({h.cls})",
        ("but this lock took another, HARDIRQ-unsafe lock in the past:" if forwards
         else "but this lock was taken by another, HARDIRQ-safe lock in the past:"),
        f" ({other})",
        "",
        "",
        "and interrupts could create inverse lock ordering between them.",
        "",
    ]
    what = "inversion_forwards" if forwards else "inversion_backwards"
    _report(cpu, ld, "WARNING: possible irq lock inversion dependency detected", text, what)


def _report(cpu: Cpu, ld: Lockdep, title: str, text: list[str], what: str) -> None:
    """Print a report: ``debug_locks_off()``, then end the example (see :func:`_known`)."""
    ld.debug_locks = False
    frames = frames_here()
    failure = LockdepReport(title, "\n".join(text), at=location(cpu, what), function=_caller(frames))
    if _known(cpu.m, failure):
        ld.reports.append(failure.detail)
        cpu.m.log.append(f"{title} (let pass, lockdep now off)")
        return
    raise failure


def _known(m: Machine, failure: LockdepReport) -> bool:
    """Whether the example goes on past this report (the kernel only prints it): never in a
    campaign. A lockdep report a released kernel really prints is declared like any other
    known finding, through the ``fuzzer_known_findings`` hook: the example ends at it and
    the campaign counts it and searches on. Tests let a report pass here to watch
    ``debug_locks_off``."""
    return False


def held_by(m: Machine, task: Task) -> list[str]:
    """The classes ``task`` holds, oldest first (for tests and reports)."""
    return [h.cls for h in state(m).held.get(task, [])]
