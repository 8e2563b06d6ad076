"""Shared fixtures: run the CLI in-process, and write throw-away plugin modules."""

from __future__ import annotations

import importlib
import io
import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from fuzzer import AUTOLOAD_ENV
from fuzzer._cli import main

_counter = itertools.count()


@attrs.frozen
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _no_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry-point plugins of the environment never leak in; tests that want them unset it."""
    monkeypatch.setenv(AUTOLOAD_ENV, "1")


@pytest.fixture(autouse=True)
def _own_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs save reproductions to ./corpus and examples to ./.hypothesis: never the checkout's."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli() -> Callable[..., Result]:
    """``cli("run", "--seed", "1")``: the command line in-process, output captured."""

    def run(*argv: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        rc = main(list(argv), out=out, err=err)
        return Result(rc, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def make_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], str]]:
    """``make_plugin("canary", source)`` writes a uniquely named module; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(stem: str, source: str) -> str:
        name = f"{stem}_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)
