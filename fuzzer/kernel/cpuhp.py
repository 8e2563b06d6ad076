"""CPU hotplug (kernel/cpu.c): dynamic AP online states, bring-up and teardown."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from fuzzer._config import RunConfig
from fuzzer._errors import ModelLimitation
from fuzzer._machine import CpuhpState
from fuzzer._plugins import hookimpl
from fuzzer._routines import routine
from fuzzer._specs import Invariant
from fuzzer.kernel.locking import down_read, down_write, up_read, up_write

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine

Gen = Generator[Any, None, Any]
Callback = Callable[..., Generator[Any, None, int]]

#: First dynamic AP online state number (CPUHP_AP_ONLINE_DYN); the value is only shown.
CPUHP_AP_ONLINE_DYN = 169


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [cpuhp_setup_state, cpuhp_bringup_ap, cpuhp_teardown_ap]


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
    cpu.loaded_mm = m.init_mm
    m.mmu.switch_context(cpu, m.init_mm)
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
        _dead(cpu)
    yield from up_write(cpu, lock)
    return ret


@routine("cpuhp_teardown_ap", "kernel/cpu.c", symbol="cpuhp_thread_fun")
def cpuhp_teardown_ap(cpu: Cpu) -> Gen:
    """Take ``cpu`` offline (kernel/cpu.c ``_cpu_down``): teardown callbacks, in reverse.

    AP_ONLINE_DYN teardowns run on the outgoing CPU in its hotplug thread,
    under ``cpus_write_lock``; then the CPU dies and its TLB is gone.
    """
    m = cpu.m
    lock = m.state["cpu_hotplug_lock"]
    yield from down_write(cpu, lock)
    for state in reversed(m.cpuhp_states):
        if state.teardown is not None:
            yield from state.teardown(cpu)
    _dead(cpu)
    yield from up_write(cpu, lock)


def _dead(cpu: Cpu) -> None:
    cpu.online = False
    cpu.irqs_enabled = False
    cpu.m.mmu.cpu_offline(cpu)
    cpu.loaded_mm = None
