"""Replaying corpus entries: the model an entry's configuration gives, and what its steps did.

Used by ``python -m fuzzer replay`` and by the pytest plugin that collects
corpus files; no command line involved.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from fuzzer._corpus import CorpusError, Entry
from fuzzer._engine.records import Finding
from fuzzer._engine.replay import replay
from fuzzer._errors import Signature, UsageError
from fuzzer._model import Model
from fuzzer._plugins import FuzzerPluginManager
from fuzzer._report import format_failure
from fuzzer._settings import Settings, build_settings


@attrs.frozen
class Replayed:
    """What replaying one corpus entry gave, against what it should give."""

    entry: Entry
    model: Model
    """The model it ran on (the entry's configuration, or another ``--kernel``)."""
    expected: Signature | None
    """The entry's expectation, or None ("clean") with ``--expect-clean``."""
    failure: Finding | None
    """The kernel failure the steps gave, or None."""
    warned: tuple[Signature, ...] = ()
    """The WARNINGs the steps printed and went on from before that outcome."""

    @property
    def actual(self) -> Signature | None:
        return self.failure.signature if self.failure is not None else None

    @property
    def expected_warned(self) -> tuple[Signature, ...]:
        """The WARNINGs expected before the outcome: the entry's, none with ``--expect-clean``."""
        return () if self.expected is None and self.entry.expect is not None else self.entry.warned

    @property
    def ok(self) -> bool:
        return self.actual == self.expected and self.warned == self.expected_warned

    def outcome(self) -> str:
        out = str(self.actual) if self.actual is not None else "clean"
        if self.warned != self.expected_warned:
            out += (f" after {'; '.join(map(str, self.warned)) or 'no WARNING'} (expected:"
                    f" {'; '.join(map(str, self.expected_warned)) or 'none'})")
        return out

    def describe_mismatch(self) -> str:
        """The failure section: expected and actual, and the report or the steps."""
        entry = self.entry
        kernel = self.model.run.kernel
        lines = [f"title:    {entry.title}", f"file:     {entry.path}"]
        own = f" (the entry's: {entry.kernel})" if kernel != entry.kernel else ""
        lines.append(f"kernel:   {kernel}{own}")
        if entry.plugins:
            lines.append(f"plugins:  -p {' -p '.join(entry.plugins)}")
        if entry.fixed_by:
            lines.append(f"fixed by: {entry.fixed_by}")
        expected = str(self.expected) if self.expected is not None else "clean"
        lines += [f"expected: {expected}", f"actual:   {self.outcome()}", ""]
        if self.failure is not None:
            lines.append(format_failure(self.failure, self.model, self.failure.steps or entry.steps))
        else:
            lines.append(f"The reproduction ran clean ({len(entry.steps)} step"
                         f"{'s' if len(entry.steps) != 1 else ''}):")
            lines += [f"  {i}. {step.describe()}" for i, step in enumerate(entry.steps, 1)]
        return "\n".join(lines)


def entry_settings(pm: FuzzerPluginManager, entry: Entry, *, kernel: str | None = None,
                   plugins: Sequence[str] = ()) -> Settings:
    """The settings an entry's configuration gives (through :func:`build_settings`, so every
    check runs); a field that does not fit the loaded plugins is a :class:`CorpusError`."""
    file = entry.path or entry.title
    kernel = kernel or entry.kernel
    try:
        pm.check_kernel(kernel)
    except UsageError as exc:
        raise CorpusError(file, "kernel" if kernel == entry.kernel else "--kernel", str(exc)) from None
    mmus = pm.mmus()
    if entry.mmu not in mmus:
        raise CorpusError(file, "mmu", f"unknown MMU {entry.mmu!r}; loaded MMU plugins:"
                          f" {', '.join(sorted(mmus)) or 'none'}")
    known = {o.name: o for o in pm.config_options()}
    assignments = []
    for name, value in entry.config.items():
        opt = known.get(name)
        if opt is None:
            raise CorpusError(file, f"config.{name}",
                              f"unknown config option; known: {', '.join(sorted(known))}")
        if type(value) is not type(opt.default):
            raise CorpusError(file, f"config.{name}", f"expected a value like {opt.default!r}, not {value!r}")
        assignments.append(f"{name}={('y' if value else 'n') if isinstance(value, bool) else value}")
    dests = sorted(pm.options().specs)
    for key in entry.options:
        if key not in dests:
            raise CorpusError(file, f"options.{key}", f"unknown plugin option; the loaded plugins'"
                              f" options: {', '.join(dests) or 'none'}")
    # Written before --panic-on-warn existed, when every WARNING ended a run.
    options = {"panic_on_warn": "1", **entry.options}
    try:
        return build_settings(pm, kernel=kernel, mmu=entry.mmu, config=assignments, cpus=entry.cpus,
                              options=options, seed=0, corpus=None,
                              plugins=(*entry.plugins, *plugins))
    except CorpusError:
        raise
    except UsageError as exc:
        raise CorpusError(file, "config", str(exc)) from None


def replay_entry(entry: Entry, *, kernel: str | None = None, expect_clean: bool = False,
                 plugins: Sequence[str] = ()) -> Replayed:
    """Replay one corpus entry on the model its configuration (or ``kernel``) gives.

    Its plugins (and ``plugins``) load through a fresh plugin manager, as ``-p``
    would; a field that does not fit the loaded plugins raises
    :class:`CorpusError` naming it. Plugin errors propagate as in ``run``.
    """
    file = entry.path or entry.title
    pm = FuzzerPluginManager()
    try:
        pm.load([*entry.plugins, *plugins])
    except UsageError as exc:
        raise CorpusError(file, "plugins", str(exc)) from None
    settings = entry_settings(pm, entry, kernel=kernel, plugins=plugins)
    # It goes on after exactly the WARNINGs it recorded, whatever is declared known today.
    model = Model.build(pm, settings.run).searching(entry.warned)
    try:
        m, failure = replay(model, entry.steps)
    except (ValueError, UsageError) as exc:  # a step this model cannot take
        raise CorpusError(file, "steps", str(exc)) from None
    assert failure is None or isinstance(failure, Finding)
    warned = (tuple(w.signature for w in failure.warned) if failure is not None
              else tuple(w.signature for w in m.warnings) if m is not None else ())
    return Replayed(entry, model, None if expect_clean else entry.expect, failure, warned)
