"""Coverage of the modelled kernel: a cheap routine signal, and coverage.py when asked for.

Two signals, for two purposes:

* :class:`RoutineRecorder` -- which modelled routines an example entered.
  It wraps each entry of the resolved routine table in a plain function that
  records the routine's name and returns its generator, so it costs one call
  and one set insertion per routine call and needs no tracer (coverage.py's
  C tracer costs x2.5 over a Hypothesis run, x6-7 over emulator code; see
  shared/reference/performance-notes.md). It sees routines called through
  the table (``cpu.k.<name>``), which is how the model calls them; a routine
  called directly by name is not seen. It feeds the statistics and guidance.
* :class:`CoverageSession` -- coverage.py with branch coverage, restricted to
  the modelled kernel (``fuzzer/kernel``) and the loaded plugins' modules,
  never the host, Hypothesis or pluggy. ``run --coverage`` writes its data
  and an HTML report, and names the routines of the resolved table whose
  code never ran.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from fuzzer._routines import RoutineFn, RoutineInfo, RoutineTable

#: Where ``run --coverage`` writes by default (relative to the working directory).
DEFAULT_DIR = "fuzzer-coverage"
_KERNEL_DIR = Path(__file__).resolve().parent / "kernel"


class RoutineRecorder:
    """Records which routines each example entered, through a wrapped routine table."""

    def __init__(self, table: RoutineTable, infos: dict[str, RoutineInfo]) -> None:
        self.example: set[str] = set()
        """Routines entered by the current example (cleared by :meth:`end_example`)."""
        self.reached: set[str] = set()
        """Routines entered by any example so far."""
        self.table = RoutineTable()
        self.table._entered = self.example
        for name in infos:
            setattr(self.table, name, self._wrap(name, getattr(table, name)))

    def _wrap(self, name: str, fn: RoutineFn) -> Callable[..., Any]:
        seen = self.example

        def enter(*args: Any, **kwargs: Any) -> Any:
            # Not a generator itself: it returns the routine's, so call traces are unchanged.
            seen.add(name)
            return fn(*args, **kwargs)

        enter.__name__ = enter.__qualname__ = name
        enter.__wrapped__ = fn  # type: ignore[attr-defined]
        return enter

    def end_example(self) -> int:
        """Fold the current example into :attr:`reached`; return how many routines it entered."""
        n = len(self.example)
        self.reached |= self.example
        self.example.clear()
        return n


@attrs.frozen
class CoverageSummary:
    """What ``run --coverage`` measured."""

    directory: Path
    """Where the data (``.coverage``) and the HTML report (``html/``) are."""
    percent: float
    """coverage.py's total (statements and branches) over the measured files."""
    routines: int
    """Routines in the resolved table."""
    unreached: tuple[str, ...]
    """Routines of the resolved table none of whose body lines ran, sorted."""

    @property
    def html(self) -> Path:
        return self.directory / "html" / "index.html"


def measured_files(infos: Iterable[RoutineInfo], plugin_modules: Iterable[str]) -> list[str]:
    """coverage.py ``include`` patterns: the kernel model and the loaded plugins' code only."""
    patterns = {str(_KERNEL_DIR / "*"), str(_KERNEL_DIR / "*" / "*")}
    host = Path(__file__).resolve().parent
    for info in infos:
        patterns.add(os.path.realpath(info.fn.__code__.co_filename))
    for name in plugin_modules:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file is None:
            continue
        path = Path(file).resolve()
        if path.name == "__init__.py":
            patterns.add(str(path.parent / "*"))  # a package plugin: all its modules
        else:
            patterns.add(str(path))
    # The host itself is never measured, even if a plugin lives inside it.
    return sorted(p for p in patterns if Path(p).parent != host)


class CoverageSession:
    """coverage.py over the modelled kernel, for this process (``start``/``stop``), or data
    measured elsewhere (``add``)."""

    def __init__(self, directory: str | os.PathLike[str], include: list[str]) -> None:
        import coverage  # ~85 ms: only when asked for

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.include = include
        self.cov = coverage.Coverage(
            data_file=str(self.directory / ".coverage"),
            include=include, branch=True, messages=False, config_file=False,
        )

    def start(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.cov.start()

    def stop(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.cov.stop()
            self.cov.save()

    def add(self, datas: Iterable[bytes]) -> None:
        """Merge data measured elsewhere (``CoverageData.dumps`` of a cluster's shards)."""
        from coverage import CoverageData

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = self.cov.get_data()
            for blob in datas:
                part = CoverageData(no_disk=True)
                part.loads(blob)
                data.update(part)
            self.cov.save()

    def report(self, infos: dict[str, RoutineInfo]) -> CoverageSummary:
        """Write the HTML report; return the total and the routines that never ran."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = self.cov.get_data()
            try:
                percent = self.cov.html_report(directory=str(self.directory / "html"),
                                               title="Modelled kernel coverage")
            except Exception as exc:  # coverage.py's NoDataError: nothing measured ran
                if type(exc).__name__ != "NoDataError":
                    raise
                percent = 0.0
                (self.directory / "html").mkdir(exist_ok=True)
                (self.directory / "html" / "index.html").write_text(
                    "<p>No modelled kernel code ran.</p>\n", encoding="utf-8")
        unreached = []
        for name, info in infos.items():
            code = info.fn.__code__
            lines = [line for _, _, line in code.co_lines() if line is not None]
            executed = data.lines(os.path.realpath(code.co_filename)) or []
            first, last = min(lines), max(lines)
            # The def line itself "runs" when the generator is created; the body is after it.
            if not any(first < line <= last for line in executed):
                unreached.append(name)
        return CoverageSummary(self.directory, percent, len(infos), tuple(sorted(unreached)))
