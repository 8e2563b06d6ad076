"""Helpers for tests that drive the model in-process (a small pytester for this project)."""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import Any

from fuzzer import FuzzerPluginManager, KernelConfig, Model, RunConfig, Step
from fuzzer._campaign import Outcome, replay, run_campaign


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """A throw-away plugin: a module object holding the given hook functions."""
    mod = types.ModuleType(name)
    for key, value in hooks.items():
        setattr(mod, key, value)
    return mod


def make_model(
    kernel: str = "v6.2",
    *,
    mmu: str = "radix",
    plugins: Sequence[str] = (),
    extra: Iterable[Any] = (),
    config: Sequence[str] = (),
    cpus: int = 4,
) -> Model:
    pm = FuzzerPluginManager()
    pm.load(list(plugins), autoload=False)
    for mod in extra:
        pm.register(mod, mod.__name__)
    pm.check_pending()
    run = RunConfig(kernel, mmu, KernelConfig.build(pm.config_options(), config), cpus)
    return Model.build(pm, run)


def search(model: Model, *, seed: int = 1, max_examples: int = 300, time_budget: float = 60) -> Outcome:
    return run_campaign(model, seed=seed, max_examples=max_examples, time_budget=time_budget)


def boot_steps(seed: int = 0) -> list[Step]:
    return [Step("boot", seed=seed)]


__all__ = ["boot_steps", "make_model", "plugin_module", "replay", "search"]
