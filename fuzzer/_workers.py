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

import multiprocessing
import pickle
import queue as queue_module
import signal
import time
import traceback
from collections.abc import Sequence
from typing import Any

import attrs

from fuzzer._coverage import CoverageSession
from fuzzer._engine.campaign import run_campaign
from fuzzer._engine.records import Finding, Outcome, StatsSnapshot, Status
from fuzzer._engine.replay import replay
from fuzzer._engine.search import Events
from fuzzer._errors import Signature
from fuzzer._model import Model
from fuzzer._settings import Settings
from fuzzer._steps import Step

#: Seconds the parent waits for workers to report after Ctrl-C before ending them.
GRACE = 20.0


@attrs.frozen
class WorkerSpec:
    """What one worker process needs; picklable, so spawned processes work too."""

    index: int
    settings: Settings
    """The run's settings (the model is rebuilt from them, with the same ``-p`` plugins)."""
    seed: int
    max_examples: int
    coverage_include: tuple[str, ...] = ()
    """coverage.py's ``include`` patterns with ``--coverage`` (the parent's model's files)."""
    known: frozenset[Signature] = frozenset()
    """Signatures of known findings to count and search past."""


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
    from fuzzer._database import open_database
    from fuzzer._plugins import FuzzerPluginManager

    i, settings = spec.index, spec.settings
    session: CoverageSession | None = None
    try:
        pm = FuzzerPluginManager()
        pm.load(list(settings.plugins))
        pm.call("fuzzer_configure", config=settings.run)
        model = Model.build(pm, settings.run)
        database = open_database(settings.database) if settings.database is not None else None
        if settings.coverage:
            session = CoverageSession(settings.coverage_dir, list(spec.coverage_include), parallel=True)
            session.start()
        events = Events(progress=lambda stats, elapsed: messages.put(("progress", i, stats)),
                        failure_found=lambda caught: messages.put(("found", i, _portable(caught))))
        outcome = run_campaign(model, seed=spec.seed, max_examples=spec.max_examples,
                               time_budget=settings.time_budget, events=events, database=database,
                               guide=settings.guide, should_stop=stop.is_set, engine=settings.engine,
                               scheduler=settings.scheduler, interleave=settings.interleave,
                               known=spec.known)
        if session is not None:
            session.stop()
            session = None
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the result must get out
        messages.put(("done", i, _result(outcome)))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        messages.put(("done", i, {"status": "interrupted"}))
    except BaseException as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        messages.put(("done", i, {"status": "error", "error": _portable(exc),
                                  "traceback": traceback.format_exc()}))
    finally:
        if session is not None:
            session.stop()


def _result(outcome: Outcome) -> dict[str, Any]:
    failure = outcome.failure
    return {
        "status": outcome.status.value,
        "signature": failure.signature if failure is not None else None,
        "steps": [s.to_json() for s in outcome.steps],
        "error": _portable(outcome.error) if outcome.error is not None else None,
        "stats": outcome.stats,
        "time_to_first_failure": outcome.time_to_first_failure,
        "examples_to_first_failure": outcome.examples_to_first_failure,
    }


def _portable(exc: Any) -> Any:
    """``exc`` if it survives pickling (PluginError does), else a RuntimeError with its traceback."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        text = "".join(traceback.format_exception(exc))
        return RuntimeError(f"{type(exc).__name__} in a worker process:\n{text}")
    return exc


@attrs.define
class _Parent:
    """The parent's view of its workers while they run."""

    specs: Sequence[WorkerSpec]
    events: Events
    started: float = attrs.Factory(time.monotonic)
    latest: dict[int, StatsSnapshot] = attrs.Factory(dict)
    results: dict[int, dict[str, Any]] = attrs.Factory(dict)
    first_at: float | None = None
    interrupted: bool = False
    deadline: float | None = None

    def receive(self, kind: str, i: int, payload: Any, stop: Any) -> None:
        if kind == "progress":
            self.latest[i] = payload
            if self.events.progress is not None:
                merged = StatsSnapshot.merge(self.latest.values())
                self.events.progress(merged, time.monotonic() - self.started)
        elif kind == "found":
            if self.first_at is None:
                self.first_at = time.monotonic() - self.started
                stop.set()
                if self.events.failure_found is not None:
                    self.events.failure_found(payload, i)  # type: ignore[call-arg]
        else:
            self.results[i] = payload

    def check_dead(self, procs: Sequence[Any], messages: Any) -> None:
        for spec, p in zip(self.specs, procs, strict=True):
            if spec.index not in self.results and not p.is_alive() and p.exitcode is not None:
                # Died without a word (killed, out of memory): say so, do not hang.
                time.sleep(0.2)  # its last message may still be in the pipe
                if messages.empty():
                    self.results[spec.index] = {"status": "error", "error": RuntimeError(
                        f"worker {spec.index} died (exit code {p.exitcode})")}


def run_workers(model: Model, specs: Sequence[WorkerSpec], *, events: Events | None = None) -> Outcome:
    """Run one process per spec; merge their outcomes into one, as :func:`run_campaign` returns."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx: Any = multiprocessing.get_context(method)
    messages = ctx.Queue()
    stop = ctx.Event()
    parent = _Parent(specs, events if events is not None else Events())
    procs = [ctx.Process(target=_worker, args=(spec, messages, stop), name=f"fuzzer-worker-{spec.index}",
                         daemon=True) for spec in specs]
    for p in procs:
        p.start()
    try:
        _wait(parent, procs, messages, stop)
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=0 if parent.interrupted else 5)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return _merge(model, parent, time.monotonic() - parent.started)


def _wait(parent: _Parent, procs: Sequence[Any], messages: Any, stop: Any) -> None:
    while len(parent.results) < len(procs):
        try:
            try:
                kind, i, payload = messages.get(timeout=0.2)
            except queue_module.Empty:
                parent.check_dead(procs, messages)
                if parent.deadline is not None and time.monotonic() > parent.deadline:
                    return
                continue
            parent.receive(kind, i, payload, stop)
        except KeyboardInterrupt:
            if parent.interrupted:  # a second Ctrl-C: stop waiting
                return
            parent.interrupted = True
            stop.set()
            parent.deadline = time.monotonic() + GRACE


def _merge(model: Model, parent: _Parent, duration: float) -> Outcome:
    specs, results = parent.specs, parent.results
    snaps = [results.get(s.index, {}).get("stats") or parent.latest.get(s.index) or StatsSnapshot()
             for s in specs]
    found_sigs = {r["signature"] for r in results.values() if r.get("signature") is not None}
    stats = StatsSnapshot.merge(snaps)
    stats = attrs.evolve(stats, signatures=stats.signatures | found_sigs)
    ordered = [(spec.index, results[spec.index]) for spec in specs if spec.index in results]
    found = [(i, r) for i, r in ordered if r.get("signature") is not None and r.get("steps")]
    failure: Finding | None = None
    chosen: dict[str, Any] = {}
    if found:
        index, chosen = found[0]  # the lowest-numbered worker's, whoever was first
        failure = _replayed(model, index, chosen)
        if parent.events.failure_shrunk is not None and chosen.get("status") == "failed":
            parent.events.failure_shrunk(failure)
    common: dict[str, Any] = {"stats": stats, "duration": duration}
    repro = failure.steps if failure is not None else ()
    if parent.interrupted or (not found and any(r["status"] == "interrupted" for _, r in ordered)):
        return Outcome(status=Status.INTERRUPTED, failure=failure, steps=repro,
                       time_to_first_failure=parent.first_at, **common)
    if failure is not None and chosen.get("status") == "failed":
        return Outcome(status=Status.FAILED, failure=failure, steps=repro,
                       time_to_first_failure=parent.first_at,
                       examples_to_first_failure=chosen.get("examples_to_first_failure"), **common)
    errors = [r for _, r in ordered if r["status"] == "error"]
    if errors:
        error = errors[0].get("error") or RuntimeError(errors[0].get("traceback", "worker error"))
        return Outcome(status=Status.ERROR, error=error, **common)
    if failure is not None:  # found, but its worker was stopped before it finished shrinking
        return Outcome(status=Status.INTERRUPTED, failure=failure, steps=repro,
                       time_to_first_failure=parent.first_at, **common)
    return Outcome(status=Status.PASSED, **common)


def _replayed(model: Model, index: int, chosen: dict[str, Any]) -> Finding:
    """A worker's reproduction, replayed on the parent's own model: the same failure, or the
    model is not deterministic."""
    worker_steps = [Step.from_json(s) for s in chosen["steps"]]
    _, failure = replay(model, worker_steps)
    if not isinstance(failure, Finding) or failure.signature != chosen["signature"]:
        raise RuntimeError(f"worker {index}'s reproduction ({chosen['signature']}) did not replay"
                           " to the same failure in the parent; the model is not deterministic")
    return failure
