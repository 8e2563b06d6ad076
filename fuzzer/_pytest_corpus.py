"""pytest plugin: corpus files as test items, so ``pytest corpus/`` replays the regression corpus.

Registered under the ``pytest11`` entry point as ``fuzzer_corpus`` (turn it
off with ``-p no:fuzzer_corpus``). It collects every ``*.json`` file that has
a directory named ``corpus`` among its parents (below the rootdir); each is one
item that replays the entry and fails when the outcome differs from the
expectation, showing both signatures and the fuzzer's report.

The fuzzer is imported only once a corpus file is collected, so the plugin
costs nothing in test sessions that have none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fuzzer._regression import Replayed

#: Directory name that marks corpus files.
CORPUS_DIR = "corpus"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuzzer-corpus", "fuzzer regression corpus")
    group.addoption("--corpus-kernel", metavar="VERSION", default=None,
                    help="replay corpus entries on this kernel version instead of each entry's own")
    group.addoption("--corpus-expect-clean", action="store_true", default=False,
                    help="expect every corpus entry to run clean (does a fix make a crash pass?)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".json":
        return None
    # Directories from the rootdir's own name down: ``pytest corpus/`` may make the corpus
    # the rootdir, while a checkout that merely lives under some "corpus" is not one.
    root = parent.config.rootpath
    try:
        parts = file_path.relative_to(root.parent).parts[:-1]
    except ValueError:  # outside the rootdir: judge by its own directories
        parts = file_path.parts[:-1]
    if CORPUS_DIR not in parts:
        return None
    return CorpusFile.from_parent(parent, path=file_path)


class CorpusFile(pytest.File):
    """One corpus entry file: one item."""

    def collect(self) -> list[pytest.Item]:
        return [CorpusItem.from_parent(self, name="replay")]


class CorpusMismatch(Exception):
    """The entry replayed to another outcome than it expects."""

    def __init__(self, result: Replayed) -> None:
        super().__init__(result.outcome())
        self.result = result


class CorpusItem(pytest.Item):
    """Replay one entry; pass when its outcome is the expected one."""

    def runtest(self) -> None:
        from fuzzer._corpus import load
        from fuzzer._regression import replay_entry

        entry = load(self.path)
        result = replay_entry(entry, kernel=self.config.getoption("corpus_kernel"),
                              expect_clean=self.config.getoption("corpus_expect_clean"))
        if not result.ok:
            raise CorpusMismatch(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from fuzzer._errors import PluginError, UsageError

        exc = excinfo.value
        if isinstance(exc, CorpusMismatch):
            return exc.result.describe_mismatch()
        if isinstance(exc, UsageError):  # a malformed entry, an unknown plugin
            return f"ERROR: {exc}"
        if isinstance(exc, PluginError):
            import traceback

            return (f"ERROR: {exc}\nThis is the plugin's fault, not a kernel finding. Its traceback:\n"
                    + "".join(traceback.format_exception(exc.cause)))
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"corpus entry {self.path.name}"
