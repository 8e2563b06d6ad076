"""CPU hotplug (kernel/cpu.c): dynamic AP online states, bring-up and teardown."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._config import RunConfig
from fuzzer._errors import ModelLimitation
from fuzzer._machine import CpuhpState
from fuzzer._plugins import hookimpl
from fuzzer._routines import routine
from fuzzer._specs import Invariant
from fuzzer.kernel.bug import warn
from fuzzer.kernel.locking import down_read, down_write, up_read, up_write
from fuzzer.kernel.mm import INIT_MM_CPUMASK
from fuzzer.kernel.patching.common import V612, V612_FIXED
from fuzzer.kernel.stop_machine import multi_cpu_stop

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine

Gen = Generator[Any, None, Any]
Callback = Callable[..., Generator[Any, None, int]]

#: First dynamic AP online state number (CPUHP_AP_ONLINE_DYN); the value is only shown.
CPUHP_AP_ONLINE_DYN = 169


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [cpuhp_setup_state, cpuhp_bringup_ap, start_secondary, cpuhp_teardown_ap, multi_cpu_stop,
            take_cpu_down, take_cpu_down_fixed,
            cpu_disable, cleanup_cpu_mmu_context, do_idle, arch_cpu_idle_dead, pnv_cpu_offline_self,
            idle_task_exit, idle_task_prepare_exit, idle_task_exit_fixed, cpu_die]


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [Invariant("cpu 0 online", _boot_cpu_online, when="end")]


def _boot_cpu_online(m: Machine) -> str | None:
    return None if m.cpus[0].online else "the boot CPU went offline"


@routine("__cpuhp_setup_state", "kernel/cpu.c")
def cpuhp_setup_state(cpu: Cpu, name: str, startup: Callback | None, teardown: Callback | None) -> Gen:
    """``cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, ...)`` (kernel/cpu.c, v6.1-v6.12).

    Under ``cpus_read_lock`` allocate a dynamic state and run ``startup`` for
    every CPU already online. A DYN state returns its (positive) state number;
    if a startup fails, the CPUs already set up are torn down again and the
    error (negative) is returned. Callbacks run in the target CPU's hotplug
    thread; before the smpboot threads exist (poking_init, at boot) they run
    directly on the calling CPU. The model supports the boot case only: one
    CPU online, the caller.
    """
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    online = [c for c in m.cpus if c.online]
    if online != [cpu]:
        raise ModelLimitation(
            "cpuhp_setup_state with other CPUs online (callbacks on other CPUs) is not modelled"
        )
    state = CpuhpState(name, startup, teardown)
    ret = 0
    done: list[Cpu] = []
    for target in online:
        if startup is not None:
            ret = yield from startup(target)
            if ret < 0:
                break
        done.append(target)
    if ret < 0:
        for target in reversed(done):
            if teardown is not None:
                yield from teardown(target)
    else:
        m.cpuhp_states.append(state)
        ret = CPUHP_AP_ONLINE_DYN + len(m.cpuhp_states) - 1
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    return ret


@routine("cpuhp_bringup_ap", "kernel/cpu.c", symbol="cpuhp_thread_fun")
def cpuhp_bringup_ap(cpu: Cpu) -> Gen:
    """Bring ``cpu`` online (kernel/cpu.c ``_cpu_up`` and the AP's ``cpuhp_thread_fun``).

    The control side holds ``cpus_write_lock`` for the whole bring-up. The CPU
    is marked online (start_secondary) before the AP_ONLINE_DYN states run, in
    its hotplug thread with interrupts on. A failing startup rolls the states
    already run back and leaves the CPU offline.
    """
    m = cpu.m
    lock = m.state["cpu_hotplug_lock"]
    # The model runs the control side's cpus_write_lock in the AP's own
    # activation; the hotplug thread it stands for runs with IRQs on.
    cpu.irqs_enabled = True
    yield from down_write(cpu, lock)
    cpu.online = True
    # start_secondary runs on the AP's idle task, interrupts off (IRQMASK 3 in the real log).
    act = cpu.stack[-1]
    thread, act.task, cpu.irqs_enabled = act.task, cpu.idle_task, False
    try:
        yield from cpu.k.start_secondary(cpu)
    finally:
        act.task, cpu.irqs_enabled = thread, True
    yield
    ran: list[CpuhpState] = []
    ret = 0
    for state in list(m.cpuhp_states):
        if state.startup is not None:
            ret = yield from state.startup(cpu)
            if ret < 0:
                break
        ran.append(state)
    if ret < 0:
        for state in reversed(ran):
            if state.teardown is not None:
                yield from state.teardown(cpu)
        # cpuhp_up_callbacks (kernel/cpu.c:1015-1030, v6.12) rolls a failed bring-up back
        # to CPUHP_OFFLINE through takedown_cpu, as an offline does: __cpu_die clears the
        # CPU from init_mm's cpumask, so the next start_secondary finds it clear. The model
        # runs that rollback here, with the AP's death first: takedown_cpu's stop_machine
        # (every online CPU in its stopper, so none is mid-IPI to this one) and, of
        # take_cpu_down, set_cpu_online(false) and smpcfd_dying_cpu's flush.
        yield from cpu.k.multi_cpu_stop(cpu, _rollback_take_cpu_down)
        _takedown(cpu).dead = True
        yield from cpu.k.__cpu_die(cpu, cpu)
        _dead(cpu)
    yield from up_write(cpu, lock)
    return ret


def _rollback_take_cpu_down(cpu: Cpu) -> Gen:
    """What the model runs of ``take_cpu_down`` when a failed bring-up rolls back (see
    :func:`cpuhp_bringup_ap`): interrupts off, out of ``cpu_online_mask`` (as
    ``__cpu_disable`` does), then ``smpcfd_dying_cpu``."""
    cpu.irqs_enabled = False
    cpu.online = False
    yield from cpu.k.smpcfd_dying_cpu(cpu)


@routine("start_secondary", "arch/powerpc/kernel/smp.c")
def start_secondary(cpu: Cpu) -> Gen:
    """``start_secondary()`` (arch/powerpc/kernel/smp.c:1624, v6.12), on the AP's idle task
    (swapper/N, PID 0): the idle task takes init_mm as its active mm; from 6.12's init_mm
    accounting on, ``VM_WARN_ON`` that init_mm's cpumask does not have the CPU yet (:1634:
    not ``_ONCE``, every online that finds it set warns; the kernel goes on), then set it
    (:1635). The model runs it in the bring-up's activation, without an interleaving point
    of its own (the control side waits for the AP to come up). On other architectures
    only the idle task's and the CPU's mm are set."""
    yield from ()
    m = cpu.m
    cpu.idle_task.active_mm = m.init_mm
    if m.run.arch == "powerpc" and m.version.is_(*V612):
        if cpu.n in m.init_mm.cpumask and m.config.enabled("CONFIG_DEBUG_VM"):
            warn(cpu, "arch/powerpc/kernel/smp.c:1634", function="start_secondary", once=False,
                 detail=f"CPU {cpu.n} is already in init_mm's mm_cpumask")
        m.init_mm.cpumask.add(cpu.n)
    cpu.loaded_mm = m.init_mm
    m.mmu.switch_context(cpu, m.init_mm)


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    # setup_arch (arch/powerpc/kernel/setup-common.c:986, v6.12): the boot CPU in
    # init_mm's cpumask before anything runs. Older kernels set it lazily, at the
    # first switch_mm_irqs_off to init_mm.
    if machine.run.arch == "powerpc" and machine.version.is_(*V612):
        machine.init_mm.cpumask.add(0)


@routine("cpuhp_teardown_ap", "kernel/cpu.c", symbol="cpuhp_thread_fun")
def cpuhp_teardown_ap(cpu: Cpu) -> Gen:
    """Take ``cpu`` offline (kernel/cpu.c ``_cpu_down`` -> ``takedown_cpu``, :1295 v6.12).

    AP_ONLINE_DYN teardowns run on the outgoing CPU in its hotplug thread, a
    kernel thread that borrows the mm the CPU had loaded (lazy TLB), under
    ``cpus_write_lock``. Then ``stop_machine`` (``multi_cpu_stop`` on every online
    CPU, :mod:`fuzzer.kernel.stop_machine`) runs ``take_cpu_down`` there, and
    the CPU's idle task dies (``do_idle`` -> ``arch_cpu_idle_dead``): on
    powerpc the activation hands the CPU to its idle task for that; the lock
    is released when the CPU is dead, as the control side does after
    ``__cpu_die``.
    """
    m = cpu.m
    lock = m.state["cpu_hotplug_lock"]
    cpu.current.active_mm = cpu.loaded_mm  # context_switch: a kthread borrows the mm
    _takedown(cpu).reset()
    _woken_by_ipi(cpu)
    yield from down_write(cpu, lock)
    for state in reversed(m.cpuhp_states):
        if state.teardown is not None:
            yield from state.teardown(cpu)
    if m.run.arch != "powerpc":
        _dead(cpu)
        yield from up_write(cpu, lock)
        return
    yield from cpu.k.multi_cpu_stop(cpu, cpu.k.take_cpu_down)
    _become_idle(cpu, _idle_dies(cpu))
    yield  # the idle task runs from here


def _woken_by_ipi(cpu: Cpu) -> None:
    """The control CPU wakes this CPU's hotplug thread (``cpuhp_kick_ap``) and its stopper
    (``stop_machine_cpuslocked``) with an IPI: the interrupt is context synchronising."""
    cpu.m.mmu.isync(cpu)


def _become_idle(cpu: Cpu, gen: Gen) -> None:
    """The hotplug thread's work is done and the CPU switches to its idle task: the
    activation continues as the idle task running ``gen`` (the thread never runs again
    on this CPU; its frames would only clutter the idle task's call trace)."""
    act = cpu.stack[-1]
    idle = cpu.idle_task
    idle.active_mm = act.task.active_mm  # kernel thread -> kernel thread: lazy mm passed on
    act.task, act.gen, act.label = idle, gen, "do_idle"


@attrs.define(eq=False)
class Takedown:
    """One CPU's offline as the two sides see it: the AP's ``per_cpu(cpu_state)`` and the
    control side's progress in ``takedown_cpu``."""

    dead: bool = False
    """``generic_set_cpu_dead()`` ran (pnv_cpu_offline_self, after ``idle_task_exit``):
    what the control side's ``generic_cpu_die`` polls."""
    control: str = ""
    """Where the control side runs: "" not released yet, "cpu" on another CPU,
    "inline" in this CPU's activation, after it is dead."""
    done: bool = False
    """The control side finished: ``__cpu_die``, ``finish_cpu``, ``cpus_write_unlock``."""

    def reset(self) -> None:
        self.dead, self.control, self.done = False, "", False

    def alive(self) -> bool:
        """What ``generic_cpu_die`` polls: the AP has not set itself dead yet."""
        return not self.dead

    def control_running(self) -> bool:
        """What the dead AP waits on: the control side still running elsewhere."""
        return not self.done


def _takedown(cpu: Cpu) -> Takedown:
    td = cpu.state.get("cpuhp_takedown")
    return td if td is not None else cpu.attach("cpuhp_takedown", Takedown())


def _idle_dies(cpu: Cpu) -> Gen:
    """The idle task of a CPU going offline: ``do_idle`` -> ``arch_cpu_idle_dead``, the CPU
    dead at the end of ``pnv_cpu_offline_self``'s ``idle_task_exit``.

    The control side (the rest of ``takedown_cpu``) was released by
    ``cpuhp_report_idle_dead`` in ``do_idle`` and runs on another CPU
    concurrently (:func:`_control_side`); the dead CPU then sits in
    ``pnv_cpu_offline_self``'s stop loop, which the model ends when the control
    side is done, so the next hotplug operation finds the machine as the kernel
    leaves it. When no other online CPU was free to run the control side, it
    runs here, after the death (one order the kernel can take).
    """
    td = _takedown(cpu)
    yield from cpu.k.do_idle(cpu)
    _dead(cpu)
    if td.control == "inline":
        yield from _control_side(cpu, cpu)
    else:
        while td.control_running():
            yield td.control_running


def _report_idle_dead(cpu: Cpu) -> None:
    """``cpuhp_report_idle_dead()`` (kernel/cpu.c:1360, v6.12; the same in v6.1): the AP is
    CPUHP_AP_IDLE_DEAD and ``smp_call_function_single`` to the first online CPU completes
    the control side's ``wait_for_ap_thread`` in ``takedown_cpu`` (:1329), whose thread
    then runs on.

    The model has no run queues: the control thread (the task that asked for the
    offline) runs as its own activation on the first online CPU with nothing to
    run, so the search interleaves its ``__cpu_die`` with this CPU's
    ``arch_cpu_idle_dead`` like any two CPUs; with none free, it runs in this
    CPU's activation once the CPU is dead.
    """
    m = cpu.m
    td = _takedown(cpu)
    ctl = next((c for c in m.cpus if c.online and not c.stack and c is not cpu), None)
    if ctl is None:
        td.control = "inline"
        return
    td.control = "cpu"

    def done(_: Any) -> None:
        td.done = True

    m.push(ctl, _control_side(ctl, cpu), m.new_task("cpu_down"), label="takedown_cpu",
           on_done=done)


def _control_side(ctl: Cpu, cpu: Cpu) -> Gen:
    """The control CPU ``ctl`` in ``takedown_cpu`` (kernel/cpu.c:1329-1337, v6.12) once the
    AP reported idle-dead: ``__cpu_die`` (which waits for the AP to be dead), then
    ``finish_cpu`` (:902) and ``cpus_write_unlock``. A kernel thread: it borrows
    whatever mm ``ctl`` has loaded."""
    m = cpu.m
    yield  # woken by cpuhp_complete_idle_dead's complete()
    yield from ctl.k.__cpu_die(ctl, cpu)
    cpu.idle_task.active_mm = m.init_mm  # finish_cpu: idle->active_mm = &init_mm
    yield from up_write(ctl, m.state["cpu_hotplug_lock"])


@routine("take_cpu_down", "kernel/cpu.c")
def take_cpu_down(cpu: Cpu) -> Gen:
    """``take_cpu_down()`` (kernel/cpu.c:1268, v6.12; :1049 v6.1) on the stopper thread, IRQs
    off (``multi_cpu_stop``'s DISABLE_IRQ stage): ``__cpu_disable()`` (:1275; :1056 v6.1),
    then the CPU_DYING callbacks (``cpuhp_invoke_callback_range``), of which the model
    runs ``smpcfd_dying_cpu`` (CPUHP_AP_SMPCFD_DYING)."""
    _woken_by_ipi(cpu)
    cpu.irqs_enabled = False
    yield
    yield from cpu.k.__cpu_disable(cpu)
    yield from cpu.k.smpcfd_dying_cpu(cpu)


@routine("take_cpu_down", "kernel/cpu.c", versions=V612_FIXED)
def take_cpu_down_fixed(cpu: Cpu) -> Gen:
    """``take_cpu_down()`` with 21641bd9a7a7 ("lazy tlb: fix hotplug exit race with
    MMU_LAZY_TLB_SHOOTDOWN"): ``idle_task_prepare_exit()`` first, switching away from
    the lazy mm while this CPU is still in its ``mm_cpumask``; then as before."""
    _woken_by_ipi(cpu)
    cpu.irqs_enabled = False
    yield
    yield from cpu.k.idle_task_prepare_exit(cpu)
    yield from cpu.k.__cpu_disable(cpu)
    yield from cpu.k.smpcfd_dying_cpu(cpu)


@routine("__cpu_disable", "arch/powerpc/kernel/smp.c", symbol="pnv_smp_cpu_disable")
def cpu_disable(cpu: Cpu) -> Gen:
    """``__cpu_disable()`` (arch/powerpc/kernel/smp.c:1763) -> ``pnv_smp_cpu_disable()``
    (platforms/powernv/smp.c:130, v6.12): ``set_cpu_online(cpu, false)`` (:138), then
    ``cleanup_cpu_mmu_context()`` (:147)."""
    cpu.online = False
    yield
    yield from cpu.k.cleanup_cpu_mmu_context(cpu)


@routine("cleanup_cpu_mmu_context", "arch/powerpc/mm/book3s64/mmu_context.c")
def cleanup_cpu_mmu_context(cpu: Cpu) -> Gen:
    """``cleanup_cpu_mmu_context()`` (book3s64/mmu_context.c:340, v6.12; also v6.1):
    ``clear_tasks_mm_cpumask(cpu)`` (kernel/cpu.c:1238) clears this CPU from the
    ``mm_cpumask`` of every process's mm (``arch_clear_mm_cpumask_cpu``) -- including
    the one this CPU may still be using lazily -- then ``tlbiel_all()``."""
    yield
    for mm in cpu.m.mms.values():
        if not (mm.is_init or mm.is_patching or mm.freed):
            mm.cpumask.discard(cpu.n)
    cpu.tlb.clear()


@routine("do_idle", "kernel/sched/idle.c")
def do_idle(cpu: Cpu) -> Gen:
    """``do_idle()`` (kernel/sched/idle.c:328-330, v6.12) on an offline CPU:
    ``cpuhp_report_idle_dead()`` (which releases the control side), then
    ``arch_cpu_idle_dead()``."""
    yield
    _report_idle_dead(cpu)
    yield from cpu.k.arch_cpu_idle_dead(cpu)


@routine("arch_cpu_idle_dead", "arch/powerpc/kernel/smp.c")
def arch_cpu_idle_dead(cpu: Cpu) -> Gen:
    """``arch_cpu_idle_dead()`` (arch/powerpc/kernel/smp.c:1797, v6.12):
    ``smp_ops->cpu_offline_self()`` -- ``pnv_cpu_offline_self`` on powernv."""
    yield from cpu.k.pnv_cpu_offline_self(cpu)


@routine("pnv_cpu_offline_self", "arch/powerpc/platforms/powernv/smp.c")
def pnv_cpu_offline_self(cpu: Cpu) -> Gen:
    """``pnv_cpu_offline_self()`` (platforms/powernv/smp.c:164, v6.12): ``idle_task_exit()``
    (:172), then ``generic_set_cpu_dead`` (:175) and the CPU stops."""
    yield from cpu.k.idle_task_exit(cpu)
    yield
    _takedown(cpu).dead = True


@routine("idle_task_exit", "kernel/sched/core.c")
def idle_task_exit(cpu: Cpu) -> Gen:
    """``idle_task_exit()`` (kernel/sched/core.c:7904, v6.12; the same in v6.1): if the idle
    task's ``active_mm`` is not init_mm (a lazily borrowed process mm),
    ``switch_mm(mm, &init_mm, current)`` -- ``switch_mm_irqs_off`` with IRQs off."""
    m = cpu.m
    mm = cpu.current.active_mm
    yield
    if mm is not None and mm is not m.init_mm:
        yield from cpu.k.switch_mm_irqs_off(cpu, mm, m.init_mm)


@routine("idle_task_prepare_exit", "kernel/sched/core.c", versions=V612_FIXED)
def idle_task_prepare_exit(cpu: Cpu) -> Gen:
    """``idle_task_prepare_exit()`` (kernel/sched/core.c, 21641bd9a7a7), from
    ``take_cpu_down``: switch the current (stopper) thread's lazy mm to init_mm
    (``switch_mm_irqs_off``) before ``__cpu_disable``; the idle task then inherits init_mm."""
    m = cpu.m
    mm = cpu.current.active_mm
    yield
    if mm is not None and mm is not m.init_mm:
        cpu.current.active_mm = m.init_mm
        yield from cpu.k.switch_mm_irqs_off(cpu, mm, m.init_mm)


@routine("idle_task_exit", "kernel/sched/core.c", versions=V612_FIXED)
def idle_task_exit_fixed(cpu: Cpu) -> Gen:
    """``idle_task_exit()`` with 21641bd9a7a7: only ``WARN_ON_ONCE(current->active_mm !=
    &init_mm)`` -- ``idle_task_prepare_exit`` already switched."""
    yield
    if cpu.current.active_mm is not cpu.m.init_mm:
        warn(cpu, "kernel/sched/core.c", function="idle_task_exit",
             detail="the idle task of a dying CPU still has a lazy mm")


@routine("__cpu_die", "arch/powerpc/kernel/smp.c")
def cpu_die(cpu: Cpu, dying: Cpu) -> Gen:
    """``__cpu_die()`` (arch/powerpc/kernel/smp.c:1783, v6.12), on the control CPU once the
    AP reported idle-dead, concurrently with the AP's ``arch_cpu_idle_dead``:
    ``VM_WARN_ON_ONCE`` that init_mm's cpumask has the CPU (:1789), clear it
    (:1791), then ``smp_ops->cpu_die`` -- powernv's ``generic_cpu_die``
    (smp.c:1215), polling until the AP set itself dead. Before 6.12's init_mm
    accounting (v6.1, v6.2) only the last. ``cpu`` runs it; ``dying`` goes."""
    m = cpu.m
    yield
    if m.version.is_(*V612):
        m.note_access(cpu, INIT_MM_CPUMASK, True)
        if dying.n not in m.init_mm.cpumask and m.config.enabled("CONFIG_DEBUG_VM"):
            warn(cpu, "arch/powerpc/kernel/smp.c:1789", function="__cpu_die",
                 detail=f"CPU {dying.n} is not in init_mm's mm_cpumask")
        m.init_mm.cpumask.discard(dying.n)
        yield
    td = _takedown(dying)
    while not td.dead:  # generic_cpu_die: is_cpu_dead(), msleep(100)
        yield td.alive


def _dead(cpu: Cpu) -> None:
    cpu.online = False
    cpu.irqs_enabled = False
    cpu.m.mmu.cpu_offline(cpu)
    cpu.loaded_mm = None
