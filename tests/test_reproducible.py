"""A seeded search's examples are a function of the model, the options and the seed alone:
not of what the process searched, built or imported before, nor of the process itself."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import subprocess
import sys

import pytest

from fuzzer._engine import run_campaign
from fuzzer._engine.search import Events
from fuzzer._engine.store import encode

from modelkit import make_model

#: Examples compared: before the fix, the first difference showed within them.
N = 20
_modules = itertools.count()


def _import_constants(make_plugin) -> None:
    """Import a new module full of constants, as a test suite's throw-away plugins are:
    Hypothesis drew (one draw in about forty) from the constants of every local module the
    process had loaded. Each call's are new ones."""
    k = next(_modules)
    values = [*range(101 + k, 4_000, 37), 65_535 - k, 2**32 - 2 - k, 2**63 + k,
              bytes([1, 2, k % 256]), b"\xff" * (7 + k)]
    source = "\n".join(f"C{i} = {v!r}" for i, v in enumerate(values))
    importlib.import_module(make_plugin("constants", source))


def _examples(kernel: str, engine: str, seed: int, n: int = N) -> list[str]:
    """The recorded steps of the first ``n`` examples of a seeded search, encoded."""
    seen: list[str] = []

    def finish(machine: object, caught: object) -> None:
        seen.append(encode(getattr(machine, "steps", ())).hex())

    run_campaign(make_model(kernel), seed=seed, max_examples=n, time_budget=0, engine=engine,
                 events=Events(example_finish=finish), shrink=False)
    return seen


@pytest.mark.parametrize("engine", ["walk", "hypothesis"])
def test_a_seeded_search_gives_the_same_examples_whatever_the_process_did_before(engine, make_plugin):
    """The same search again after searches of other models with both engines (their boot
    caches, interleaving pairs, Hypothesis runs) and a newly imported module."""
    first = _examples("v6.12-fixed", engine, 3)
    _examples("v6.1", "hypothesis", 7, 5)
    _examples("v6.2", "walk", 7, 5)
    _import_constants(make_plugin)
    assert _examples("v6.12-fixed", engine, 3) == first


@pytest.mark.parametrize("engine", ["walk", "hypothesis"])
def test_a_smaller_budget_runs_the_first_examples_of_a_larger_one(engine):
    """A failure found at example k is found at k with any budget of k or more (the
    Hypothesis engine's last run was as long as the budget left, so generated otherwise)."""
    assert _examples("v6.12-fixed", engine, 3, 12) == _examples("v6.12-fixed", engine, 3, 25)[:12]


def test_the_walks_pool_of_a_hypothesis_strategy_is_drawn_the_same_whatever_was_imported(make_plugin):
    """An argument declared as a plain Hypothesis strategy: the walk samples a pool of values
    Hypothesis drew once, seeded."""
    from hypothesis import strategies as st

    from fuzzer._args import Pool

    strategy = st.integers(0, 2**20) | st.binary(max_size=4)
    first = Pool.draw(strategy, seed=3).values
    _import_constants(make_plugin)
    assert Pool.draw(strategy, seed=3).values == first


@pytest.mark.parametrize("engine", ["walk", "hypothesis"])
def test_a_seeded_search_gives_the_same_examples_in_a_fresh_process(engine):
    """The suite's process has imported far more than a fresh one."""
    script = ("import json, sys; sys.path[:0] = json.loads(sys.argv[1]); from test_reproducible"
              " import _examples; print(json.dumps(_examples('v6.12-fixed', sys.argv[2], 3)))")
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "FUZZER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps([here, *sys.path]), engine],
                          capture_output=True, text=True, env=env, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == _examples("v6.12-fixed", engine, 3)


def test_the_hypothesis_engine_ignores_the_callers_hypothesis_profile():
    """A pytest user's profile (derandomized, few examples, short runs, a deadline, health
    checks on) does not reach the engine's runs."""
    from hypothesis import Phase, settings

    first = _examples("v6.12-fixed", "hypothesis", 3)
    current = settings.get_current_profile_name()
    settings.register_profile("test_reproducible", derandomize=True, max_examples=3,
                              stateful_step_count=2, deadline=1, phases=[Phase.generate],
                              report_multiple_bugs=True)
    settings.load_profile("test_reproducible")
    try:
        again = _examples("v6.12-fixed", "hypothesis", 3)
    finally:
        settings.load_profile(current)
    assert again == first

