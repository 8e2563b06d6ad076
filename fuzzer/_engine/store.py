"""The example database's view of a model: its keys, and step lists as plain JSON bytes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from hypothesis.database import ExampleDatabase

from fuzzer._model import Model
from fuzzer._steps import Step


def database_key(model: Model) -> bytes:
    """A key for the example database, distinct per model configuration.

    Every configuration's state machine is the same code to Hypothesis, so
    without this the failures saved for one kernel would be replayed on all.
    """
    run = model.run
    ident: dict[str, Any] = {
        "kernel": run.kernel, "mmu": run.mmu, "cpus": run.cpus,
        "config": dict(run.config.values), "options": {k: repr(v) for k, v in run.options.items()},
        "plugins": sorted(model.plugin_modules),
        "operations": [o.name for o in model.operations],
        "interrupts": [s.name for s in model.interrupts],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest().encode()


def steps_key(model: Model) -> bytes:
    """Where the walk engine keeps its reproductions (step lists)."""
    return database_key(model) + b".steps"


def encode(steps: Sequence[Step]) -> bytes:
    return json.dumps([s.to_json() for s in steps], separators=(",", ":")).encode()


def decode(value: bytes) -> tuple[Step, ...] | None:
    """A saved step list (JSON data, never code); None if it is not one."""
    try:
        data = json.loads(value)
        if not isinstance(data, list):
            return None
        return tuple(Step.from_json(item) for item in data)
    except (ValueError, UnicodeDecodeError):
        return None


def saved_examples(database: ExampleDatabase | None, model: Model) -> list[tuple[bytes, tuple[Step, ...]]]:
    """The step lists saved for ``model``; entries this version cannot read are deleted."""
    if database is None:
        return []
    key = steps_key(model)
    saved = []
    for value in list(database.fetch(key)):
        steps = decode(value)
        if steps is None:
            database.delete(key, value)  # not a step list this version can read
        else:
            saved.append((value, steps))
    return saved
