"""Locking primitives with lockdep- and might_sleep-style checks.

Not replaceable routines: every model uses them as they are. Taking a lock is
an interleaving point; a CPU that finds it held yields ``lock.busy`` and is
not runnable until the lock is free.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from fuzzer._errors import LockdepSplat
from fuzzer._mm import Lock, SpinLock
from fuzzer._routines import routine
from fuzzer.kernel.bug import warn
from fuzzer.kernel.lockdep import debug_locks_on, lock_acquire, lock_release, state

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Task

Gen = Generator[Any, None, Any]


@routine("_raw_spin_lock", "kernel/locking/spinlock.c")
def spin_lock(cpu: Cpu, lock: SpinLock) -> Gen:
    """``spin_lock()``: spins with preemption off until the lock is free.

    ``spin_acquire`` (lockdep) first, then DEBUG_SPINLOCK's recursion check
    (``spin_bug``, silent once ``debug_locks`` is off, as after a lockdep report).
    """
    lock_acquire(cpu, lock)
    if lock.owner is cpu and state(cpu.m).debug_locks:
        raise LockdepSplat(
            f"BUG: spinlock recursion on CPU#{cpu.n}, {cpu.current.comm}/{cpu.current.pid}"
            f" lock: {lock.name}",
            at="kernel/locking/spinlock_debug.c:83",
        )
    cpu.preempt_count += 1
    yield  # the atomic attempt is an interleaving point
    while lock.owner is not None:
        yield lock.busy
    lock.owner = cpu


@routine("_raw_spin_unlock", "kernel/locking/spinlock.c")
def spin_unlock(cpu: Cpu, lock: SpinLock) -> Gen:
    """``spin_unlock()``: DEBUG_SPINLOCK's ``spin_bug`` when it is not held by this CPU."""
    lock_release(cpu, lock)
    if state(cpu.m).debug_locks:
        _spin_bug(cpu, lock)
    lock.owner = None
    cpu.preempt_count -= 1
    yield


def _spin_bug(cpu: Cpu, lock: SpinLock) -> None:
    """``debug_spin_unlock()`` (kernel/locking/spinlock_debug.c): the unlock checks."""
    if lock.owner is None:
        raise LockdepSplat(
            f"BUG: spinlock already unlocked on CPU#{cpu.n}, lock: {lock.name}",
            at="kernel/locking/spinlock_debug.c:95",
        )
    if lock.owner is not cpu:
        raise LockdepSplat(
            f"BUG: spinlock wrong CPU on CPU#{cpu.n}, lock: {lock.name}"
            f" held by CPU#{lock.owner.n}",
            at="kernel/locking/spinlock_debug.c:97",
        )


def might_sleep(cpu: Cpu, at: str) -> None:
    """``might_sleep()`` under CONFIG_DEBUG_ATOMIC_SLEEP: no sleeping in atomic context.

    Like ``__might_resched`` it stays quiet while ``system_state`` is
    SYSTEM_BOOTING (start_kernel runs with interrupts off and may allocate).
    """
    if cpu.m.system_state == "SYSTEM_BOOTING":
        return
    if not cpu.irqs_enabled or cpu.preempt_count or cpu.in_interrupt():
        raise LockdepSplat(
            f"BUG: sleeping function called from invalid context at {at}"
            f" (in_atomic(): {int(cpu.preempt_count > 0)}, irqs_disabled():"
            f" {int(not cpu.irqs_enabled)}, pid: {cpu.current.pid}, name: {cpu.current.comm})",
            at=at,
        )


def lockdep_assert_irqs_disabled(cpu: Cpu, at: str) -> None:
    """``lockdep_assert_irqs_disabled()``: a WARN when interrupts are on.

    Defined only with CONFIG_PROVE_LOCKING, and quiet once lockdep is off
    (``__lockdep_enabled``), as in include/linux/lockdep.h: a ``WARN_ON_ONCE``, after
    which the caller goes on.
    """
    if cpu.irqs_enabled and debug_locks_on(cpu.m):
        warn(cpu, at, detail="lockdep_assert_irqs_disabled: IRQs are enabled")


class Mutex(Lock):
    """A sleeping lock owned by a task (``struct mutex``)."""

    __slots__ = ("name", "owner")

    def __init__(self, name: str) -> None:
        self.name = name
        self.owner: Task | None = None

    def busy(self) -> bool:
        return self.owner is not None

    def __repr__(self) -> str:
        who = f"{self.owner.comm}/{self.owner.pid}" if self.owner else "unlocked"
        return f"<mutex {self.name}: {who}>"


@routine("mutex_lock", "kernel/locking/mutex.c")
def mutex_lock(cpu: Cpu, lock: Mutex) -> Gen:
    """``mutex_lock()``: may sleep (``might_sleep``, mutex.c:580), then ``mutex_acquire``.

    Taking a mutex the task already holds is lockdep's "possible recursive
    locking detected"; without PROVE_LOCKING the task just blocks for ever
    (the model's deadlock detection reports it).
    """
    might_sleep(cpu, "kernel/locking/mutex.c:580")
    me = cpu.current
    lock_acquire(cpu, lock)
    yield
    while lock.owner is not None:
        yield lock.busy
    lock.owner = me


@routine("mutex_unlock", "kernel/locking/mutex.c")
def mutex_unlock(cpu: Cpu, lock: Mutex) -> Gen:
    """``mutex_unlock()``: DEBUG_MUTEXES warns when the owner is not current.

    With DEBUG_LOCK_ALLOC every unlock takes ``__mutex_unlock_slowpath``, whose
    ``MUTEX_WARN_ON(__owner_task(owner) != current)`` (kernel/locking/mutex.c:918 v6.1,
    :930 v6.12; v6.2's line taken from v6.1's, not checked) is ``DEBUG_LOCKS_WARN_ON``
    under DEBUG_MUTEXES: ``debug_locks_off()`` first, so it prints once, then the unlock
    goes on.
    """
    lock_release(cpu, lock)
    if lock.owner is not cpu.current and state(cpu.m).debug_locks:
        state(cpu.m).debug_locks = False
        n = 930 if cpu.m.version.is_("v6.12") else 918
        warn(cpu, f"kernel/locking/mutex.c:{n}", function="__mutex_unlock_slowpath",
             detail=f"mutex {lock.name} released by a task that does not own it")
    lock.owner = None
    yield


class RwSem(Lock):
    """A reader-writer semaphore such as ``cpu_hotplug_lock`` (percpu_rw_semaphore)."""

    __slots__ = ("gp_count", "name", "readers", "writer")

    def __init__(self, name: str) -> None:
        self.name = name
        self.readers = 0
        """The sum of the per-CPU ``read_count``s: negative after an unbalanced up_read."""
        self.writer: Task | None = None
        self.gp_count = 0
        """``sem->rss.gp_count``: writers between ``rcu_sync_enter`` (the start of
        ``percpu_down_write``) and ``rcu_sync_exit`` (the end of ``percpu_up_write``)."""

    def write_busy(self) -> bool:
        # readers_active_check: per_cpu_sum(*sem->read_count) != 0 keeps the writer waiting
        return self.writer is not None or self.readers != 0

    def read_busy(self) -> bool:
        return self.writer is not None

    def __repr__(self) -> str:
        return f"<rwsem {self.name}: {self.readers} readers, writer {self.writer}>"


@routine("percpu_down_read", "kernel/locking/percpu-rwsem.c", inlined=True)
def down_read(cpu: Cpu, sem: RwSem) -> Gen:
    """``cpus_read_lock()`` and friends."""
    might_sleep(cpu, "include/linux/percpu-rwsem.h:49")
    lock_acquire(cpu, sem, read=1)
    yield
    while sem.writer is not None:
        yield sem.read_busy
    sem.readers += 1


@routine("percpu_up_read", "kernel/locking/percpu-rwsem.c", inlined=True)
def up_read(cpu: Cpu, sem: RwSem) -> Gen:
    """``percpu_up_read()`` (include/linux/percpu-rwsem.h:97-121 v6.1 and v6.12):
    ``rwsem_release``, then ``this_cpu_dec(*sem->read_count)``. No check of its own (only
    lockdep's "bad unlock balance", which the model's lockdep does not check): an unbalanced
    one leaves the sum negative, and a writer waits for it to come back to zero."""
    lock_release(cpu, sem)
    sem.readers -= 1
    yield


@routine("percpu_down_write", "kernel/locking/percpu-rwsem.c")
def down_write(cpu: Cpu, sem: RwSem) -> Gen:
    """``cpus_write_lock()``."""
    might_sleep(cpu, "kernel/locking/percpu-rwsem.c:222")
    lock_acquire(cpu, sem)
    sem.gp_count += 1  # rcu_sync_enter
    yield
    while sem.writer is not None or sem.readers != 0:
        yield sem.write_busy
    sem.writer = cpu.current


@routine("percpu_up_write", "kernel/locking/percpu-rwsem.c")
def up_write(cpu: Cpu, sem: RwSem) -> Gen:
    """``percpu_up_write()`` (kernel/locking/percpu-rwsem.c:254 v6.1, :259 v6.12):
    ``rwsem_release`` (lockdep's "bad unlock balance" is not checked: the model's hotplug
    releases the lock from the control CPU's task), ``block`` to 0 -- no owner check:
    whoever calls it lets readers in -- and
    ``rcu_sync_exit`` (kernel/rcu/sync.c:168 v6.1, :152 v6.12), whose ``WARN_ON_ONCE``s
    (``gp_state == GP_IDLE``, :170 v6.1 / :154 v6.12; ``gp_count == 0``, :171 / :157) fire
    for an unbalanced one when no writer is inside or waiting; the
    model takes ``gp_count == 0`` for ``GP_IDLE`` (the grace period after the last writer's
    exit is not modelled). Then ``--gp_count`` and on."""
    lock_release(cpu, sem)
    if sem.gp_count == 0:
        idle, count = (154, 157) if cpu.m.version.is_("v6.12") else (170, 171)
        warn(cpu, f"kernel/rcu/sync.c:{idle}", function="rcu_sync_exit",
             detail=f"{sem.name}: WARN_ON_ONCE(READ_ONCE(rsp->gp_state) == GP_IDLE)")
        warn(cpu, f"kernel/rcu/sync.c:{count}", function="rcu_sync_exit",
             detail=f"{sem.name}: WARN_ON_ONCE(rsp->gp_count == 0)")
    sem.gp_count -= 1
    sem.writer = None
    yield
