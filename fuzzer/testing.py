"""Test a plugin in-process: build a model with it, replay steps, search, run the CLI.

A small pytester for plugin authors::

    from fuzzer.testing import make_model, plugin_module, replay, search, boot_steps

    model = make_model("v6.2", plugins=["my_plugin"])      # or extra=[a module object]
    machine, failure = replay(model, [*boot_steps(), Step("online", cpu=1)])
    assert failure is None
    outcome = search(model, seed=1, max_examples=200)      # as `run` does (engine="walk")
    assert outcome.status == "passed"
"""

from __future__ import annotations

import io
import types
from collections.abc import Iterable, Sequence
from typing import Any

from fuzzer._campaign import Outcome, replay, run_campaign
from fuzzer._config import KernelConfig, RunConfig, VersionChain
from fuzzer._model import Model
from fuzzer._plugins import FuzzerPluginManager
from fuzzer._steps import Step

__all__ = ["Outcome", "boot_steps", "make_model", "plugin_module", "replay", "run_cli", "search"]


def plugin_module(name: str, **hooks: Any) -> types.ModuleType:
    """A throw-away plugin: a module object holding the given ``fuzzer_*`` functions."""
    mod = types.ModuleType(name)
    for key, value in hooks.items():
        setattr(mod, key, value)
    return mod


def make_model(
    kernel: str | None = None,
    *,
    mmu: str = "radix",
    plugins: Sequence[str] = (),
    extra: Iterable[Any] = (),
    config: Sequence[str] = (),
    cpus: int = 4,
) -> Model:
    """The model ``run`` would build: built-ins, ``plugins`` (``-p`` values, ``no:`` included)
    and ``extra`` plugin objects; entry-point plugins are not autoloaded. ``kernel``
    defaults to the newest version of ``mmu``'s architecture."""
    pm = FuzzerPluginManager()
    pm.load(list(plugins), autoload=False)
    for mod in extra:
        pm.register(mod, getattr(mod, "__name__", None) or repr(mod))
    pm.check_pending()
    kernel = pm.resolve_kernel(kernel, mmu)
    arch = pm.arch_of(mmu)
    chain = VersionChain.of(kernel, {v.name: v.based_on for v in pm.kernel_versions()})
    run = RunConfig(kernel, mmu, KernelConfig.build(pm.config_options(arch), config, chain), cpus,
                    arch=arch)
    return Model.build(pm, run)


def search(model: Model, *, seed: int = 1, max_examples: int = 300,
           time_budget: float = 60, engine: str = "walk", guide: bool = False) -> Outcome:
    """Search ``model`` as ``run`` does (``--engine``, ``--guide``); a failure comes back
    shrunk and replay-verified."""
    return run_campaign(model, seed=seed, max_examples=max_examples, time_budget=time_budget,
                        engine=engine, guide=guide)


def boot_steps(seed: int = 0) -> list[Step]:
    """The first step of every run: boot CPU 0 with the kernel's random seed."""
    return [Step("boot", seed=seed)]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``python -m fuzzer ARGV`` in-process: (exit code, stdout, stderr)."""
    from fuzzer._cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()
