"""Campaigns on Dask: a real ``dask scheduler`` and two ``dask worker`` processes on loopback.

``--workers N`` on a LocalCluster is tested with the other campaign features
(tests/test_campaign_features.py); here: an existing cluster reached with
``--scheduler`` (an address or a scheduler file), a worker killed in the middle
of a shard, distinct failures all reported, the one-line usage errors, and
that a single-worker run never imports ``distributed``.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from fuzzer._engine import Status, run_campaign
from fuzzer._model import Model
from fuzzer._plugins import FuzzerPluginManager
from fuzzer._reporters import SESSION_PLUGINS
from fuzzer._session import Session
from fuzzer._settings import Settings, build_settings

needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason="the cluster extra is not installed (pip install -e '.[cluster]')")

MISTAKE = "fuzzer_plugins.mistakes.no_local_flush"
TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "FUZZER_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": path, **extra}


@attrs.frozen
class DaskCluster:
    address: str
    scheduler_file: Path
    workers: list[subprocess.Popen[bytes]]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def dask_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaskCluster]:
    """``dask scheduler`` and two ``dask worker`` processes of one thread on loopback.

    Parametrised indirectly with ``{VARIABLE: NAME}``: the workers' environment gets
    ``VARIABLE=tmp_path/NAME``, a directory made for it.
    """
    extra = {name: str(tmp_path / value) for name, value in getattr(request, "param", {}).items()}
    for path in extra.values():
        Path(path).mkdir()
    worker_env = _env(**extra)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler_file = tmp_path / "scheduler.json"
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
                     "--scheduler-file", str(scheduler_file)], tmp_path / "scheduler.log", _env())]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail("dask scheduler did not start:\n" + (tmp_path / "scheduler.log").read_text())
            time.sleep(0.1)
        workers = [_start(["worker", address, "--nthreads", "1", "--no-dashboard", "--local-directory",
                           str(tmp_path / f"w{i}")], tmp_path / f"worker{i}.log", worker_env)
                   for i in range(2)]
        procs += workers
        yield DaskCluster(address, scheduler_file, workers)
    finally:
        _stop(procs)


@functools.cache
def found_alone(plugins: tuple[str, ...], seed: int) -> str:
    """What one process's search from ``seed`` finds first on v6.2 with ``plugins`` (a signature),
    past the known findings as ``run`` goes."""
    model, _, _ = _model(plugins, kernel="v6.2")
    outcome = run_campaign(model, seed=seed, max_examples=100, time_budget=0, shrink=False,
                           known=[k.signature for k in model.known])  # as run searches past them
    assert outcome.failure is not None, f"{plugins} seed {seed}: nothing found alone"
    return str(outcome.failure.signature)


def fuzz(tmp_path: Path, *args: str, cwd: str = "client") -> subprocess.CompletedProcess[str]:
    where = tmp_path / cwd
    where.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "fuzzer", "-p", MISTAKE, "run", "--kernel", "v6.2", *args],
                          cwd=where, env=_env(), capture_output=True, text=True, timeout=300)


@needs_dask
def test_a_dask_cluster_finds_reports_and_saves_the_mistake(tmp_path, dask_cluster):
    r = fuzz(tmp_path, "--seed", "1", "--scheduler", dask_cluster.address, "--workers", "2",
             "--stats", "s.jsonl")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cluster: {dask_cluster.address}, 2 workers (processes, 1 thread each)" in r.stdout
    assert "dashboard: none" in r.stdout  # started with --no-dashboard
    assert f"Signature: {found_alone((MISTAKE,), 1)}" in r.stdout
    assert "Minimal reproduction (1 step):" in r.stdout
    assert "found: shard " in r.stderr
    saved = list((tmp_path / "client" / "corpus").glob("*.json"))
    assert len(saved) == 1
    replayed = subprocess.run([sys.executable, "-m", "fuzzer", "replay", str(saved[0])], env=_env(),
                              capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stdout
    # The finding names its shard's seed and example: that run alone, one process, finds it there.
    alone = re.search(r"alone: the same run options with --seed (\d+) --max-examples (\d+)", r.stdout)
    assert alone is not None, r.stdout
    seed, example = alone.groups()
    again = fuzz(tmp_path, "--seed", seed, "--max-examples", example, "--corpus", "none", cwd="alone")
    assert again.returncode == 1, again.stdout
    assert f"Signature: {found_alone((MISTAKE,), 1)}" in again.stdout
    assert f"(example {example})" in again.stdout.splitlines()[-1]


@needs_dask
def test_a_scheduler_file_reaches_the_cluster(tmp_path, dask_cluster):
    r = fuzz(tmp_path, "--seed", "2", "--scheduler", str(dask_cluster.scheduler_file), "--corpus", "none")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cluster: {dask_cluster.address}, " in r.stdout
    assert f"Signature: {found_alone((MISTAKE,), 1)}" in r.stdout


@needs_dask
@pytest.mark.parametrize("dask_cluster", [{"FUZZER_TEST_SLOW_WORKER": "SLOW"}], indirect=True)
def test_a_worker_killed_in_the_middle_of_a_shard_loses_nothing(tmp_path, dask_cluster):
    """Each worker's first example waits 3 s (tests/cluster_slow_worker.py); the first worker to
    start one is killed then: its shard runs again on the other, which finds the mistake."""
    slow = tmp_path / "SLOW"
    (tmp_path / "client").mkdir()
    for proc in dask_cluster.workers:
        assert proc.poll() is None
    env = _env()
    client = subprocess.Popen(
        [sys.executable, "-m", "fuzzer", "-p", MISTAKE, "-p", "cluster_slow_worker", "run", "--kernel",
         "v6.2", "--seed", "1", "--scheduler", dask_cluster.address, "--workers", "2"],
        cwd=tmp_path / "client", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(slow.iterdir()):
            assert time.monotonic() < deadline and client.poll() is None, "no worker started a shard"
            time.sleep(0.05)
        victim = int(next(slow.iterdir()).name)
        os.kill(victim, signal.SIGKILL)
        out, err = client.communicate(timeout=180)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 1, out + err
    assert f"Signature: {found_alone((MISTAKE,), 1)}" in out
    assert "worker lost during the campaign: tcp://127.0.0.1:" in out
    assert "a shard running there ran again on another worker" in out
    assert len(list((tmp_path / "client" / "corpus").glob("*.json"))) == 1


# ---------------------------------------------------------------------------
# Distinct failures; the one-line usage errors; no Dask for one worker
# ---------------------------------------------------------------------------

#: Two mistakes: from some seeds one is found first, from others the other.
TWO = ("fuzzer_plugins.mistakes.pmi_in_patch_window", "fuzzer_plugins.mistakes.skip_suspend_breakpoints")


def _model(plugins: tuple[str, ...], **knobs: Any) -> tuple[Model, Settings, FuzzerPluginManager]:
    """The model and settings ``run`` builds for ``-p plugins`` and ``knobs`` (build_settings's)."""
    pm = FuzzerPluginManager()
    pm.load(list(plugins))
    settings = build_settings(pm, plugins=plugins, **knobs)
    return Model.build(pm, settings.run), settings, pm


@needs_dask
def test_distinct_failures_are_each_shrunk_once_verified_reported_and_saved(tmp_path):
    from fuzzer import _cluster

    # A campaign seed whose first two shards, each searching alone, meet different mistakes.
    def first_two(seed: int) -> tuple[str, str]:
        return found_alone(TWO, _cluster.shard_seed(seed, 0)), found_alone(TWO, _cluster.shard_seed(seed, 1))

    seed = next(seed for seed in range(1, 50) if len(set(first_two(seed))) == 2)
    model, settings, pm = _model(TWO, kernel="v6.2", seed=seed, max_examples=0, time_budget=0,
                             corpus=str(tmp_path / "corpus"), workers=2)
    spec = _cluster.CampaignSpec(settings, known=frozenset(k.signature for k in model.known))
    shrunk: list[str] = []
    events = _cluster.Events(failure_shrunk=lambda failure: shrunk.append(str(failure.signature)))
    with _cluster.connect(spec, model, workers=2, scheduler=None) as cluster:
        assert (cluster.name, cluster.workers, cluster.threads) == ("LocalCluster", 2, 2)
        campaign = _cluster._Campaign(cluster, model, spec, events)
        # Two shards searched side by side on the cluster, each from its own seed (as a campaign's
        # first two do when neither has seen the other's stop yet).
        shards = [_cluster.Shard(i, _cluster.shard_seed(seed, i), 100) for i in range(2)]
        for result in cluster.client.gather([cluster.client.submit(_cluster.run_shard, spec, shard,
                                                                   pure=False) for shard in shards]):
            campaign.take(result)
        done = campaign.outcome(None)
    assert done.outcome.status is Status.FAILED
    expected = [found_alone(TWO, shard.seed) for shard in shards]
    assert [str(f.failure.signature) for f in done.findings] == expected
    assert shrunk == expected  # failure_shrunk once per finding
    assert [str(f.signature) for f in (done.outcome.failure, *done.outcome.more_failures)] == expected
    for finding in done.findings:
        assert finding.shrunk and len(finding.steps) <= len(finding.found.steps)
    notes = done.notes()
    assert f"1. {expected[0]}: found by shard 0 (seed {shards[0].seed})" in "\n".join(notes)
    assert f"2. {expected[1]}: found by shard 1 (seed {shards[1].seed})" in "\n".join(notes)
    # The lifecycle plugins report and save each of them.
    out, err = io.StringIO(), io.StringIO()
    session = Session(settings, model, pm, out, err, notes=notes)
    for name, cls in SESSION_PLUGINS:
        pm.register(cls(), f"fuzzer-{name}")
    session.hook("fuzzer_session_finish", outcome=done.outcome)
    assert session.exitcode == 1
    text = out.getvalue()
    assert text.count("Minimal reproduction") == 2
    assert text.splitlines()[-1].startswith("== 2 failed: ")
    assert len(list((tmp_path / "corpus").glob("*.json"))) == 2


def test_a_single_worker_run_never_imports_distributed(tmp_path):
    code = ("import sys; from fuzzer._cli import main; "
            "rc = main(['run', '--seed', '1', '--max-examples', '3', '--corpus', 'none']); "
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('distributed', 'dask')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 []"


@pytest.mark.parametrize("option", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:8786"]])
def test_without_distributed_a_cluster_is_a_usage_error_naming_the_extra(cli, monkeypatch, option):
    monkeypatch.setitem(sys.modules, "distributed", None)
    r = cli("run", "--seed", "1", "--max-examples", "3", *option)
    assert (r.rc, r.out) == (4, "")
    assert r.err == (f"ERROR: {' '.join(option)} needs Dask's distributed:"
                     " pip install 'ppc-kernel-fuzzer[cluster]'\n")


@needs_dask
def test_an_unreachable_scheduler_is_a_usage_error(cli, monkeypatch):
    from fuzzer import _cluster

    monkeypatch.setattr(_cluster, "CONNECT_TIMEOUT", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    r = cli("run", "--seed", "1", "--scheduler", address)
    assert (r.rc, r.out) == (4, "")
    assert r.err.startswith(f"ERROR: --scheduler {address}: cannot reach the Dask scheduler: ")
    assert r.err.count("\n") == 1


@needs_dask
def test_a_scheduler_neither_address_nor_file_is_a_usage_error(cli):
    r = cli("run", "--seed", "1", "--scheduler", "no-such-file.json")
    assert (r.rc, r.out) == (4, "")
    assert r.err == ("ERROR: --scheduler no-such-file.json: expected tcp://HOST:PORT or a scheduler file"
                     " (dask scheduler --scheduler-file PATH)\n")


@needs_dask
@pytest.mark.parametrize("page, shown", [(b"<html>Dask status</html>", True),
                                         (b"<p>Dask needs bokeh>=3.1.0 for the dashboard.</p>", False),
                                         (None, False)])
def test_the_dashboard_link_is_printed_only_when_a_dashboard_answers(page, shown):
    import http.server
    import threading

    from fuzzer import _cluster

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if page is not None else 404)
            self.end_headers()
            self.wfile.write(page or b"")

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        link = f"http://127.0.0.1:{server.server_address[1]}/status"
        try:
            got = _cluster._dashboard(type("Client", (), {"dashboard_link": link})())
        finally:
            server.shutdown()
    assert got == (link if shown else None)
