"""Kill one of two Dask workers at a random time: does every campaign still report the mistake?

Starts ``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` on
loopback, then runs N campaigns, each in a directory of its own::

    python -m fuzzer -p fuzzer_plugins.mistakes.pmi_in_patch_window run --kernel v6.2 \\
        --seed I --scheduler ADDRESS --workers 2

and, at a random time within the first ``--within`` seconds of each campaign
(from its header's ``cluster:`` line: the cluster is connected and the search
starts; the mistake is found within a second), kills one of the two worker
processes (SIGKILL; Dask's nanny starts a new one). A campaign counts if it
exits 1 with the mistake's signature and leaves exactly one corpus entry
that ``python -m fuzzer replay`` confirms.

    python bench/faults.py [--campaigns 10] [--within 1]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MISTAKE = "fuzzer_plugins.mistakes.pmi_in_patch_window"
FOUND = "Signature: INVARIANT in uaccess under a foreign mm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_processes(parent: int) -> list[int]:
    import psutil  # comes with distributed

    return [p.pid for p in psutil.Process(parent).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def campaign(tmp: Path, i: int, address: str, workers_parent: int, kill_at: float) -> tuple[bool, str]:
    cwd = tmp / f"campaign-{i}"
    cwd.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "fuzzer", "-p", MISTAKE, "run", "--kernel", "v6.2",
                             "--seed", str(i), "--scheduler", address, "--workers", "2"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = "nothing killed (it had finished)"
    try:
        head = []
        for line in proc.stdout or ():  # the header's cluster line: the campaign starts now
            head.append(line)
            if line.startswith("cluster:"):
                break
        end = time.monotonic() + kill_at
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.005)
        victims = _worker_processes(workers_parent)
        if proc.poll() is None and victims:
            victim = random.choice(victims)
            os.kill(victim, signal.SIGKILL)
            killed = f"killed worker process {victim} {kill_at:.2f}s into the campaign"
        out, err = proc.communicate(timeout=300)
        out = "".join(head) + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    corpus = list((cwd / "corpus").glob("*.json"))
    replayed = corpus and subprocess.run([sys.executable, "-m", "fuzzer", "replay", str(corpus[0])],
                                         capture_output=True, text=True).returncode == 0
    ok = proc.returncode == 1 and FOUND in out and len(corpus) == 1 and bool(replayed)
    lost = " lost during the campaign" in out
    return ok, f"{killed}; exit {proc.returncode}; {'lost worker reported' if lost else 'no loss seen'}" + (
        "" if ok else f"\n{out}\n{err}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--campaigns", type=int, default=10)
    ap.add_argument("--within", type=float, default=1.0,
                    help="kill within this many seconds of the campaign's start (its header's cluster line)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the kill times")
    opts = ap.parse_args(argv)
    random.seed(opts.seed)
    os.environ["FUZZER_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                   str(port), "--no-dashboard"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)]
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nworkers", "2",
                                           "--nthreads", "1", "--no-dashboard", "--local-directory", name],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            from distributed import Client

            watcher = Client(address, timeout=60, set_as_default=False)
            passed = 0
            for i in range(1, opts.campaigns + 1):
                watcher.wait_for_workers(2, timeout=120)  # the nanny's replacement has joined
                ok, what = campaign(tmp, i, address, procs[1].pid, random.uniform(0, opts.within))
                passed += ok
                print(f"campaign {i} (--seed {i}): {'ok' if ok else 'FAILED'}: {what}", flush=True)
            print(f"{passed} of {opts.campaigns} campaigns reported the mistake and left a valid corpus")
            watcher.close()
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
