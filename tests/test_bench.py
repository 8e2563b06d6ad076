"""bench/run.py keeps running: its pieces on a tiny budget (structure, never speed)."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
from test_injected_mistakes import CONFIG, KERNEL, MMU

from fuzzer_plugins.mistakes import MISTAKES

RUN = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_knows_every_mistake(bench):
    assert bench.KERNEL == KERNEL
    assert bench.MMU == MMU
    assert {k: tuple(a for c in v for a in ("--config", c)) for k, v in bench.CONFIG.items()} == CONFIG
    assert set(bench.MINIMAL) == {"seed crash", *MISTAKES}


def test_walk_samples_every_operation_argument(bench):
    model = bench.model_for("v6.12")
    rng = random.Random(0)
    for op in model.operations:
        for strategy in op.args.values():
            bench.sampler(strategy)(rng)


def test_walk_finds_the_seed_crash(bench):
    out = bench.random_walk(bench.model_for("next-20221215"), seed=1, time_budget=5)
    assert out["found"] and out["length"] == 1


def test_walk_runs_clean_on_v612(bench):
    out = bench.random_walk(bench.model_for("v6.12"), seed=1, time_budget=0.3)
    assert not out["found"] and out["examples"] >= 1


def test_run_writes_the_table_and_json(bench, tmp_path, capsys):
    path = tmp_path / "results.json"
    bench.main(["--seeds", "1", "--limit", "2", "--seconds", "0.2", "--no-workers",
                "--only", "seed crash", "--json", str(path)])
    text = capsys.readouterr().out
    assert "| raw emulator" in text and "| seed crash found" in text
    data = json.loads(path.read_text())
    assert set(data["find"]["seed crash"]) == {"guided", "fuzzer", "hypothesis", "walk"}
    assert data["find"]["seed crash"]["fuzzer"]["found"] == 1
    assert data["raw"]["steps_per_s"] > 0 and data["fuzzer"]["examples"] > 0
