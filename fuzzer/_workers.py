"""``run --workers N``: N campaign processes on one machine, merged into one outcome.

Each worker rebuilds the model from the same plugins and options, runs
:func:`run_campaign` with its own derived seed and a share of the example
budget (the time budget is wall-clock, so each gets all of it), and shares the
corpus directory (entries are written atomically and named by content) and
the example database (a directory, safe across processes, or Redis) with the
others. Workers report their progress to the parent, which prints one
progress line and merges their outcomes: the first worker to find a failure
stops the others; of the workers that found one, the lowest-numbered one's
reproduction is reported, after the parent replayed it on its own model.
Ctrl-C stops every worker; each reports what it had.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import queue as queue_module
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from fuzzer._campaign import Outcome, replay, run_campaign
from fuzzer._coverage import CoverageSession
from fuzzer._errors import KernelFailure, Signature
from fuzzer._model import Model
from fuzzer._statemachine import Stats
from fuzzer._steps import Step

#: Seconds the parent waits for workers to report after Ctrl-C before ending them.
GRACE = 20.0


@attrs.frozen
class WorkerSpec:
    """What one worker process needs; picklable, so spawned processes work too."""

    index: int
    plugins: tuple[str, ...]
    """The ``-p`` values, loaded as the parent loaded them."""
    args: argparse.Namespace = attrs.field(eq=False)
    """The parsed ``run`` options (the model is rebuilt from them)."""
    seed: int
    max_examples: int
    time_budget: float
    database: str | None
    guide: bool
    coverage_dir: str | None
    coverage_include: tuple[str, ...]
    engine: str = "walk"


def worker_seed(seed: int, index: int) -> int:
    """Worker 0 keeps the seed; the others get distinct ones derived from it."""
    return seed if index == 0 else (seed + index * 0x9E37_79B9) & 0xFFFF_FFFF


def split_examples(max_examples: int, workers: int) -> list[int]:
    """Each worker's share of ``max_examples`` (0, no limit, stays 0 for all)."""
    if not max_examples:
        return [0] * workers
    share, extra = divmod(max_examples, workers)
    return [max(share + (1 if i < extra else 0), 1) for i in range(workers)]


def _worker(spec: WorkerSpec, messages: Any, stop: Any) -> None:
    """A worker process's body: every result goes to ``messages``, never to stdout."""
    from fuzzer._cli import make_run_config
    from fuzzer._database import open_database
    from fuzzer._plugins import FuzzerPluginManager

    i = spec.index
    session: CoverageSession | None = None
    try:
        pm = FuzzerPluginManager()
        pm.load(list(spec.plugins))
        model = Model.build(pm, make_run_config(pm, spec.args))
        database = open_database(spec.database) if spec.database is not None else None
        if spec.coverage_dir is not None:
            session = CoverageSession(spec.coverage_dir, list(spec.coverage_include), parallel=True)
            session.start()

        def progress(stats: Stats, elapsed: float) -> None:
            messages.put(("progress", i, _snapshot(stats)))

        def found(exc: BaseException) -> None:
            text = exc.message if isinstance(exc, KernelFailure) else str(exc)
            messages.put(("found", i, text))

        outcome = run_campaign(model, seed=spec.seed, max_examples=spec.max_examples,
                               time_budget=spec.time_budget, progress=progress,
                               on_first_failure=found, database=database, guide=spec.guide,
                               should_stop=stop.is_set, engine=spec.engine)
        if session is not None:
            session.stop()
            session = None
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the result must get out
        messages.put(("done", i, _result(outcome)))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        messages.put(("done", i, {"status": "interrupted", "examples": 0, "emulated_steps": 0}))
    except BaseException as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        messages.put(("done", i, {"status": "error", "error": _portable(exc),
                                  "traceback": traceback.format_exc()}))
    finally:
        if session is not None:
            session.stop()


def _snapshot(stats: Stats) -> dict[str, Any]:
    return {"examples": stats.examples, "emulated_steps": stats.emulated_steps,
            "failures_seen": stats.failures_seen, "signatures": set(stats.signatures),
            "routines": set(stats.routines)}


def _result(outcome: Outcome) -> dict[str, Any]:
    failure = outcome.failure
    return {
        "status": outcome.status,
        "signature": failure.signature if failure is not None else None,
        "steps": [s.to_json() for s in outcome.steps],
        "error": _portable(outcome.error) if outcome.error is not None else None,
        "examples": outcome.examples, "emulated_steps": outcome.emulated_steps,
        "time_to_first_failure": outcome.time_to_first_failure,
        "examples_to_first_failure": outcome.examples_to_first_failure,
        "routines": set(outcome.routines), "distinct_failures": outcome.distinct_failures,
    }


def _portable(exc: BaseException | None) -> BaseException | None:
    """``exc`` if it survives pickling (PluginError does), else a RuntimeError with its traceback."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        text = "".join(traceback.format_exception(exc))
        return RuntimeError(f"{type(exc).__name__} in a worker process:\n{text}")
    return exc


class _Found(Exception):
    """A worker's first failure, as the progress line shows it."""


def run_workers(
    model: Model,
    specs: Sequence[WorkerSpec],
    *,
    progress: Callable[[Stats, float], None] | None = None,
    on_first_failure: Callable[[BaseException], None] | None = None,
) -> Outcome:
    """Run one process per spec; merge their outcomes into one, as :func:`run_campaign` returns."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx: Any = multiprocessing.get_context(method)
    messages = ctx.Queue()
    stop = ctx.Event()
    started = time.monotonic()
    procs = [ctx.Process(target=_worker, args=(spec, messages, stop), name=f"fuzzer-worker-{spec.index}",
                         daemon=True) for spec in specs]
    for p in procs:
        p.start()
    latest: dict[int, dict[str, Any]] = {}
    results: dict[int, dict[str, Any]] = {}
    first_at: float | None = None
    interrupted = False
    deadline: float | None = None
    try:
        while len(results) < len(procs):
            try:
                try:
                    kind, i, payload = messages.get(timeout=0.2)
                except queue_module.Empty:
                    for spec, p in zip(specs, procs, strict=True):
                        if spec.index not in results and not p.is_alive() and p.exitcode is not None:
                            # Died without a word (killed, out of memory): say so, do not hang.
                            time.sleep(0.2)  # its last message may still be in the pipe
                            if messages.empty():
                                results[spec.index] = {"status": "error", "error": RuntimeError(
                                    f"worker {spec.index} died (exit code {p.exitcode})")}
                    if deadline is not None and time.monotonic() > deadline:
                        break
                    continue
                if kind == "progress":
                    latest[i] = payload
                    if progress is not None:
                        progress(_merge_stats(latest.values()), time.monotonic() - started)
                elif kind == "found":
                    if first_at is None:
                        first_at = time.monotonic() - started
                        stop.set()
                        if on_first_failure is not None:
                            on_first_failure(_Found(f"worker {i}: {payload}"))
                else:
                    results[i] = payload
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting
                    break
                interrupted = True
                stop.set()
                deadline = time.monotonic() + GRACE
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=0 if interrupted else 5)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return _merge(model, specs, results, latest, time.monotonic() - started, first_at, interrupted)


def _merge_stats(snapshots: Any) -> Stats:
    stats = Stats()
    for snap in snapshots:
        stats.examples += snap["examples"]
        stats.emulated_steps += snap["emulated_steps"]
        stats.failures_seen += snap["failures_seen"]
        stats.signatures |= snap["signatures"]
        stats.routines |= snap["routines"]
    return stats


def _merge(model: Model, specs: Sequence[WorkerSpec], results: dict[int, dict[str, Any]],
           latest: dict[int, dict[str, Any]], duration: float, first_at: float | None,
           interrupted: bool) -> Outcome:
    examples = steps = 0
    routines: set[str] = set()
    signatures: set[Signature] = set()
    for spec in specs:
        r = results.get(spec.index) or latest.get(spec.index) or {}
        examples += r.get("examples", 0)
        steps += r.get("emulated_steps", 0)
        routines |= r.get("routines", set())
        snap = latest.get(spec.index, {})
        signatures |= snap.get("signatures", set())
        if r.get("signature") is not None:
            signatures.add(r["signature"])
    reached, distinct = frozenset(routines), len(signatures)
    ordered = [(spec.index, results[spec.index]) for spec in specs if spec.index in results]
    errors = [r for _, r in ordered if r["status"] == "error"]
    found = [(i, r) for i, r in ordered if r.get("signature") is not None and r.get("steps")]
    failure: KernelFailure | None = None
    repro: tuple[Step, ...] = ()
    chosen: dict[str, Any] = {}
    if found:
        index, chosen = found[0]  # the lowest-numbered worker's, whoever was first
        worker_steps = [Step.from_json(s) for s in chosen["steps"]]
        _, failure = replay(model, worker_steps)
        if failure is None or failure.signature != chosen["signature"]:
            raise RuntimeError(f"worker {index}'s reproduction ({chosen['signature']}) did not replay"
                               " to the same failure in the parent; the model is not deterministic")
        repro = tuple(failure.steps or worker_steps)
    if interrupted or (not found and any(r["status"] == "interrupted" for _, r in ordered)):
        return Outcome("interrupted", failure, repro, None, examples, steps, duration, first_at,
                       routines=reached, distinct_failures=distinct)
    if failure is not None and chosen.get("status") == "failed":
        return Outcome("failed", failure, repro, None, examples, steps, duration, first_at,
                       chosen.get("examples_to_first_failure"), routines=reached,
                       distinct_failures=distinct)
    if errors:
        error = errors[0].get("error") or RuntimeError(errors[0].get("traceback", "worker error"))
        return Outcome("error", None, (), error, examples, steps, duration, routines=reached)
    if failure is not None:  # found, but its worker was stopped before it finished shrinking
        return Outcome("interrupted", failure, repro, None, examples, steps, duration, first_at,
                       routines=reached, distinct_failures=distinct)
    return Outcome("passed", None, (), None, examples, steps, duration, routines=reached,
                   distinct_failures=distinct)
