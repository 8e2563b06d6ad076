"""Campaigns on a Dask cluster: ``run --workers N`` (a LocalCluster) and ``run --scheduler ADDRESS``.

Dask's ``distributed`` is an optional extra (``pip install
'ppc-kernel-fuzzer[cluster]'``): only this module imports it, and only a run
with several workers or a scheduler imports this module.

**Shards.** The campaign is cut into shards: shard ``i`` runs the search
(:func:`fuzzer._engine.run_campaign`, unshrunk) from its own seed --
shard 0 from ``--seed`` itself, shard ``i`` from :func:`shard_seed` -- for at
most :data:`SHARD_EXAMPLES` examples. The client keeps twice as many shards
submitted as the cluster has worker threads, so a worker takes the next one as
soon as it frees up and a slow worker holds back only its own shard; a lost
worker's shard is re-run by Dask on another worker. A shard is
``run --seed S --max-examples N`` of one process, so each finding names its
shard's seed and example: it reproduces alone.

**Stopping.** The client owns the budget and the stop: it sets a Dask
``Event`` when a shard returns a failure, when the time budget is spent, or on
Ctrl-C; every shard polls it between examples (every 0.2 s; between batches
with ``--engine hypothesis``) and returns what it ran.

**Failures.** Each distinct failure the shards returned is shrunk once, by
one task on the cluster (:func:`shrink_failure`), then replayed and verified in
the client, saved to the example database by the client, and reported.

**Progress.** Shards publish their statistics with ``Worker.log_event`` on the
campaign's topic; the client subscribes to it and sums the latest figures of
each running shard with the results of finished ones. With ``--coverage``
each shard measures itself with coverage.py and returns its data, which the
client combines: nothing but the cluster's connections is shared.

**Workers rebuild the model** from the run's :class:`~fuzzer._settings.Settings`
(:class:`CampaignSpec`: the ``-p`` plugins and the checked model configuration),
once per worker process (:func:`worker_model`); a worker whose model differs
from the client's (other plugins installed) is a usage error, not a finding.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pickle
import signal
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import attrs
import dask.config
import distributed
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase, ReadOnlyDatabase

from fuzzer._engine.campaign import SHRINK_BUDGET, run_campaign
from fuzzer._engine.records import Finding, Outcome, StatsSnapshot, Status
from fuzzer._engine.replay import replay
from fuzzer._engine.search import Events
from fuzzer._engine.shrink import Shrinker
from fuzzer._engine.store import database_key, encode, steps_key
from fuzzer._errors import PluginError, Signature, UsageError
from fuzzer._model import Model
from fuzzer._settings import Settings
from fuzzer._steps import Step

#: Examples per shard (about a second or two of one worker at the walk's speed).
SHARD_EXAMPLES = 250
#: Shards submitted per worker thread: one running, one waiting for it.
SHARDS_PER_THREAD = 2
#: Seconds between the client's looks at its shards (and the time budget).
TICK = 0.05
#: Seconds between looks at the scheduler's worker list (to notice lost workers).
WORKER_CHECK = 1.0
#: Seconds the client waits for running shards to stop before giving up on them.
GRACE = 20.0
#: Seconds to reach a scheduler (``--scheduler``), and to wait for its first workers.
CONNECT_TIMEOUT = 10.0
WAIT_WORKERS = 30.0
#: Dask's usual dashboard port; another free one is taken if it is in use.
DASHBOARD = ":8787"
#: Seconds to wait for the dashboard to answer (to print its link only if it does).
DASHBOARD_TIMEOUT = 2.0


def shard_seed(seed: int, index: int) -> int:
    """Shard 0 keeps the seed; the others get distinct ones derived from it."""
    return seed if index == 0 else (seed + index * 0x9E37_79B9) & 0xFFFF_FFFF


# ---------------------------------------------------------------------------
# What travels to the workers and back: plain, picklable values
# ---------------------------------------------------------------------------


@attrs.frozen
class CampaignSpec:
    """What a worker needs to rebuild the client's model and run its shards."""

    settings: Settings
    """The run's settings: the model is rebuilt from their ``-p`` plugins and configuration."""
    coverage: tuple[str, ...] | None = None
    """coverage.py ``include`` patterns when ``--coverage`` measures; None: off."""
    known: frozenset[Signature] = frozenset()
    """Signatures of known findings: counted, and the search goes on."""
    campaign: str = attrs.Factory(lambda: uuid.uuid4().hex)
    """This campaign's name on the cluster: its stop Event and its progress topic."""

    @property
    def stop_event(self) -> str:
        return f"fuzzer-stop-{self.campaign}"

    @property
    def topic(self) -> str:
        return f"fuzzer-progress-{self.campaign}"


@attrs.frozen
class Shard:
    """A slice of the campaign: ``run --seed seed --max-examples max_examples`` of one process."""

    index: int
    seed: int
    max_examples: int


@attrs.frozen
class Found:
    """A shard's first failure, unshrunk (``finding.steps``: the failing example), and where
    it was found."""

    finding: Finding
    shard: Shard
    example: int | None
    """Which of the shard's examples failed (1 = its first)."""
    worker: str

    @property
    def signature(self) -> Signature:
        return self.finding.signature

    @property
    def message(self) -> str:
        return self.finding.message

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.finding.steps


@attrs.frozen
class ShardResult:
    """What one shard ran, as its worker returns it."""

    shard: Shard
    worker: str
    model: bytes
    """The worker's model's identity (:func:`database_key`), checked against the client's."""
    status: Status
    """``passed`` (its examples ran, or it was stopped), ``failed`` or ``error``."""
    stats: StatsSnapshot = attrs.Factory(StatsSnapshot)
    found: Found | None = None
    error: BaseException | None = None
    coverage: bytes | None = None
    """coverage.py's data for this shard (``CoverageData.dumps``)."""


# ---------------------------------------------------------------------------
# The worker side
# ---------------------------------------------------------------------------

_MODELS: dict[str, Model] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(spec: CampaignSpec) -> Model:
    """The model ``spec`` describes, built once per worker process: the settings' plugins
    loaded, every plugin's ``fuzzer_configure`` run on the settings' configuration, going
    on after the known findings' WARNINGs the campaign counts (:meth:`Model.searching`)."""
    key = repr((spec.settings.plugins, spec.settings.run, sorted(map(str, spec.known))))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _build_model(spec)
        return _MODELS[key]


def _build_model(spec: CampaignSpec) -> Model:
    from fuzzer._plugins import FuzzerPluginManager

    settings = spec.settings
    pm = FuzzerPluginManager()
    pm.load(list(settings.plugins))
    pm.call("fuzzer_configure", config=settings.run)
    return Model.build(pm, settings.run).searching(spec.known)


def prepare_worker(spec: CampaignSpec) -> bytes:
    """Build the model before the campaign starts (``Client.run``); return its identity."""
    return database_key(worker_model(spec))


def run_shard(spec: CampaignSpec, shard: Shard) -> ShardResult:
    """A worker's task: one shard of the campaign, unshrunk; returns plain data, never raises."""
    worker = distributed.get_worker()
    try:
        model = worker_model(spec)
    except BaseException as exc:
        return ShardResult(shard, worker.address, b"", Status.ERROR, error=_portable(exc))
    ident = database_key(model)
    stop = distributed.Event(spec.stop_event)
    if stop.is_set():  # queued before the campaign ended: nothing to run
        return ShardResult(shard, worker.address, ident, Status.PASSED)

    def progress(stats: StatsSnapshot, elapsed: float) -> None:
        worker.log_event(spec.topic, {"shard": shard.index, "worker": worker.address,
                                      "examples": stats.examples, "steps": stats.emulated_steps,
                                      "failures": stats.failures_seen, "routines": sorted(stats.routines)})

    settings = spec.settings
    database: ExampleDatabase | None = None
    if settings.database is not None and shard.index == 0:
        database = ReadOnlyDatabase(_open_database(settings.database))
    cov = _start_coverage(spec.coverage)
    try:
        outcome = run_campaign(model, seed=shard.seed, max_examples=shard.max_examples, time_budget=0,
                               events=Events(progress=progress), database=database, guide=settings.guide,
                               should_stop=stop.is_set, shrink=False, engine=settings.engine,
                               scheduler=settings.cpu_scheduler, interleave=settings.interleave,
                               known=spec.known)
    except BaseException as exc:
        return ShardResult(shard, worker.address, ident, Status.ERROR, error=_portable(exc))
    finally:
        data = _stop_coverage(cov)
    return _shard_result(shard, worker.address, ident, outcome, data)


def _shard_result(shard: Shard, worker: str, ident: bytes, outcome: Outcome,
                  coverage: bytes | None) -> ShardResult:
    found = None
    if outcome.status is Status.FAILED and outcome.failure is not None:
        found = Found(outcome.failure, shard, outcome.examples_to_first_failure, worker)
    status = outcome.status if outcome.status in (Status.FAILED, Status.ERROR) else Status.PASSED
    return ShardResult(shard, worker, ident, status, outcome.stats, found, _portable(outcome.error),
                       coverage)


def shrink_failure(spec: CampaignSpec, found: Found) -> tuple[tuple[Step, ...], StatsSnapshot]:
    """A worker's task: shrink one failure; its smallest steps and what the shrinking ran."""
    model = worker_model(spec)
    shrinker = Shrinker(model, found.steps, found.signature, deadline=time.monotonic() + SHRINK_BUDGET,
                        seed=found.shard.seed)
    best = shrinker.shrink()
    return best, StatsSnapshot(emulated_steps=shrinker.emulated_steps, shrink_runs=shrinker.runs,
                               shrink_cache_hits=shrinker.cache_hits)


def _open_database(spec: str) -> ExampleDatabase:
    from fuzzer._database import open_database

    return open_database(spec)


def _start_coverage(include: tuple[str, ...] | None) -> Any:
    if include is None:
        return None
    import coverage

    cov = coverage.Coverage(data_file=None, include=list(include), branch=True, messages=False,
                            config_file=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cov.start()
    return cov


def _stop_coverage(cov: Any) -> bytes | None:
    if cov is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cov.stop()
        data: bytes = cov.get_data().dumps()
    return data


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


# ---------------------------------------------------------------------------
# The cluster: a LocalCluster of our own, or an existing one
# ---------------------------------------------------------------------------


@attrs.frozen
class Cluster:
    """A connected client, and what the header says about the cluster."""

    client: distributed.Client
    name: str
    """``LocalCluster`` or the scheduler's address."""
    workers: int
    threads: int
    dashboard: str | None
    started_in: float
    """Seconds to start (or reach) the cluster and build the model on its workers."""
    addresses: frozenset[str] = frozenset()
    """The workers there when the campaign starts."""

    def describe(self) -> str:
        threads = (" (processes, 1 thread each)" if self.threads == self.workers
                   else f", {self.threads} threads")
        return (f"{self.name}, {self.workers} worker{'s' if self.workers != 1 else ''}{threads};"
                f" ready in {self.started_in:.1f}s (not counted in the campaign's time)")


@contextlib.contextmanager
def connect(spec: CampaignSpec, model: Model, *, workers: int, scheduler: str | None) -> Iterator[Cluster]:
    """Start a LocalCluster of ``workers`` processes, or reach ``scheduler``; close it after."""
    started = time.monotonic()
    local: distributed.LocalCluster | None = None
    client: distributed.Client | None = None
    try:
        if scheduler is None:
            local = _local_cluster(workers)
            client = distributed.Client(local, set_as_default=False)
            name = "LocalCluster"
        else:
            client = _remote_client(scheduler)
            name = str(_info(client).get("address", scheduler))
            _wait_for_workers(client, scheduler, max(workers, 1))
        _check_models(client, spec, model, scheduler or "--workers")
        info = _info(client)
        nworkers = len(info["workers"])
        threads = sum(w.get("nthreads", 1) for w in info["workers"].values())
        dashboard = _dashboard(client) if "dashboard" in info.get("services", {}) else None
        yield Cluster(client, name, nworkers, threads, dashboard, time.monotonic() - started,
                      frozenset(info["workers"]))
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
        if local is not None:
            with contextlib.suppress(Exception):
                local.close(timeout=10)


def _local_cluster(workers: int) -> distributed.LocalCluster:
    """``workers`` processes of one thread each; they ignore the terminal's Ctrl-C (the client
    stops them), and Dask's own log lines stay out of the report.

    A Ctrl-C pressed during the second or so the cluster takes to start is lost (the
    parent ignores SIGINT then, which is how the workers come to ignore it: a blocked
    signal is not enough, as the threads Dask starts meanwhile do not block it); a second
    Ctrl-C stops the campaign."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        # "port 8787 is in use": another free one is taken. Dask's statistical profiler samples
        # the task thread's stack every 10 ms: on the emulator's deep stacks, ~20% of a worker.
        with warnings.catch_warnings(), dask.config.set({"distributed.worker.profile.enabled": False}):
            warnings.simplefilter("ignore")
            return distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=DASHBOARD if _has_bokeh() else ":0",
                # CRITICAL: a worker that loses the scheduler as we close the cluster logs an
                # ERROR with a traceback, noise under the report; task errors come back through
                # their futures.
                silence_logs=logging.CRITICAL)
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


def _info(client: distributed.Client) -> dict[str, Any]:
    """The scheduler's identity, every worker included (newer Dask lists 5 unless told)."""
    try:
        return dict(client.scheduler_info(n_workers=-1))
    except TypeError:  # a Dask before 2025: every worker, always
        return dict(client.scheduler_info())


def _dashboard(client: distributed.Client) -> str | None:
    """Dask's dashboard link if a dashboard answers there (a scheduler without bokeh serves a
    page saying it needs it; one started with --no-dashboard, nothing)."""
    import urllib.request

    link = str(client.dashboard_link)
    try:
        with urllib.request.urlopen(link, timeout=DASHBOARD_TIMEOUT) as page:
            return None if b"needs bokeh" in page.read(1000) else link
    except (OSError, ValueError):
        return None


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def _remote_client(scheduler: str) -> distributed.Client:
    """A client of the scheduler at ``scheduler`` (an address, or a scheduler file)."""
    kwargs: dict[str, Any] = {"timeout": CONNECT_TIMEOUT, "set_as_default": False}
    if os.path.isfile(scheduler):
        kwargs["scheduler_file"] = scheduler
    elif _is_address(scheduler):
        kwargs["address"] = scheduler
    else:
        raise UsageError(f"--scheduler {scheduler}: expected tcp://HOST:PORT or a scheduler file"
                         " (dask scheduler --scheduler-file PATH)")
    try:
        return distributed.Client(**kwargs)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--scheduler {scheduler}: cannot reach the Dask scheduler: {reason}") from None


def _is_address(text: str) -> bool:
    """``tcp://HOST:PORT`` (or ``tls://``, ``ws://``, ``wss://``, ``ucx://``; ``HOST:PORT`` is tcp)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        return False
    return parts.scheme in ("tcp", "tls", "ws", "wss", "ucx") and bool(parts.hostname) and port is not None


def _wait_for_workers(client: distributed.Client, scheduler: str, n: int) -> None:
    try:
        client.wait_for_workers(n, timeout=WAIT_WORKERS)
    except (TimeoutError, OSError):
        info = _info(client)
        raise UsageError(f"--scheduler {scheduler}: {len(info['workers'])} worker(s) after"
                         f" {WAIT_WORKERS:g}s, {n} wanted; start them with:"
                         f" dask worker {info.get('address', scheduler)} --nthreads 1") from None


def _check_models(client: distributed.Client, spec: CampaignSpec, model: Model, where: str) -> None:
    """Build the model on every worker now; a worker that cannot (a plugin it lacks), or builds
    another, is a usage error. A worker lost meanwhile is skipped: the campaign copes."""
    want = database_key(model)
    got = client.run(prepare_worker, spec, on_error="return")
    for address, ident in got.items():
        if isinstance(ident, (UsageError, ImportError)):
            raise UsageError(f"worker {address} of {where} cannot build the model: {ident}")
        if isinstance(ident, PluginError):
            raise ident
        if isinstance(ident, BaseException):
            continue  # gone (killed, restarting): its shards go to the others
        if ident != want:
            raise UsageError(f"worker {address} builds another model than this client (other plugins"
                             " or versions installed there?): install the same ones on every worker")


# ---------------------------------------------------------------------------
# The campaign, as the client runs it
# ---------------------------------------------------------------------------


@attrs.frozen
class Reported:
    """A failure the campaign reports: shrunk once, verified in the client."""

    failure: Finding
    """The verified failure; ``failure.steps`` is its (minimal) reproduction."""
    found: Found
    shrunk: bool = True

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.failure.steps

    def where(self, database: str | None = None) -> str:
        """Which shard found it, and the command that finds it again alone (shard 0 replays
        the example ``database`` first, as the run alone does only with it)."""
        f = self.found
        example = f" at its example {f.example}" if f.example else ""
        db = f" --db {database}" if database is not None and f.shard.index == 0 else ""
        return (f"found by shard {f.shard.index} (seed {f.shard.seed}) on {f.worker}{example};"
                f" alone: the same run options with --seed {f.shard.seed}"
                f" --max-examples {f.example or f.shard.max_examples}{db} and no --workers/--scheduler")


@attrs.frozen
class ClusterOutcome:
    """A cluster campaign's outcome: :class:`Outcome` (its first finding, the others in
    ``more_failures``), and where each was found."""

    outcome: Outcome
    findings: tuple[Reported, ...] = ()
    """Every distinct failure the shards found, the first first (``outcome.failure``)."""
    shards: int = 0
    workers_lost: tuple[str, ...] = ()
    coverage: tuple[bytes, ...] = ()
    """Each finished shard's coverage.py data (``CoverageData.dumps``)."""
    database: str | None = None
    """The example database shard 0 replayed first."""

    def notes(self) -> list[str]:
        lines = [f"shards: {self.shards} of up to {SHARD_EXAMPLES} examples; shard i's seed is"
                 " --seed + i*0x9E3779B9 mod 2**32 (shard 0: --seed itself)"]
        lines += [f"{i}. {f.failure.signature}: {f.where(self.database)}"
                  for i, f in enumerate(self.findings, 1)]
        if self.workers_lost:
            lost = ", ".join(self.workers_lost)
            lines.append(f"worker{'s' if len(self.workers_lost) > 1 else ''} lost during the campaign:"
                         f" {lost}; a shard running there ran again on another worker")
        return lines


class _Campaign:
    """The client's loop: submit shards, gather results and progress, stop, shrink, verify."""

    def __init__(self, cluster: Cluster, model: Model, spec: CampaignSpec, events: Events) -> None:
        self.cluster, self.client, self.model, self.spec = cluster, cluster.client, model, spec
        settings = spec.settings
        self.seed, self.max_examples, self.time_budget = (settings.seed, settings.max_examples,
                                                          settings.time_budget)
        self.events = events
        self.ident = database_key(model)
        self.pending: dict[Any, Shard] = {}
        self.results: list[ShardResult] = []
        self.found: dict[Signature, Found] = {}
        self.errors: list[BaseException] = []
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.next_index = self.assigned = 0
        self.started = time.monotonic()
        self.stopped_at: float | None = None
        self.first_at: float | None = None
        self.interrupted = False
        self.workers_seen: set[str] = set(cluster.addresses)
        self.workers_lost: list[str] = []
        self.next_check = 0.0
        self.slots = cluster.threads
        self.shrinking: list[StatsSnapshot] = []
        """What the shrinking ran."""
        self.stop = distributed.Event(spec.stop_event, client=self.client)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def on_progress(self, event: Any) -> None:
        """A shard's statistics (runs on the client's event-loop thread)."""
        _, msg = event
        with self.lock:
            self.snapshots[msg["shard"]] = msg

    def submit_more(self) -> None:
        want = SHARDS_PER_THREAD * self.slots
        size = SHARD_EXAMPLES
        if self.max_examples:  # a small budget is still spread over every worker
            size = min(size, max(-(-self.max_examples // want), 1))
        while self.stopped_at is None and len(self.pending) < want:
            n = size
            if self.max_examples:
                n = min(n, self.max_examples - self.assigned)
                if n <= 0:
                    return
            shard = Shard(self.next_index, shard_seed(self.seed, self.next_index), n)
            self.next_index += 1
            self.assigned += n
            key = f"fuzzer-shard-{self.spec.campaign}-{shard.index}"
            self.pending[self.client.submit(run_shard, self.spec, shard, key=key, pure=False)] = shard

    def halt(self) -> None:
        """Stop every shard (they poll the Event); submit no more."""
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
            self.stop.set()

    def collect(self) -> None:
        for future in [f for f in self.pending if f.done()]:
            shard = self.pending.pop(future)
            try:
                result: ShardResult = future.result()
            except Exception as exc:  # KilledWorker: the shard killed every worker it ran on
                self.errors.append(RuntimeError(f"shard {shard.index} (seed {shard.seed}) failed on"
                                                f" the cluster: {type(exc).__name__}: {exc}"))
                self.halt()
                continue
            self.take(result)

    def take(self, result: ShardResult) -> None:
        with self.lock:
            self.snapshots.pop(result.shard.index, None)
        self.results.append(result)
        if result.model and result.model != self.ident:
            self.errors.append(UsageError(f"worker {result.worker} builds another model than this client"
                                          " (other plugins or versions installed there?)"))
            self.halt()
        elif result.status is Status.ERROR:
            self.errors.append(result.error or RuntimeError(f"shard {result.shard.index} failed"))
            self.halt()
        elif result.found is not None and result.found.signature not in self.found:
            self.found[result.found.signature] = result.found
            if self.first_at is None:
                self.first_at = self.elapsed()
                self.halt()
                if self.events.failure_found is not None:
                    where = f"shard {result.shard.index} (seed {result.shard.seed}) on {result.worker}"
                    self.events.failure_found(result.found.finding, where)  # type: ignore[call-arg]

    def check_workers(self, *, force: bool = False) -> None:
        """Note workers that left the cluster (their shards are re-run by Dask), and new ones."""
        now = time.monotonic()
        if now < self.next_check and not force:
            return
        self.next_check = now + WORKER_CHECK
        workers = _info(self.client)["workers"]
        self.slots = max(sum(w.get("nthreads", 1) for w in workers.values()), 1)
        gone = self.workers_seen - set(workers)
        self.workers_lost += sorted(gone)
        self.workers_seen = (self.workers_seen - gone) | set(workers)
        if gone:
            with self.lock:  # their running shards start again from nothing
                for i in [i for i, s in self.snapshots.items() if s["worker"] in gone]:
                    del self.snapshots[i]

    def stats(self) -> StatsSnapshot:
        """Finished shards' results plus running shards' latest figures (and the shrinking's)."""
        with self.lock:
            running = list(self.snapshots.values())
        return StatsSnapshot.merge([*(r.stats for r in self.results), *self.shrinking, *(
            StatsSnapshot(examples=snap["examples"], emulated_steps=snap["steps"],
                          failures_seen=snap["failures"], routines=frozenset(snap["routines"]))
            for snap in running)])

    def search(self) -> None:
        """Until the budget is spent, a failure or an error stops it, or Ctrl-C."""
        self.client.subscribe_topic(self.spec.topic, self.on_progress)
        try:
            self.submit_more()
            while self.pending:
                try:
                    self.step()
                except KeyboardInterrupt:
                    if self.interrupted:  # a second Ctrl-C: stop waiting for the shards
                        break
                    self.interrupted = True
                    self.halt()
        finally:
            self.client.cancel(list(self.pending))
            self.client.unsubscribe_topic(self.spec.topic)

    def step(self) -> None:
        time.sleep(TICK)
        self.collect()
        self.check_workers()
        if self.time_budget and self.elapsed() >= self.time_budget:
            self.halt()
        if self.stopped_at is not None and time.monotonic() - self.stopped_at > GRACE:
            self.client.cancel(list(self.pending))  # stuck shards: report what the others ran
            self.pending.clear()
        self.submit_more()
        if self.events.progress is not None:
            self.events.progress(self.stats(), self.elapsed())

    def shrink(self) -> list[Reported]:
        """Each distinct failure shrunk once on the cluster, replayed and verified here."""
        found = list(self.found.values())
        futures = [] if self.interrupted else [  # Ctrl-C before: report them as found
            self.client.submit(shrink_failure, self.spec, f, pure=False,
                               key=f"fuzzer-shrink-{self.spec.campaign}-{i}")
            for i, f in enumerate(found)]
        shrunk: list[tuple[tuple[Step, ...], StatsSnapshot] | None] = [None] * len(found)
        try:
            for i, future in enumerate(futures):
                shrunk[i] = future.result()  # KilledWorker: raised, an internal error
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            self.client.cancel(futures)
        findings = []
        for f, done in zip(found, shrunk, strict=True):
            if done is not None:
                self.shrinking.append(done[1])
            _, failure = replay(self.model, done[0] if done is not None else f.steps)
            if not isinstance(failure, Finding) or failure.signature != f.signature:
                raise RuntimeError(f"shard {f.shard.index}'s reproduction ({f.signature}) did not replay to"
                                   " the same failure in the client; the model is not deterministic")
            findings.append(Reported(failure, f, shrunk=done is not None))
        return findings

    def outcome(self, database: ExampleDatabase | None) -> ClusterOutcome:
        findings = self.shrink() if self.found and not self.errors else []
        with contextlib.suppress(Exception):
            self.check_workers(force=True)  # a worker lost since the last look, or while shrinking
        common: dict[str, Any] = {"stats": self.stats(), "duration": self.elapsed(),
                                  "time_to_first_failure": self.first_at}
        first = findings[0] if findings else None
        if self.errors and not self.interrupted:
            if isinstance(self.errors[0], UsageError):
                raise self.errors[0]
            outcome = Outcome(status=Status.ERROR, error=self.errors[0], stats=common["stats"],
                              duration=common["duration"])
        elif self.interrupted or first is None:
            outcome = Outcome(status=Status.INTERRUPTED if self.interrupted else Status.PASSED,
                              failure=first.failure if first else None,
                              steps=first.steps if first else (), **common)
        else:
            for f in findings:
                if database is not None:
                    database.save(steps_key(self.model), encode(f.steps))
                if self.events.failure_shrunk is not None:
                    self.events.failure_shrunk(f.failure)
            outcome = Outcome(status=Status.FAILED, failure=first.failure, steps=first.steps,
                              more_failures=tuple(f.failure for f in findings[1:]), **common)
        coverage = tuple(r.coverage for r in self.results if r.coverage is not None)
        return ClusterOutcome(outcome, tuple(findings), len(self.results), tuple(self.workers_lost),
                              coverage, self.spec.settings.database)


def run_cluster(cluster: Cluster, model: Model, spec: CampaignSpec, *, events: Events | None = None,
                database: str | ExampleDatabase | None = None) -> ClusterOutcome:
    """Run the campaign ``spec.settings`` describe on ``cluster``; the counterpart of
    :func:`run_campaign` for many workers.

    ``events``: ``progress`` (the merged statistics), ``failure_found`` (the first failure,
    unshrunk, with where it was found), ``failure_shrunk`` (each distinct failure, verified).
    ``database`` is where the client saves each verified, shrunk failure
    (``spec.settings.database`` is what shard 0 replays first).
    """
    if isinstance(database, str):
        database = DirectoryBasedExampleDatabase(database)
    campaign = _Campaign(cluster, model, spec, events if events is not None else Events())
    campaign.search()
    return campaign.outcome(database)
