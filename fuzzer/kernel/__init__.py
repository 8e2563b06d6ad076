"""The modelled kernel core, shared by every MMU: a public package for plugin authors.

Its modules are also the essential plugins of every run (``boot``, ``cpuhp``,
``mm``, ``patching``: they cannot be blocked with ``-p no:``). A plugin that
models more kernel code, or injects a suspected bug into a routine, builds
on the names exported here:

* the locking primitives (spinlocks, mutexes, rwsems with lockdep- and
  might_sleep-style checks): :func:`spin_lock`, :func:`mutex_lock`,
  :func:`down_read` and their unlocks, :class:`Mutex`, :class:`RwSem`,
  :func:`might_sleep`, :func:`lockdep_assert_irqs_disabled`;
* RCU (:mod:`fuzzer.kernel.rcu`, one model for every user): readers
  (:func:`in_rcu_reader`, :func:`rcu_read_lock`, :func:`tasks_rcu_enter`),
  grace periods (:func:`synchronize_rcu`, :func:`synchronize_rcu_tasks`) and
  :func:`call_rcu`;
* lockdep (:mod:`fuzzer.kernel.lockdep`): the lock-class dependency graph and
  hardirq usage the locking primitives feed (a plugin's own lock is a
  :class:`Mutex`/``SpinLock``: its name is its class);
* fault injection (:mod:`fuzzer.kernel.faults`): a routine that allocates
  asks ``should_fail(cpu, site)`` and takes its error path; a WARN the
  kernel prints there goes through ``warn_on_alloc_failure``;
* the generic mm code: :func:`pte_alloc`, :class:`VmArea`;
* ``WARN_ON`` after which the kernel goes on: :func:`warn` (it ends the example or
  returns, as ``--panic-on-warn`` says; raise :class:`fuzzer.KernelWarning` where the
  modelled code cannot go on);
* cross-CPU calls: :func:`on_each_cpu` (kernel/smp.c, IPIs and their waits);
* code patching: the per-CPU :class:`PatchingContext` (:func:`context`),
  :func:`get_patch_pfn`, :func:`random_patching_addr`, :func:`mm_patch_enabled`,
  :func:`instr_words`, the version tuples (``V61``, ``NEXT``, ``V62``,
  ``V612``, ``V612_FIXED``, ``TEMP_MM``, ``SINCE_TEMP_MM``), the cited files (``CP``,
  ``PROCESS_C``) and :func:`line` (a cited line at the running version);
* bad pointers: :func:`deref` follows a kernel pointer and oopses on NULL or
  a freed object as the kernel would (:class:`fuzzer.KernelOops`);
  :func:`kernel_struct` registers a class as a kernel struct, so a routine
  reading its members through ``None`` is a NULL-pointer oops too;
* preemption control: :func:`preempt_disable`, :func:`get_cpu`,
  :func:`migrate_disable` and their counterparts, :func:`smp_processor_id`,
  :func:`preemptible` (with ``CONFIG_PREEMPT`` the search may migrate a
  preemptible task to another CPU: see :mod:`fuzzer.kernel.sched`);
* :func:`dawr_slots`, the powerpc MMU specs' ``breakpoint_slots``;
* :data:`Gen`, the type of a modelled routine (a generator function declared
  with :func:`fuzzer.routine`; every ``yield`` is a point where hardware could
  interleave).

Kernel state lives on the machine and its CPUs: ``machine.state[name]`` for
globals (``text_mutex``, ``cpu_hotplug_lock``), ``cpu.state[name]`` for per-CPU
variables (``cpu_patching_context``); a plugin attaches its own with
``machine.attach(name, obj)`` and ``cpu.attach(name, obj)``.
"""

from fuzzer._oops import POISON_POINTER, deref, kernel_struct
from fuzzer.kernel.boot import dawr_slots
from fuzzer.kernel.bug import warn
from fuzzer.kernel.locking import (
    Mutex,
    RwSem,
    down_read,
    down_write,
    lockdep_assert_irqs_disabled,
    might_sleep,
    mutex_lock,
    mutex_unlock,
    spin_lock,
    spin_unlock,
    up_read,
    up_write,
)
from fuzzer.kernel.mm import VmArea, pte_alloc
from fuzzer.kernel.patching import (
    CP,
    EINVAL,
    ENOMEM,
    EPERM,
    NEXT,
    PROCESS_C,
    SINCE_TEMP_MM,
    TEMP_MM,
    V61,
    V62,
    V612,
    V612_FIXED,
    Gen,
    PatchingContext,
    context,
    default_map_window,
    get_patch_pfn,
    instr_words,
    is_prefixed,
    line,
    mm_patch_enabled,
    random_patching_addr,
)
from fuzzer.kernel.rcu import (
    call_rcu,
    in_rcu_reader,
    rcu_read_lock,
    rcu_read_unlock,
    synchronize_rcu,
    synchronize_rcu_tasks,
    tasks_rcu_enter,
    tasks_rcu_exit,
)
from fuzzer.kernel.sched import (
    get_cpu,
    migrate_disable,
    migrate_enable,
    preempt_disable,
    preempt_enable,
    preemptible,
    put_cpu,
    smp_processor_id,
)
from fuzzer.kernel.smp import on_each_cpu

__all__ = [
    "CP",
    "EINVAL",
    "ENOMEM",
    "EPERM",
    "NEXT",
    "POISON_POINTER",
    "PROCESS_C",
    "SINCE_TEMP_MM",
    "TEMP_MM",
    "V61",
    "V62",
    "V612",
    "V612_FIXED",
    "Gen",
    "Mutex",
    "PatchingContext",
    "RwSem",
    "VmArea",
    "call_rcu",
    "context",
    "dawr_slots",
    "default_map_window",
    "deref",
    "down_read",
    "down_write",
    "get_cpu",
    "get_patch_pfn",
    "in_rcu_reader",
    "instr_words",
    "is_prefixed",
    "kernel_struct",
    "line",
    "lockdep_assert_irqs_disabled",
    "might_sleep",
    "migrate_disable",
    "migrate_enable",
    "mm_patch_enabled",
    "mutex_lock",
    "mutex_unlock",
    "on_each_cpu",
    "preempt_disable",
    "preempt_enable",
    "preemptible",
    "pte_alloc",
    "put_cpu",
    "random_patching_addr",
    "rcu_read_lock",
    "rcu_read_unlock",
    "smp_processor_id",
    "spin_lock",
    "spin_unlock",
    "synchronize_rcu",
    "synchronize_rcu_tasks",
    "tasks_rcu_enter",
    "tasks_rcu_exit",
    "up_read",
    "up_write",
    "warn",
]
