"""The project's tests use the public plugin-testing harness, fuzzer.testing.

Tests pin v6.2 by default: most injected mistakes and expectations are v6.2's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fuzzer import Model
from fuzzer.testing import boot_steps, plugin_module, replay, search
from fuzzer.testing import make_model as _make_model


def make_model(
    kernel: str = "v6.2",
    *,
    mmu: str = "radix",
    plugins: Sequence[str] = (),
    extra: Iterable[Any] = (),
    config: Sequence[str] = (),
    cpus: int = 4,
) -> Model:
    return _make_model(kernel, mmu=mmu, plugins=plugins, extra=extra, config=config, cpus=cpus)


__all__ = ["boot_steps", "make_model", "plugin_module", "replay", "search"]
