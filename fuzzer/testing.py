"""Test a plugin in-process: build a model with it, replay steps, search, run the CLI, and
put the model's state machine into your own pytest suite.

A small pytester for plugin authors::

    from fuzzer.testing import make_model, plugin_module, replay, search, boot_steps

    model = make_model("v6.2", plugins=["my_plugin"])      # or extra=[a module object]
    machine, failure = replay(model, [*boot_steps(), Step("online", cpu=1)])
    assert failure is None
    outcome = search(model, seed=1, max_examples=200)      # as `run` does (engine="walk")
    assert outcome.status == "passed"

    TestMyPlugin = state_machine(model).TestCase            # Hypothesis, under your settings
"""

from __future__ import annotations

import io
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hypothesis.stateful import RuleBasedStateMachine

from fuzzer._engine.campaign import run_campaign
from fuzzer._engine.hypothesis import Channel, state_machine_class
from fuzzer._engine.records import Finding, Outcome, Status
from fuzzer._engine.replay import replay as _replay
from fuzzer._errors import Signature
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._plugins import FuzzerPluginManager
from fuzzer._settings import build_settings
from fuzzer._steps import Step

__all__ = ["Finding", "Outcome", "Status", "boot_steps", "make_model", "plugin_module", "replay",
           "run_cli", "search", "state_machine"]


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
    cpus: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Model:
    """The model ``run`` would build, through the same settings builder and checks
    (``fuzzer_configure``, CPUs against ``CONFIG_SMP``): built-ins, ``plugins`` (``-p``
    values, ``no:`` included) and ``extra`` plugin objects; entry-point plugins are not
    autoloaded. ``kernel`` defaults to the newest version of ``mmu``'s architecture,
    ``cpus`` to 4 (1 with ``CONFIG_SMP=n``); ``options`` are plugin options by dest."""
    pm = FuzzerPluginManager()
    pm.load(list(plugins), autoload=False)
    for mod in extra:
        pm.register(mod, getattr(mod, "__name__", None) or repr(mod))
    pm.check_pending()
    settings = build_settings(pm, kernel=kernel, mmu=mmu, config=config, cpus=cpus, options=options,
                              seed=0, corpus=None, plugins=tuple(plugins))
    return Model.build(pm, settings.run)


def replay(model: Model, steps: Iterable[Step]) -> tuple[Machine | None, Finding | None]:
    """Replay ``steps`` strictly on a fresh machine, then finish it: the machine and the
    kernel failure (a :class:`Finding` with the steps that reach it), or None."""
    machine, failure = _replay(model, steps)
    assert failure is None or isinstance(failure, Finding)  # strict: plugin errors propagate
    return machine, failure


def search(model: Model, *, seed: int = 1, max_examples: int = 300, time_budget: float = 60,
           engine: str = "walk", guide: bool = False, known: Iterable[Any] | None = None,
           scheduler: str = "mixed", interleave: bool = True) -> Outcome:
    """Search ``model`` as ``run`` does (``--engine``, ``--guide``, ``--scheduler``,
    ``--no-interleave``); a failure comes back
    shrunk and replay-verified. ``known``: known findings (or their signatures) to count
    and search past; by default the model's own (``model.known``), as ``run`` does without
    ``--report-known``; ``known=()`` reports them as ordinary findings."""
    given: Iterable[Any] = model.known if known is None else known
    signatures: list[Signature] = [k if isinstance(k, Signature) else k.signature for k in given]
    return run_campaign(model, seed=seed, max_examples=max_examples, time_budget=time_budget,
                        engine=engine, guide=guide, known=signatures, scheduler=scheduler,
                        interleave=interleave)


def state_machine(model: Model, *, report_known: bool = False) -> type[RuleBasedStateMachine]:
    """The model's Hypothesis ``RuleBasedStateMachine``, for your own test suite::

        TestMyPlugin = fuzzer.testing.state_machine(make_model(plugins=["my_plugin"])).TestCase

    It runs under your Hypothesis settings, profiles and example database (set
    ``TestMyPlugin.settings``, or decorate the class with ``@settings``). A kernel
    failure is raised as the model raised it, and Hypothesis prints, under the
    falsifying example, the same kernel-style report and minimal reproduction as
    ``python -m fuzzer run``. The kernel's known findings (``model.known``) end an
    example as invalid and the search goes on, as ``run`` does; ``report_known=True``
    raises them like any other failure.
    """
    known = frozenset() if report_known else frozenset(k.signature for k in model.known)
    return state_machine_class(model.searching(known), Channel(notes=True, known=known))


def boot_steps(seed: int = 0) -> list[Step]:
    """The first step of every run: boot CPU 0 with the kernel's random seed."""
    return [Step("boot", seed=seed)]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``python -m fuzzer ARGV`` in-process: (exit code, stdout, stderr)."""
    from fuzzer._cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()
