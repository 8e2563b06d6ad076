"""The walk engine: recorded decisions, lenient replay, the step-level shrinker, its database."""

from __future__ import annotations

import json
import random

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.database import InMemoryExampleDatabase

from fuzzer import Boolean, Choice, Constant, IntRange, Step
from fuzzer._args import sampler
from fuzzer._coverage import RoutineRecorder
from fuzzer._engine import Shrinker, apply_step, replay, run_campaign
from fuzzer._engine.store import steps_key as _steps_key
from fuzzer._engine.walk import Walker

from modelkit import make_model

LEAK = "fuzzer_plugins.mistakes.leak_on_offline"


def walk_until_failure(model, seed):
    """The walk's first failing example on ``model``: (machine, failure)."""
    walker = Walker(model, seed=seed)
    for _ in range(1000):
        m, failure = walker.example()
        if failure is not None:
            return m, failure
    raise AssertionError(f"no failure in 1000 examples of seed {seed}")


def test_every_walk_example_replays_from_its_recorded_steps():
    """An example is a pure function of its steps: a strict replay ends the same way.

    On v6.12-fixed, so that the examples run clean (v6.12's known findings end them)."""
    model = make_model("v6.12-fixed")
    walker = Walker(model, seed=5)
    for _ in range(30):
        m, failure = walker.example()
        assert failure is None
        again, failure = replay(model, m.steps)
        assert failure is None
        assert again.nsteps == m.nsteps
        assert again.steps == m.steps


def test_the_same_seed_walks_the_same_examples():
    model = make_model()
    a, b = Walker(model, seed=9), Walker(model, seed=9)
    assert [a.example()[0].steps for _ in range(5)] == [b.example()[0].steps for _ in range(5)]
    c = Walker(model, seed=10)
    assert [c.example()[0].steps for _ in range(5)] != [Walker(model, seed=9).example()[0].steps
                                                         for _ in range(5)]


def test_steps_that_no_longer_apply_are_skipped_and_not_recorded():
    model = make_model()
    steps = [Step("online", cpu=1),                     # before boot: skipped
             Step("boot", seed=0),
             Step("offline", cpu=2),                    # CPU 2 is not online
             Step("start", cpu=3, name="jump_label.toggle", args={"key": 0}),  # offline CPU
             Step("start", cpu=0, name="no.such_op"),   # not this model's
             Step("online", cpu=2),
             Step("run", cpus=[3, 2, 2, 9])]            # CPU 3 idle, 9 absent
    m, failure = replay(model, steps, strict=False)
    assert failure is None
    assert m.steps[:3] == [Step("boot", seed=0), Step("online", cpu=2), Step("run", cpus=[2, 2])]
    assert apply_step(m, Step("boot", seed=1), strict=False) is False  # booted already


def test_shrinks_a_long_walk_to_the_known_minimal_reproduction():
    model = make_model(plugins=[LEAK])
    _, failure = walk_until_failure(model, 2)
    assert len(failure.steps) > 4  # what the walk found is long ...
    shrinker = Shrinker(model, failure.steps, failure.signature)
    best = shrinker.shrink()
    # ... boot, online, run the CPU up, offline is the shortest (bench/run.py's MINIMAL).
    assert [s.action for s in best] == ["boot", "online", "run", "offline"]
    assert best[0].seed == 0 and best[1].cpu == 1  # simplified: seed 0, the lowest CPU
    _, again = replay(model, best)
    assert again is not None and again.signature == failure.signature


def test_shrinker_keeps_only_failures_with_the_same_signature():
    model = make_model(plugins=[LEAK])
    _, failure = walk_until_failure(model, 2)
    shrinker = Shrinker(model, failure.steps, failure.signature)
    assert shrinker.consider([Step("boot", seed=0)]) is False  # boots clean
    assert shrinker.best == tuple(failure.steps)


def test_shrinker_refuses_steps_that_do_not_fail():
    """Asked to shrink steps that do not fail again, it says so rather than report them."""
    _, failure = walk_until_failure(make_model(plugins=[LEAK]), 2)
    with pytest.raises(RuntimeError, match="not deterministic"):
        Shrinker(make_model(), failure.steps, failure.signature)  # the same steps, no mistake


def test_guided_walk_keeps_examples_that_reached_new_routines():
    model = make_model()
    recorder = RoutineRecorder(model.routines, model.routine_infos)
    walker = Walker(attrs.evolve(model, routines=recorder.table), seed=3, guide=True,
                    entered=recorder.example)
    for _ in range(40):
        walker.example()
        recorder.end_example()
    assert walker.kept, "the first example enters routines no earlier one did"
    assert walker.reached == recorder.reached
    # Later examples start from a kept one's prefix (boot seed and all).
    boots = {kept[0] for kept in walker.kept}
    later = [walker.example()[0].steps[0] for _ in range(20)]
    assert any(b in boots for b in later)


@pytest.mark.parametrize("strategy, values, simplest", [
    (IntRange(2, 5), {2, 3, 4, 5}, 2),
    (Boolean(), {False, True}, False),
    (Choice(("a", "b")), {"a", "b"}, "a"),
    (Constant(7), {7}, 7),
    (st.integers(0, 3).map(lambda x: 2 * x), {0, 2, 4, 6}, 0),  # drawn by Hypothesis, once
])
def test_argument_samplers_draw_every_value_and_simplify_towards_the_simplest(strategy, values,
                                                                              simplest):
    draw, simplify = sampler(strategy)
    rng = random.Random(0)
    assert {draw(rng) for _ in range(200)} == values
    assert simplify(simplest) == []
    for v in values - {simplest}:
        assert simplify(v)[0] == simplest
        assert set(simplify(v)) <= values


def test_walk_engine_saves_its_reproduction_and_replays_it_first():
    model = make_model(plugins=["fuzzer_plugins.mistakes.pmi_in_patch_window"])
    db = InMemoryExampleDatabase()
    first = run_campaign(model, seed=5, max_examples=0, time_budget=30, database=db)
    assert first.status == "failed" and first.examples_to_first_failure > 1
    saved = list(db.fetch(_steps_key(model)))
    assert [Step.from_json(s) for s in json.loads(saved[0])] == list(first.steps)
    again = run_campaign(model, seed=5, max_examples=1, time_budget=30, database=db)
    assert again.status == "failed" and again.examples_to_first_failure == 1


def test_unreadable_database_entries_are_dropped_not_run():
    model = make_model()
    db = InMemoryExampleDatabase()
    key = _steps_key(model)
    for junk in (b"not json", b'{"action": "boot"}', b'[{"action": "exec", "code": "1/0"}]'):
        db.save(key, junk)
    known = [k.signature for k in model.known]  # v6.2's CPU-offline leak
    out = run_campaign(model, seed=1, max_examples=3, time_budget=30, database=db, known=known)
    assert out.status == "passed"
    assert list(db.fetch(key)) == []


def test_a_saved_example_that_no_longer_fails_is_removed():
    model = make_model()
    db = InMemoryExampleDatabase()
    key = _steps_key(model)
    db.save(key, json.dumps([{"action": "boot", "seed": 0}]).encode())
    known = [k.signature for k in model.known]  # v6.2's CPU-offline leak
    out = run_campaign(model, seed=1, max_examples=2, time_budget=30, database=db, known=known)
    assert out.status == "passed"
    assert list(db.fetch(key)) == []


def test_end_state_is_checked_whenever_the_machine_is_quiescent(monkeypatch):
    """An end-state bug shows at the first quiescent point, and replays from there at finish."""
    from fuzzer._machine import Machine

    finished = []
    real_finish = Machine.finish

    def finish(self):
        finished.append(self)
        real_finish(self)

    monkeypatch.setattr(Machine, "finish", finish)
    model = make_model(plugins=[LEAK])
    early = 0
    # Ten seeds: CPU offline now runs the dying CPU's idle task too, so fewer of the walk's
    # examples reach a quiescent point before their end (5 of these 10 do).
    for seed in range(1, 11):
        m, failure = walk_until_failure(model, seed)
        assert failure.kind == "END-STATE" and m.quiescent()
        early += m not in finished  # found before the example's end
        _, again = replay(model, failure.steps)  # replay ends with finish(): the same check
        assert again is not None and again.signature == failure.signature
    assert early >= 4


@pytest.mark.parametrize("engine", ["walk", "hypothesis"])
def test_both_engines_find_and_shrink_through_the_public_harness(engine):
    from fuzzer.testing import search

    outcome = search(make_model(plugins=[LEAK]), seed=1, max_examples=2000, time_budget=60,
                     engine=engine)
    assert outcome.status == "failed"
    assert [s.action for s in outcome.steps] == ["boot", "online", "run", "offline"]


def test_an_unknown_engine_is_a_usage_error():
    from fuzzer._errors import UsageError

    with pytest.raises(UsageError, match="unknown engine 'afl'; engines: walk, hypothesis"):
        run_campaign(make_model(), seed=1, max_examples=1, time_budget=1, engine="afl")
