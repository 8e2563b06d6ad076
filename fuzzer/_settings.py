"""A run's settings, built once from plain values and checked before any work starts.

:func:`build_settings` is the one door: the command line (``fuzzer._cli``), a
corpus entry (``replay``) and :mod:`fuzzer.testing` all come through it, so
each gets the same checks -- the kernel version against the MMU's
architecture, CPUs against ``CONFIG_SMP``, config options, plugin options,
every plugin's ``fuzzer_configure`` -- and the same frozen :class:`Settings`.
Output paths are checked here too, so a typo in ``--stats`` is one
``ERROR:`` line before the campaign, not a traceback after it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._config import KernelConfig, RunConfig, VersionChain
from fuzzer._errors import UsageError
from fuzzer._schedulers import SCHEDULERS

if TYPE_CHECKING:
    from fuzzer._plugins import FuzzerPluginManager

#: Search engines ``run --engine`` offers; the first is the default.
ENGINES = ("walk", "hypothesis")
DEFAULT_MAX_EXAMPLES = 10_000
DEFAULT_TIME_BUDGET = 60.0
#: The example database when ``run`` has no ``--seed`` (relative to the working directory).
DEFAULT_DB = os.path.join(".hypothesis", "fuzzer")
#: Where ``run`` saves reproductions by default (relative to the working directory).
DEFAULT_CORPUS = "corpus"
#: Where ``run --coverage`` writes by default (relative to the working directory).
DEFAULT_COVERAGE_DIR = "fuzzer-coverage"


@attrs.frozen(kw_only=True)
class Settings:
    """Everything ``run`` does is a function of these (and of the example database)."""

    run: RunConfig
    """The model's configuration: kernel, MMU, config, CPUs, plugin options."""
    plugins: tuple[str, ...] = ()
    """The ``-p`` values: loaded again by worker processes, recorded in corpus entries."""
    seed: int
    """The search's seed (drawn and printed when the user gave none)."""
    seed_given: bool = True
    """False when :attr:`seed` was drawn: then a database is on by default."""
    max_examples: int = DEFAULT_MAX_EXAMPLES
    """Stop after this many examples; 0: no limit."""
    time_budget: float = DEFAULT_TIME_BUDGET
    """Stop after this many seconds; 0: no limit."""
    engine: str = ENGINES[0]
    """``walk`` or ``hypothesis``."""
    guide: bool = False
    """Coverage guidance (the routines each example entered)."""
    cpu_scheduler: str = "mixed"
    """How the walk chooses the CPU of each emulated step (``--cpu-scheduler``): ``uniform``,
    ``pct``, ``bounded`` or ``mixed`` (one of those per example)."""
    interleave: bool = True
    """Interleaving feedback: keep examples that bring two routines together in a new order
    and replay them with that stretch rescheduled."""
    workers: int = 1
    """Worker processes: more than 1 runs on a Dask LocalCluster (with :attr:`scheduler`,
    the workers to wait for)."""
    scheduler: str | None = None
    """An existing Dask cluster's scheduler (``tcp://HOST:PORT`` or a scheduler file); None: none."""
    database: str | None = None
    """The example database: a directory or ``redis://`` URL; None: off."""
    corpus: str | None = DEFAULT_CORPUS
    """Where a reproduction is saved; None: not saved."""
    report_json: str | None = None
    stats: str | None = None
    stats_plot: str | None = None
    coverage: bool = False
    coverage_dir: str = DEFAULT_COVERAGE_DIR
    report_known: bool = False
    """Report known findings as ordinary ones (stop, shrink, report, save)."""
    report_known_match: str = ""
    """With :attr:`report_known`: only those whose signature (``WARNING in start_secondary
    at arch/powerpc/kernel/smp.c:1634``) contains it."""

    def reports(self, known: Any) -> bool:
        """Whether the known finding ``known`` is reported as an ordinary finding."""
        match = self.report_known_match
        return self.report_known and (not match or match in str(known.signature))

    @property
    def on_cluster(self) -> bool:
        """The campaign runs on a Dask cluster (``fuzzer._cluster``), not in this process."""
        return self.workers > 1 or self.scheduler is not None


def run_config(pm: FuzzerPluginManager, *, kernel: str | None = None, mmu: str = "radix",
               config: Sequence[str] = (), cpus: int | None = None,
               options: Mapping[str, Any] | None = None) -> RunConfig:
    """The model's configuration, checked, after every plugin's ``fuzzer_configure``.

    ``kernel`` None is the newest version of ``mmu``'s architecture; ``cpus``
    None is 4 (1 with ``CONFIG_SMP=n``); ``options`` are plugin options by dest
    (the others take their defaults).
    """
    arch = pm.arch_of(mmu)
    kernel = pm.resolve_kernel(kernel, mmu)
    chain = VersionChain.of(kernel, {v.name: v.based_on for v in pm.kernel_versions()})
    kconfig = KernelConfig.build(pm.config_options(arch), config, chain)
    if cpus is None:
        cpus = 4 if kconfig.enabled("CONFIG_SMP") else 1
    if not 1 <= cpus <= 64:
        raise UsageError(f"--cpus must be between 1 and 64, not {cpus}")
    if cpus > 1 and not kconfig.enabled("CONFIG_SMP"):
        raise UsageError(f"CONFIG_SMP=n models a uniprocessor kernel: use --cpus 1, not {cpus}")
    values = pm.options().values(options or {})
    run = RunConfig(kernel=kernel, mmu=mmu, config=kconfig, cpus=cpus, options=values, arch=arch)
    pm.call("fuzzer_configure", config=run)
    return run


def build_settings(pm: FuzzerPluginManager, *, kernel: str | None = None, mmu: str = "radix",
                   config: Sequence[str] = (), cpus: int | None = None,
                   options: Mapping[str, Any] | None = None, seed: int | None = None,
                   db: str | None = None, corpus: str | None = DEFAULT_CORPUS,
                   **knobs: Any) -> Settings:
    """The settings of a run, from plain values (see :class:`Settings` for ``knobs``).

    ``seed`` None draws one (and turns the default database on); ``db`` and
    ``corpus`` take ``"none"`` for off. Every check runs, output paths included.
    """
    run = run_config(pm, kernel=kernel, mmu=mmu, config=config, cpus=cpus, options=options)
    seed_given = seed is not None
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    # A seed the user chose must mean one outcome, whatever a database holds; a fresh
    # seed is a fresh search anyway, so it may as well try the recent failures first.
    if db is None and not seed_given:
        db = DEFAULT_DB
    settings = Settings(run=run, seed=seed, seed_given=seed_given, database=_off(db),
                        corpus=_off(corpus), **knobs)
    check(settings)
    return settings


def _off(value: str | None) -> str | None:
    return None if value is None or value.lower() == "none" else value


def check(settings: Settings) -> None:
    """Every check of a run's knobs that needs no work: usage errors, one line each."""
    from fuzzer._database import check_spec
    from fuzzer._stats import check_plot_path

    if settings.engine not in ENGINES:
        raise UsageError(f"unknown engine {settings.engine!r}; engines: {', '.join(ENGINES)}")
    if settings.cpu_scheduler not in SCHEDULERS:
        raise UsageError(f"unknown CPU scheduler {settings.cpu_scheduler!r}; schedulers:"
                         f" {', '.join(SCHEDULERS)}")
    if settings.workers < 1:
        raise UsageError(f"--workers must be 1 or more, not {settings.workers}")
    if settings.database is not None:
        check_spec(settings.database)
    for option, path in (("--report-json", settings.report_json), ("--stats", settings.stats),
                         ("--stats-plot", settings.stats_plot)):
        if path is not None:
            check_output_file(option, path)
    if settings.stats_plot is not None:
        check_plot_path(settings.stats_plot)
    if settings.corpus is not None:
        check_output_dir("--corpus", settings.corpus)
    if settings.coverage:
        check_output_dir("--coverage-dir", settings.coverage_dir)


def check_output_file(option: str, path: str) -> None:
    """A usage error unless ``path`` can be written: its directory exists, and it is not a
    directory or a file that cannot be written."""
    file = Path(path)
    parent = file.parent
    if file.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: no such directory: {parent}")
    if file.exists():
        if not os.access(file, os.W_OK):
            raise UsageError(f"{option} {path}: the file cannot be written (permission denied)")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot create a file in {parent} (permission denied)")


def check_output_dir(option: str, path: str) -> None:
    """A usage error unless ``path`` is a writable directory, or can be made as one (its
    nearest existing ancestor is a writable directory)."""
    directory = Path(path)
    if directory.exists():
        if not directory.is_dir():
            raise UsageError(f"{option} {path}: not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: the directory cannot be written (permission denied)")
        return
    ancestor = directory.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot create it in {ancestor} (permission denied)")
