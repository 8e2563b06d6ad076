"""The emulator and the state machine: interleavings, deadlock, livelock, interrupts, replay."""

from __future__ import annotations

from fuzzer import (
    ArgType,
    ConfigOption,
    Deadlock,
    InterruptSource,
    Invariant,
    Livelock,
    Mutex,
    Operation,
    SpinLock,
    Step,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
    spin_lock,
    spin_unlock,
)
from fuzzer._machine import Machine

from modelkit import boot_steps, make_model, plugin_module, replay, search


def _abba_plugin():
    """Two operations taking two locks in opposite orders: a classic ABBA deadlock."""

    def setup(machine):
        machine.attach("abba", {"a": SpinLock("lock_a"), "b": SpinLock("lock_b")})

    def take(first, second):
        def op(cpu):
            locks = cpu.m.state["abba"]
            yield from spin_lock(cpu, locks[first])
            yield from spin_lock(cpu, locks[second])
            yield from spin_unlock(cpu, locks[second])
            yield from spin_unlock(cpu, locks[first])

        return op

    def operations(config):
        return [Operation("abba.ab", take("a", "b")), Operation("abba.ba", take("b", "a"))]

    return plugin_module("abba_plugin", fuzzer_machine_setup=hookimpl(setup),
                         fuzzer_operations=hookimpl(operations))


QUIET = ["no:kprobes", "no:jump_label", "no:breakpoints", "no:interrupts"]
"""The other operation and interrupt plugins, blocked where a test wants only its own."""


def test_search_finds_an_abba_deadlock_and_shrinks_it():
    # Without lockdep, only the deadlocking interleaving shows the inversion.
    model = make_model(extra=[_abba_plugin()], cpus=2, plugins=QUIET, config=["CONFIG_PROVE_LOCKING=n"])
    outcome = search(model, seed=3, max_examples=2000)
    assert outcome.status == "failed"
    assert outcome.failure.kind == Deadlock.kind  # a Finding record of the Deadlock raised
    assert "lock_a" in outcome.failure.message and "lock_b" in outcome.failure.message
    starts = sorted(s.name for s in outcome.steps if s.action == "start")
    assert starts == ["abba.ab", "abba.ba"]
    # Shrunk: boot, CPU 1 online, the two operations, and the schedules between
    # (Hypothesis reaches a local minimum: a schedule may stay split in two).
    actions = [s.action for s in outcome.steps]
    assert actions.count("online") == 1 and actions.count("offline") == 0
    assert actions.count("irq") == 0 and actions.count("run") <= 3


def test_the_same_ops_run_in_sequence_do_not_deadlock():
    model = make_model(extra=[_abba_plugin()], cpus=2, config=["CONFIG_PROVE_LOCKING=n"])
    steps = [*boot_steps(), Step("start", cpu=0, name="abba.ab"), Step("run", cpus=[0] * 10),
             Step("start", cpu=0, name="abba.ba"), Step("run", cpus=[0] * 10)]
    _, failure = replay(model, steps)
    assert failure is None


def test_an_operation_that_never_ends_is_a_livelock():
    def spin(cpu):
        while True:
            yield

    plugin = plugin_module("spinner", fuzzer_operations=hookimpl(
        lambda config: [Operation("spinner.spin", spin)]))
    model = make_model(extra=[plugin])
    steps = [*boot_steps(), Step("start", cpu=0, name="spinner.spin")]
    _, failure = replay(model, steps)
    assert failure.kind == Livelock.kind
    assert failure.cpu == 0


def test_sleeping_while_holding_a_spinlock_is_reported():
    def bad(cpu):
        lock = cpu.m.state["bad"]
        yield from spin_lock(cpu, lock["s"])
        yield from mutex_lock(cpu, lock["m"])
        yield from mutex_unlock(cpu, lock["m"])
        yield from spin_unlock(cpu, lock["s"])

    plugin = plugin_module(
        "sleeper",
        fuzzer_machine_setup=hookimpl(lambda machine: machine.attach(
            "bad", {"s": SpinLock("s"), "m": Mutex("m")})),
        fuzzer_operations=hookimpl(lambda config: [Operation("sleeper.bad", bad)]),
    )
    outcome = search(make_model(extra=[plugin]), max_examples=200)
    assert outcome.status == "failed"
    assert outcome.failure.message.startswith("BUG: sleeping function called from invalid context")
    assert [f.function for f in outcome.failure.trace][:1] == ["mutex_lock"]


def test_plugin_interrupt_source_and_config_option_take_effect():
    """An interrupt source arrives where IRQs are on; a plugin config option gates a check."""

    def handler(cpu):
        cpu.m.state["ticks"][cpu.n] += 1
        yield

    def check(machine):
        if machine.config.enabled("CONFIG_TICK_LIMIT") and sum(machine.state["ticks"]) > 1:
            return f"{sum(machine.state['ticks'])} ticks"
        return None

    def build(extra_config):
        plugin = plugin_module(
            "ticker",
            fuzzer_addconfig=hookimpl(lambda: [ConfigOption("CONFIG_TICK_LIMIT", False, "test")]),
            fuzzer_machine_setup=hookimpl(
                lambda machine: machine.attach("ticks", [0] * len(machine.cpus))),
            fuzzer_interrupt_sources=hookimpl(
                lambda config: [InterruptSource("ticker.tick", handler)]),
            fuzzer_invariants=hookimpl(lambda config: [Invariant("tick limit", check)]),
        )
        return make_model(extra=[plugin], config=extra_config, plugins=["no:kprobes"])

    on = search(build(["CONFIG_TICK_LIMIT=y"]), max_examples=500)
    assert on.status == "failed" and on.failure.signature.function == "tick limit"
    assert sum(1 for s in on.steps if s.action == "irq" and s.name == "ticker.tick") == 2
    off = search(build([]), max_examples=100)
    assert off.status == "passed"


def test_interrupts_never_arrive_with_irqs_off():
    model = make_model()
    m = Machine(model)
    m.boot(0)
    timer = model.interrupt("timer")
    cpu = m.cpus[0]
    assert m.can_interrupt(cpu, timer)
    cpu.local_irq_save()
    assert not m.can_interrupt(cpu, timer)
    assert not m.can_interrupt(m.cpus[1], timer)  # offline


def test_runs_replay_exactly_from_their_steps():
    model = make_model("v6.2")
    outcome = search(model, seed=5, max_examples=50)
    assert outcome.status == "passed"
    m1 = Machine(model)
    m1.boot(3)
    m1.cpu_up(m1.cpus[2])
    m1.start(m1.cpus[0], model.operation("kprobes.register"), {"site": 3})
    m1.run_bytes(bytes(range(40)))
    m1.finish()
    m2, failure = replay(model, m1.steps)
    assert failure is None
    assert m2.steps == m1.steps
    assert m2.nsteps == m1.nsteps
    assert m2.mem == m1.mem


def test_schedule_blocks_merge_into_one_step():
    model = make_model()
    m = Machine(model)
    m.boot(0)
    m.cpu_up(m.cpus[1])
    m.run_bytes(b"\x00\x00")
    m.run_bytes(b"\x00")
    assert [s.action for s in m.steps] == ["boot", "online", "run"]
    assert m.steps[-1].cpus == (1, 1, 1)


def test_operation_argument_types_are_declared_per_plugin():
    op = make_model().operation("kprobes.register")
    assert isinstance(op.args["site"], ArgType)  # the fuzzer's own: fuzzer.Choice


class _Handshake:
    """A wait that is no lock though it has an ``owner`` field (a struct naming whose it is)."""

    def __init__(self) -> None:
        self.owner = "cpuhp/1"

    def pending(self) -> bool:
        return True


@routine("wait_for_lock", "test.c")
def _wait_for_lock(cpu, lock):
    while True:
        yield lock.busy


@routine("wait_for_handshake", "test.c")
def _wait_for_handshake(cpu, handshake):
    while True:
        yield handshake.pending


def test_a_deadlock_is_named_by_the_wait_of_the_cycle_not_by_a_lock_queued_behind_it():
    """Two CPUs queued on a held lock, two in the cycle: the routine the cycle's CPUs wait in
    names the deadlock on the tie. A lock is told by its class (:class:`fuzzer.Lock`), not by
    an ``owner`` field, which a wait that is no lock may have too."""
    m = Machine(make_model(cpus=4, plugins=QUIET))
    mutex = Mutex("held")
    mutex.owner = m.cpus[0].idle_task
    handshake = _Handshake()
    for c in m.cpus[:2]:
        m.push(c, _wait_for_lock(c, mutex), c.idle_task)
    for c in m.cpus[2:]:
        m.push(c, _wait_for_handshake(c, handshake), c.idle_task)
    try:
        m.run_to_completion()
    except Deadlock as dead:
        assert dead.signature.function == "wait_for_handshake", dead
    else:
        raise AssertionError("no deadlock")
