"""Workers on several machines share a Redis-backed example database: a real redis-server on loopback.

Two worker processes of ``python -m fuzzer``: A searches until it finds a
failure, which Hypothesis saves to Redis; B, another seed allowed a single
example, fails on its first one -- replayed from the database -- while the
same B without the database runs clean.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MISTAKE = "fuzzer_plugins.mistakes.pmi_in_patch_window"
FOUND = "uaccess under a foreign mm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    pytest.importorskip("redis", reason="the redis client is not installed (pip install -e '.[redis]')")
    import redis

    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"redis-server on port {port} did not answer PING")
                time.sleep(0.1)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    cwd = tmp_path / name  # a machine of its own: nothing shared but Redis
    cwd.mkdir()
    env = {**os.environ, "FUZZER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "fuzzer", "-p", MISTAKE, "run", "--kernel", "v6.2",
                           "--corpus", "none", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_workers_share_a_failure_through_redis(tmp_path, redis_url):
    lonely = worker(tmp_path, "b-alone", "--seed", "5", "--max-examples", "1", "--db", "none")
    assert lonely.returncode == 0, "one example of seed 5 must not find it by itself:\n" + lonely.stdout

    a = worker(tmp_path, "a", "--seed", "1", "--db", redis_url)
    assert a.returncode == 1, a.stdout + a.stderr
    assert FOUND in a.stdout
    assert f"example database: {redis_url}" in a.stdout

    b = worker(tmp_path, "b", "--seed", "5", "--max-examples", "1", "--db", redis_url)
    assert b.returncode == 1, b.stdout + b.stderr
    assert FOUND in b.stdout
    summary = b.stdout.splitlines()[-1]
    assert "first found after" in summary and "(example 1)" in summary


def test_workers_in_one_run_share_redis(tmp_path, redis_url):
    pytest.importorskip("distributed", reason="--workers 2: the cluster extra is not installed")
    both = worker(tmp_path, "ab", "--seed", "3", "--workers", "2", "--db", redis_url)
    assert both.returncode == 1, both.stdout + both.stderr
    assert "cluster: LocalCluster, 2 workers" in both.stdout
    again = worker(tmp_path, "c", "--seed", "4", "--max-examples", "1", "--db", redis_url)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "(example 1)" in again.stdout.splitlines()[-1], again.stdout + both.stdout
