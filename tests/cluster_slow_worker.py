"""A test plugin for tests/test_cluster.py: a worker's first example waits, so a test can kill it.

With ``FUZZER_TEST_SLOW_WORKER=DIR`` in a process's environment (the test
gives it to the ``dask worker`` processes only), the first machine that
process builds -- its first shard's first example -- writes ``DIR/<pid>``
and sleeps ``FUZZER_TEST_SLOW_SECONDS`` (default 3). The test kills the
process named by the first such file: a worker lost in the middle of a shard.
Without the variable the plugin does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import fuzzer

_done = False


@fuzzer.hookimpl
def fuzzer_machine_setup(machine: object) -> None:
    global _done
    where = os.environ.get("FUZZER_TEST_SLOW_WORKER")
    if not where or _done:
        return
    _done = True
    (Path(where) / str(os.getpid())).touch()
    time.sleep(float(os.environ.get("FUZZER_TEST_SLOW_SECONDS", "3")))
