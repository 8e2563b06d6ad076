"""Schedulers (uniform, PCT, preemption bounding) and the kernel's random draws as decisions."""

from __future__ import annotations

import json
import random

import pytest

from fuzzer import KernelFailure, Step
from fuzzer._draws import BOUNDARY, choose, simpler
from fuzzer._engine.replay import apply_step
from fuzzer._machine import Machine
from fuzzer._schedulers import PCT, Mixed, PreemptionBound, Uniform, make, run_block
from fuzzer.kernel import default_map_window

from modelkit import make_model, replay, run_until_idle

#: Two CPUs each start a kprobe registration: work to interleave.
SETUP = [Step("boot", seed=3), Step("online", cpu=1), Step("run", cpus=[1] * 200)]
#: A block long enough for both registrations to finish (each is hundreds of steps: it
#: builds an optprobe detour with patch_instruction); run_block stops when no CPU can run.
BLOCK = 5000


def _busy_machine(model):
    m = Machine(model)
    for step in SETUP:
        apply_step(m, step)
    op = model.operation("kprobes.register")
    m.start(m.cpus[0], op, {"site": 0})
    m.start(m.cpus[1], op, {"site": 3})
    return m


@pytest.mark.parametrize("scheduler", [Uniform(), PCT(), PCT(depth=1), PCT(depth=3),
                                       PreemptionBound(), PreemptionBound(bound=0), Mixed()],
                         ids=lambda s: f"{s.name}-{getattr(s, 'depth', None) or getattr(s, 'bound', None)}")
def test_a_scheduled_run_is_an_ordinary_run_step_that_replays(scheduler):
    model = make_model("v6.12")
    m = _busy_machine(model)
    rng = random.Random(7)
    scheduler.begin(rng, len(m.cpus))
    done = run_block(m, scheduler, rng, BLOCK)
    assert not m.busy()
    m.finish()
    assert m.steps[-1] == Step("run", cpus=done)
    assert set(done) == {0, 1}
    again, failure = replay(model, m.steps)
    assert failure is None
    assert again.nsteps == m.nsteps
    assert again.steps == m.steps


def test_pct_depth_one_runs_the_highest_priority_cpu_until_it_cannot():
    model = make_model("v6.12")
    m = _busy_machine(model)
    pct = PCT(depth=1)
    rng = random.Random(1)
    pct.begin(rng, len(m.cpus))
    done = run_block(m, pct, rng, BLOCK)
    assert not m.busy()
    first = max((0, 1), key=lambda n: pct.priority[n])
    # The favoured CPU runs first and is left only where it blocks (a lock the other
    # holds) or finishes; with one kprobe_mutex, it runs its whole registration first.
    assert done[0] == first
    switch = done.index(1 - first)
    assert m.cpus[first].stack == [] or switch > 0
    assert all(n == 1 - first for n in done[switch:]) or not m.cpus[first].runnable()


def test_pct_change_points_drop_the_running_cpu_below_the_others():
    pct = PCT(depth=3, steps=10)
    rng = random.Random(5)
    pct.begin(rng, 4)
    assert len(pct.change_points) == 2
    assert sorted(pct.priority.values()) == [3, 4, 5, 6]
    assert all(1 <= p <= 10 for p in pct.change_points)

    class C:
        def __init__(self, n):
            self.n = n

    cpus = [C(n) for n in range(4)]
    picks = [pct.pick(cpus, rng).n for _ in range(12)]
    # Before the first change point: the top CPU; after the last, never a CPU that dropped.
    top = max(range(4), key=lambda n: (pct.priority[n] if pct.priority[n] > 2 else -1))
    assert picks[-1] == top
    assert sorted(pct.priority.values())[:2] == [1, 2]


def test_preemption_bound_zero_never_preempts_and_k_at_most_k():
    model = make_model("v6.12")
    for bound in (0, 1, 2):
        m = _busy_machine(model)
        sched = PreemptionBound(bound=bound, steps=20)
        rng = random.Random(bound)
        sched.begin(rng, len(m.cpus))
        preempted = 0
        last = None
        for _ in range(300):
            runnable = m.runnable()
            if not runnable:
                break
            cpu = sched.pick(runnable, rng)
            if last is not None and cpu.n != last and any(c.n == last for c in runnable):
                preempted += 1
            last = cpu.n
            m.advance(cpu)
        assert preempted <= bound
        assert preempted == bound - sched.left


def test_preemption_bound_deepens_as_examples_go_by():
    sched = PreemptionBound(per_bound=2, max_bound=2)
    rng = random.Random(0)
    bounds = []
    for _ in range(8):
        sched.begin(rng, 2)
        bounds.append(sched.k)
    assert bounds == [0, 0, 1, 1, 2, 2, 0, 0]


def test_make_names_every_scheduler_and_rejects_others():
    assert [make(n).name for n in ("uniform", "pct", "bounded", "mixed")] == \
        ["uniform", "pct", "bounded", "mixed"]
    with pytest.raises(ValueError, match="known: uniform, pct, bounded, mixed"):
        make("fifo")


# -- the kernel's random draws ----------------------------------------------------------------


def test_boot_draws_round_trip_and_old_steps_have_none():
    step = Step("boot", seed=4, draws=[0, -1])
    data = step.to_json()
    assert data == {"action": "boot", "seed": 4, "draws": [0, -1]}
    assert Step.from_json(json.loads(json.dumps(data))) == step
    assert Step("boot", seed=4).to_json() == {"action": "boot", "seed": 4}
    assert Step.from_json({"action": "boot", "seed": 4}).draws == ()
    assert "random draws [0, -1]" in step.describe()


def test_a_boot_without_draws_draws_from_its_seed_as_before():
    model = make_model("v6.2")
    m, failure = replay(model, [Step("boot", seed=9), Step("online", cpu=1)])
    assert failure is None
    page = m.run.page_size
    pages = default_map_window(m) // page
    rng = random.Random(9)
    boot = rng.getrandbits(64)  # CPU 0's patching address at boot
    second = rng.getrandbits(64)
    ctx = [c.state["cpu_patching_context"] for c in m.cpus[:2]]
    assert [c.addr for c in ctx] == [(1 + boot % (pages - 2)) * page, (1 + second % (pages - 2)) * page]


def test_chosen_draws_pick_the_boundaries_of_the_range():
    model = make_model("v6.2")
    m, failure = replay(model, [Step("boot", seed=9, draws=[0, -1]), Step("online", cpu=1)])
    assert failure is None
    page = m.run.page_size
    top = default_map_window(m) - 2 * page
    addrs = [c.state["cpu_patching_context"].addr for c in m.cpus[:2]]
    assert addrs == [page, top]


def test_patching_addr_zero_shows_only_at_the_lowest_draw():
    model = make_model("v6.2", plugins=["fuzzer_plugins.mistakes.patching_addr_zero"])
    _, clean = replay(model, [Step("boot", seed=9)])
    assert clean is None
    _, failure = replay(model, [Step("boot", seed=9, draws=[0])])
    assert failure is not None
    assert failure.signature.function == "patching address bounds"


def test_choose_and_simpler_draws():
    rng = random.Random(2)
    chosen = [choose(rng, 3) for _ in range(400)]
    assert any(c == () for c in chosen) and any(c for c in chosen)
    values = [v for c in chosen for v in c]
    assert sum(v in BOUNDARY for v in values) > len(values) / 2
    assert simpler(()) == []
    cands = simpler((5, -3))
    assert cands[0] == () and (5,) in cands and (0, -3) in cands and (5, 0) in cands


# -- interleaving feedback ---------------------------------------------------------------------


def test_conflicting_accesses_by_two_cpus_form_ordered_pairs():
    from fuzzer._interleave import Interleavings

    model = make_model("v6.12")
    seen = Interleavings()
    m = Machine(model)
    log = seen.attach(m)
    for step in SETUP:
        apply_step(m, step)
    m.start(m.cpus[0], model.operation("kprobes.register"), {"site": 0})
    m.run_to_completion([m.cpus[0]])
    m.start(m.cpus[1], model.operation("kprobes.hit"), {"site": 0})
    m.run_to_completion([m.cpus[1]])
    m.finish()
    pairs = set(log.pairs)
    assert ("kprobe table", "register_kprobe", "w", "kprobe_handler", "r") in pairs
    assert any(p[0] == "text" and p[2] == "w" and p[4] == "r" for p in pairs)
    assert all(p[2] == "w" or p[4] == "w" for p in pairs)  # never read after read
    assert seen.end_example(m) == len(pairs) and len(seen.kept) == len(pairs)
    assert seen.end_example(m) == 0  # nothing new the second time


def test_a_rescheduled_replay_keeps_the_operations_and_replays_strictly():
    from fuzzer._interleave import Interleavings, Where, replay_rescheduled
    model = make_model("v6.12")
    m = _busy_machine(model)
    m.run_bytes(bytes(range(60)))
    m.finish()
    kept = (tuple(m.steps), len(m.steps) - 1, Where(cpu=1, first=3, second=20))
    for seed in range(6):  # both mutations: a PCT reschedule, and a delay of CPU 1
        again = Machine(model)
        Interleavings().attach(again)
        replay_rescheduled(again, kept, random.Random(seed), PCT(depth=2),
                           lambda m, s: apply_step(m, s, strict=False))
        again.finish()
        starts = [s for s in again.steps if s.action == "start"]
        assert starts == [s for s in m.steps if s.action == "start"]
        third, failure = replay(model, again.steps)
        assert failure is None and third.steps == again.steps


#: The blr after pcrel_copy's prefixed instruction: never optimized, so a probe there stays a
#: plain trap probe (at an optimizable site, try_to_optimize_kprobe hashes an aggregator).
PLAIN_SITE = 7


def test_delaying_the_first_access_flips_a_pair_and_finds_the_race():
    """The kept example: CPU 1 hits the probe and looks it up before CPU 0's unregister
    unhashes it (the safe order). Delaying CPU 1 from its lookup to just after the unhash
    is the interleaving kprobe_trap_recheck fails on."""
    from fuzzer._engine.replay import apply_step
    from fuzzer._interleave import Interleavings, delay

    def lenient(m, step):
        return apply_step(m, step, strict=False)

    model = make_model("v6.12", plugins=["fuzzer_plugins.mistakes.kprobe_trap_recheck"])
    steps = [*SETUP, Step("start", cpu=0, name="kprobes.register", args={"site": PLAIN_SITE})]
    steps += [run_until_idle(model, steps, 0), Step("start", cpu=1, name="kprobes.hit",
                                                    args={"site": PLAIN_SITE}),
             Step("start", cpu=0, name="kprobes.unregister", args={"site": PLAIN_SITE}),
             Step("run", cpus=[1, 1, 0, 0, 0, 1] + [0] * 60)]
    seen = Interleavings()
    m = Machine(model)
    seen.attach(m)
    for step in steps:
        lenient(m, step)
    m.finish()
    assert m.failure is None
    seen.end_example(m)
    (kept,) = [k for k, kind in zip(seen.kept, seen.kinds, strict=True) if kind == "kprobe table"
               and k[2].cpu == 1]
    _, failure = replay(model, delay(kept[0], kept[2]))
    assert failure is not None and "unexpected trap" in str(failure)


def _hit_during_unregister(mistake):
    """A kept example in the safe order: CPU 1 hits the probe and looks it up, then CPU 0's
    unregister runs to its end while CPU 1 single-steps early. Its interleavings, kept."""
    from fuzzer._interleave import Interleavings

    model = make_model("v6.12", plugins=[f"fuzzer_plugins.mistakes.{mistake}"])
    steps = [*SETUP, Step("start", cpu=0, name="kprobes.register", args={"site": PLAIN_SITE})]
    steps += [run_until_idle(model, steps, 0), Step("start", cpu=1, name="kprobes.hit",
                                                    args={"site": PLAIN_SITE}),
              Step("start", cpu=0, name="kprobes.unregister", args={"site": PLAIN_SITE}),
              Step("run", cpus=[1, 1, 0, 0, 0, 1, 1, 1, 1] + [0] * 60)]
    seen = Interleavings()
    m = Machine(model)
    seen.attach(m)
    for step in steps:
        apply_step(m, step, strict=False)
    m.finish()
    assert m.failure is None
    seen.end_example(m)
    return model, {kind: k for k, kind in zip(seen.kept, seen.kinds, strict=True) if k[2].cpu == 1}


@pytest.mark.parametrize("mistake, kind", [("kprobe_trap_recheck", "text"),
                                           ("kprobe_slot_before_rcu", "kprobe table"),
                                           ("kprobe_irqs_on_in_handler", "kprobe table")])
def test_holding_the_first_cpu_until_the_other_is_done_finds_what_a_flip_does_not(mistake, kind):
    """The pause a race needs is often the rest of the other CPU's operation: CPU 1 fetched
    the trap (or looked the probe up) and must wait out the whole unregister. Flipping the
    pair (``delay``) releases it too soon; ``hold`` releases it when CPU 0 is idle, and the
    replay it records fails again when replayed strictly."""
    from fuzzer._interleave import delay, hold

    model, kept = _hit_during_unregister(mistake)
    steps, _, where = kept[kind]
    _, flipped = replay(model, delay(steps, where))
    assert flipped is None
    m = Machine(model)
    with pytest.raises(KernelFailure) as failure:
        hold(m, steps, where, lambda m, s: apply_step(m, s, strict=False))
        m.finish()
    assert failure.value.cpu == 1
    _, again = replay(model, m.steps)
    assert again is not None and again.signature == failure.value.signature


def test_a_pair_formed_many_times_keeps_a_sample_of_them_and_rare_pairs_are_picked_more():
    from fuzzer._interleave import Interleavings, Where

    class Log:
        def __init__(self, pairs):
            self.pairs = pairs

    class Example:
        def __init__(self, i, pairs):
            self.steps = [Step("boot", seed=i)]
            self.accesses = Log({p: (1, Where(0, 0, 1)) for p in pairs})

    common, rare = ("text", "a", "r", "b", "w"), ("text", "c", "r", "d", "w")
    seen, rng = Interleavings(per_pair=4), random.Random(1)
    for i in range(200):
        seen.end_example(Example(i, [common] + ([rare] if i == 0 else [])), rng)
    assert seen.formed == {common: 200, rare: 1} and len(seen.kept) == 5
    boots = {seen.kept[j][0][0].seed for j in seen.where[common]}
    assert len(boots) == 4 and max(boots) >= 4  # not only the first four that formed it
    picks = [seen.pick(rng)[0][0].seed for _ in range(400)]
    assert picks.count(0) > 400 * 0.8  # weight 1 against 200 ** -0.5 for the common pair


def test_a_pair_keeps_no_two_examples_with_the_same_operations():
    """Most examples that form a pair are replays of a kept one, rescheduled: the same boot
    and operations, other ``run`` steps. A pair keeps one of them, and its other places go
    to examples with other operations (on seed 4 of ``kprobe_rcu_too_early``, before this,
    a pair on the kprobe table kept four copies of one example, none of whose holds fail)."""
    from fuzzer._interleave import Interleavings, Where

    class Log:
        def __init__(self, pairs):
            self.pairs = pairs

    class Example:
        def __init__(self, boot, schedule):
            self.steps = [Step("boot", seed=boot), Step("start", cpu=1, name="op"),
                          Step("run", cpus=schedule)]
            self.accesses = Log({pair: (2, Where(1, 0, 1))})

    pair = ("kprobe table", "a", "r", "b", "w")
    seen, rng = Interleavings(per_pair=4), random.Random(1)
    for i in range(50):  # one example's operations, rescheduled fifty ways
        seen.end_example(Example(1, [1, 0] * (i + 1)), rng)
    assert seen.formed[pair] == 50 and len(seen.where[pair]) == 1
    for boot in (2, 3, 4, 5, 6):
        seen.end_example(Example(boot, [1, 0]), rng)
    ops = {seen.kept[j][0][0].seed for j in seen.where[pair]}
    assert len(seen.where[pair]) == 4 and len(ops) == 4


def test_a_late_start_then_a_hold_finds_a_lookup_after_the_grace_period():
    """kprobe_rcu_too_early: the unregister's grace period comes first, so the hit must
    begin after it and look the probe up before the unhash, then wait out the free. In the
    kept example the hit began first (the grace period waited for it): a plain hold cannot
    fail; a late start at some point inside the unregister does, and replays."""
    from fuzzer._interleave import hold, hold_range

    model, kept = _hit_during_unregister("kprobe_rcu_too_early")
    steps, _, where = kept["kprobe table"]
    outcomes = {}
    least, most, _ = hold_range(steps, where)
    for late in [None, *range(least, most + 1)]:
        m = Machine(model)
        try:
            hold(m, steps, where, lambda m, s: apply_step(m, s, strict=False), late)
            m.finish()
        except KernelFailure as exc:
            _, again = replay(model, m.steps)
            assert again is not None and again.signature == exc.signature
            outcomes[late] = exc.cpu
        else:
            outcomes[late] = None
    assert outcomes[None] is None and outcomes[least] is None
    assert 1 in outcomes.values()
