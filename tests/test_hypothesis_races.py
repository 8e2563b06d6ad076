"""The Hypothesis engine's race draws: their odds are the ones the engine states."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, seed, settings
from hypothesis import strategies as st

from fuzzer._engine import hypothesis as engine

from modelkit import make_model


def _share(strategy: st.SearchStrategy, tag=lambda v: v) -> Counter:
    """How often each (tagged) value of ``strategy`` is drawn, among many draws inside
    longer examples (a single draw's choice tree is soon exhausted: Hypothesis then avoids
    it, which skews the odds of a one-value branch)."""
    seen: Counter = Counter()

    @seed(1)
    @settings(max_examples=150, database=None, deadline=None)
    @given(st.lists(st.tuples(strategy, st.integers(0, 2**30)), min_size=20, max_size=20))
    def draw(values):
        seen.update(tag(v) for v, _ in values)

    draw()
    return seen


def test_weighted_draws_each_choice_by_its_weight_where_one_of_would_not():
    a, b = st.just("a"), st.just("b")
    # st.one_of(a, a, a, b) drops the repeated branches: a and b half the time each.
    assert len(st.one_of(a, a, a, b).branches) == 2
    shares = _share(engine.weighted((3, a), (1, b)))
    assert 0.65 < shares["a"] / sum(shares.values()) < 0.85


def test_a_racing_operation_runs_to_its_end_three_times_in_four_and_stops_at_an_access_three_in_four():
    ends = _share(engine._STOP_OR_END, lambda v: v[0])
    assert 0.65 < ends["end"] / sum(ends.values()) < 0.85
    stops = _share(engine._STOP, lambda v: v[0])
    assert 0.65 < stops["access"] / sum(stops.values()) < 0.85


def test_the_operations_that_name_a_made_object_are_those_declaring_an_argument_alike():
    model = make_model("v6.12")
    ops = {op.name: op for op in model.operations}
    register = ops["kprobes.register"]
    naming = {op.name for op in model.operations
              if op.name.startswith("kprobes.") and engine._declares_alike(op, register)}
    assert naming == {"kprobes.register", "kprobes.disable", "kprobes.enable", "kprobes.unregister",
                      "kprobes.hit"}
