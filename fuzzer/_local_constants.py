"""Hypothesis's generation as a function of the seed alone: without the process's constants.

Recent Hypothesis versions draw, about one integer or byte string in forty, a constant found
in the source of any non-library module loaded so far (the fuzzer's own, its plugins', a
test suite's throw-away ones), so the examples a seed gave depended on what the process had
imported before: one Hypothesis engine search found ``static_key_dec_stale_count`` at
example 31 after importing every fuzzer module, and not within 150 without (the first
difference: example 5, step 44). The engine's runs, and the pools the walk draws from a
plain Hypothesis strategy, run inside :func:`local_constants_off`; Hypothesis's own
constants stay.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_LOCK = threading.Lock()
#: While runs are in progress (threads may share a process): how many, and what the first
#: one replaced.
_OFF: dict[str, Any] = {"runs": 0, "saved": None}


@contextlib.contextmanager
def local_constants_off() -> Iterator[None]:
    """Hypothesis draws no constant of the process's local modules in here.

    The lookup finds none, and a cache of our own keeps the constants Hypothesis narrows to
    each draw's range (its shared one may hold local ones); the first run to enter replaces
    both, the last to leave puts them back. A Hypothesis without local constants is left
    alone."""
    try:
        from hypothesis.internal.cache import LRUCache
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:
        yield
        return
    if not hasattr(providers, "_get_local_constants") or not hasattr(providers, "CONSTANTS_CACHE"):
        yield
        return
    none = Constants()
    with _LOCK:
        if _OFF["runs"] == 0:
            _OFF["saved"] = (providers._get_local_constants, providers.CONSTANTS_CACHE)
            providers._get_local_constants = lambda: none
            providers.CONSTANTS_CACHE = LRUCache(1024)
        _OFF["runs"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _OFF["runs"] -= 1
            if _OFF["runs"] == 0:
                providers._get_local_constants, providers.CONSTANTS_CACHE = _OFF["saved"]
                _OFF["saved"] = None
