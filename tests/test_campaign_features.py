"""Campaign features: --coverage, --stats and --stats-plot, --workers, and --db usage errors."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzzer._coverage import measured_files
from fuzzer._model import Model

SHORT = ("run", "--seed", "1", "--max-examples", "20", "--time-budget", "20", "--corpus", "none")
#: A mistake whose failure needs an interrupt at the right time: found by search, not by boot.
MISTAKE = "fuzzer_plugins.mistakes.pmi_in_patch_window"
#: The version the mistakes change.
V6_2 = ("--kernel", "v6.2")
KERNEL_DIR = Path(__file__).resolve().parent.parent / "fuzzer" / "kernel"
PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"


def default_model() -> Model:
    from fuzzer.testing import make_model

    return make_model()


# ---------------------------------------------------------------------------
# --coverage
# ---------------------------------------------------------------------------


def test_coverage_writes_html_and_names_unreached_routines(cli, tmp_path):
    r = cli(*SHORT, "--coverage", "--coverage-dir", "cov")
    assert r.rc == 0, r.out + r.err
    assert (tmp_path / "cov" / "html" / "index.html").is_file()
    assert (tmp_path / "cov" / ".coverage").is_file()
    assert "coverage: coverage.py (branches) of the modelled kernel -> cov" in r.out
    lines = r.out.splitlines()
    unreached_line = next(line for line in lines if line.startswith("never reached"))
    names = unreached_line.split(": ", 1)[1].split(", ")
    infos = default_model().routine_infos
    assert set(names) <= set(infos)
    assert "start_kernel" not in names  # every example boots
    summary = next(line for line in lines if line.startswith("coverage: ") and "routines reached" in line)
    reached = len(infos) - len(names)
    assert f"{reached} of {len(infos)} modelled routines reached" in summary
    assert f"coverage report: {Path('cov') / 'html' / 'index.html'}" in r.out


def test_coverage_measures_only_the_kernel_model_and_plugins(cli, tmp_path):
    import coverage

    r = cli(*SHORT, "--coverage", "--coverage-dir", "cov")
    assert r.rc == 0, r.out + r.err
    data = coverage.CoverageData(basename=str(tmp_path / "cov" / ".coverage"))
    data.read()
    files = [Path(f) for f in data.measured_files()]
    assert any(f.parent == KERNEL_DIR for f in files)
    assert any(PLUGINS_DIR in f.parents for f in files)
    for f in files:
        assert KERNEL_DIR in f.parents or PLUGINS_DIR in f.parents, f


def test_measured_files_exclude_the_host():
    model = default_model()
    patterns = measured_files(model.routine_infos.values(), model.plugin_modules)
    host = KERNEL_DIR.parent
    assert str(KERNEL_DIR / "*") in patterns
    assert not [p for p in patterns if Path(p).parent == host]
    assert not [p for p in patterns if "hypothesis" in p or "pluggy" in p]


# ---------------------------------------------------------------------------
# --stats, --stats-plot
# ---------------------------------------------------------------------------

KEYS = {"time", "examples", "steps", "steps_per_s", "examples_per_s", "distinct_failures", "routines",
        "routines_total", "interleavings"}


def test_stats_are_json_lines_ending_with_the_totals(cli, tmp_path):
    # v6.12-fixed: the default v6.12's known findings would count as distinct failures seen.
    r = cli("run", "--kernel", "v6.12-fixed", "--seed", "1", "--max-examples", "150", "--time-budget", "30",
            "--corpus", "none", "--stats", "stats.jsonl")
    assert r.rc == 0, r.out + r.err
    records = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert records
    for rec in records:
        assert set(rec) == KEYS
        assert 0 < rec["routines"] <= rec["routines_total"]
    times = [rec["time"] for rec in records]
    assert times == sorted(times)
    assert [rec["examples"] for rec in records] == sorted(rec["examples"] for rec in records)
    last = records[-1]
    assert f"{last['examples']:,} passed" in r.out
    assert f"{last['steps']:,} steps" in r.out
    assert last["distinct_failures"] == 0
    # The final sample keeps the interleaving feedback's pair count (it once fell back to 0).
    assert last["interleavings"] >= max(rec["interleavings"] for rec in records) > 0
    assert f"statistics written to stats.jsonl ({len(records)} samples)" in r.out


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_stats_plot(cli, tmp_path, suffix, magic):
    r = cli(*SHORT, "--stats-plot", f"plot{suffix}")
    assert r.rc == 0, r.out + r.err
    assert (tmp_path / f"plot{suffix}").read_bytes().startswith(magic)
    assert f"plot of coverage and failures over time written to plot{suffix}" in r.out


def test_stats_plot_needs_png_or_svg(cli):
    r = cli(*SHORT, "--stats-plot", "plot.gif")
    assert r.rc == 4
    assert r.err == "ERROR: --stats-plot plot.gif: the name must end in .png or .svg\n"
    assert r.out == ""


def test_stats_plot_without_matplotlib_names_the_extra(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = cli(*SHORT, "--stats-plot", "plot.png")
    assert r.rc == 4
    assert r.err.count("\n") == 1
    assert "pip install 'ppc-kernel-fuzzer[plot]'" in r.err


# ---------------------------------------------------------------------------
# --workers
# ---------------------------------------------------------------------------


#: --workers N > 1 runs on a Dask LocalCluster: the cluster extra (in the test extra).
needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason="the cluster extra is not installed (pip install -e '.[cluster]')")


def test_workers_must_be_positive(cli):
    r = cli(*SHORT, "--workers", "0")
    assert (r.rc, r.out) == (4, "")
    assert r.err == "ERROR: --workers must be 1 or more, not 0\n"


@needs_dask
def test_two_workers_share_the_example_budget_and_merge(cli, tmp_path):
    r = cli("run", "--seed", "1", "--max-examples", "60", "--time-budget", "60", "--corpus", "none",
            "--workers", "2", "--stats", "s.jsonl", "--coverage", "--coverage-dir", "cov")
    assert r.rc == 0, r.out + r.err
    assert "cluster: LocalCluster, 2 workers (processes, 1 thread each)" in r.out
    # Each worker stops at its share (30), give or take the few extra Hypothesis runs.
    last = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[-1])
    assert 60 <= last["examples"] <= 90
    assert f"{last['examples']:,} passed, 0 failed: {last['examples']:,} examples" in r.out
    assert (tmp_path / "cov" / "html" / "index.html").is_file()
    assert not list((tmp_path / "cov").glob(".coverage.*")), "worker data files were combined"
    assert "never reached" in r.out


@needs_dask
def test_two_workers_find_report_and_save_one_failure(cli, tmp_path):
    r = cli("-p", MISTAKE, "run", *V6_2, "--seed", "1", "--workers", "2", "--db", "db", "--stats", "s.jsonl")
    assert r.rc == 1, r.out + r.err
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[-1])["distinct_failures"] >= 1
    assert "uaccess under a foreign mm" in r.out
    assert "Minimal reproduction" in r.out
    saved = list((tmp_path / "corpus").glob("*.json"))
    assert len(saved) == 1
    # The shared directory database holds it: a one-example run of another seed replays it.
    again = cli("-p", MISTAKE, "run", *V6_2, "--seed", "7", "--max-examples", "1", "--db", "db",
                "--corpus", "none")
    assert again.rc == 1, again.out
    assert "(example 1)" in again.out


def _run_until_interrupted(tmp_path: Path, *, group: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FUZZER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fuzzer", "run", "--seed", "1", "--max-examples", "0", "--time-budget", "0",
         "--workers", "2", "--corpus", "none", "--stats", "s.jsonl"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        # An xdist worker ignores SIGINT, and a child inherits that: give it a terminal's Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        stats = tmp_path / "s.jsonl"
        deadline = time.monotonic() + 60
        # Interrupt once the workers are searching (they have reported progress).
        while time.monotonic() < deadline and not (stats.exists() and stats.read_text().strip()):
            time.sleep(0.2)
        if group:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: every process gets it
        else:
            proc.send_signal(signal.SIGINT)  # only the parent: it must stop the workers
        out, err = proc.communicate(timeout=180)  # generous: a loaded CI machine is slow to close
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()  # reaps it and closes the pipes
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@needs_dask
@pytest.mark.parametrize("group", [True, False], ids=["terminal", "parent-only"])
def test_ctrl_c_stops_every_worker_and_reports(tmp_path, group):
    done = _run_until_interrupted(tmp_path, group=group)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "interrupted: " in done.stdout
    assert " examples, " in done.stdout.splitlines()[-1]


def _ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn in /proc/{pid}/status")


@needs_dask
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal dispositions from /proc")
def test_local_workers_ignore_the_terminals_ctrl_c_and_this_process_does_not():
    from fuzzer._cluster import _local_cluster

    before = signal.pthread_sigmask(signal.SIG_BLOCK, set()), signal.getsignal(signal.SIGINT)
    cluster = _local_cluster(1)
    try:
        assert (signal.pthread_sigmask(signal.SIG_BLOCK, set()), signal.getsignal(signal.SIGINT)) == before
        import distributed

        with distributed.Client(cluster, set_as_default=False) as client:
            pids = list(client.run(os.getpid).values())
        assert pids and all(_ignored_signals(pid) & (1 << (signal.SIGINT - 1)) for pid in pids)
    finally:
        cluster.close(timeout=10)


# ---------------------------------------------------------------------------
# --db usage errors
# ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("url, message", [
    ("redis://127.0.0.1:notaport", "the port must be a number"),
    ("redis://127.0.0.1", "expected redis://HOST:PORT[/DB]"),
    ("redis://:6379", "expected redis://HOST:PORT[/DB]"),
    ("redis://127.0.0.1:6379/x", "the database after the port must be a number"),
    ("ftp://example/db", "unknown database URL scheme"),
])
def test_bad_db_url_is_a_usage_error(cli, url, message):
    r = cli(*SHORT, "--db", url)
    assert (r.rc, r.out) == (4, "")
    assert r.err.startswith(f"ERROR: --db {url}") and message in r.err
    assert r.err.count("\n") == 1


def test_unreachable_redis_is_a_usage_error(cli):
    url = f"redis://127.0.0.1:{_free_port()}"
    r = cli(*SHORT, "--db", url)
    assert (r.rc, r.out) == (4, "")
    assert r.err.startswith(f"ERROR: --db {url}: cannot reach the Redis server")
    assert r.err.count("\n") == 1


def test_redis_without_the_client_names_the_extra(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    r = cli(*SHORT, "--db", "redis://127.0.0.1:6379")
    assert r.rc == 4
    assert "pip install 'ppc-kernel-fuzzer[redis]'" in r.err


def test_guide_feeds_hypothesis_target(cli, tmp_path):
    r = cli(*SHORT, "--guide", "--stats", "s.jsonl", "--engine", "hypothesis")
    assert r.rc == 0, r.out + r.err
    assert "guidance: hypothesis.target on the distinct modelled routines each example enters" in r.out
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[-1])["routines"] > 0


def test_guided_walk_starts_from_examples_that_reached_new_routines(cli, tmp_path):
    r = cli(*SHORT, "--guide", "--stats", "s.jsonl")
    assert r.rc == 0, r.out + r.err
    assert "guidance: examples start from prefixes of those that entered new modelled routines" in r.out
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[-1])["routines"] > 0
