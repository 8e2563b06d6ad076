"""The public API is what ``__all__`` says, and nothing outside the package reaches past it
(trio's ``_tests/test_exports.py``)."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest

import fuzzer
import fuzzer.kernel
import fuzzer.testing

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = [fuzzer, fuzzer.kernel, fuzzer.testing]


@pytest.mark.parametrize("module", PUBLIC, ids=lambda m: m.__name__)
def test_all_lists_exactly_the_public_names(module: types.ModuleType) -> None:
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), "a name is listed twice in __all__"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"in __all__ but not defined: {missing}"
    # A package re-exports (everything of the project it imports is public); a module
    # exports what it defines. Constants have no __module__: a package's count too.
    package = hasattr(module, "__path__")
    public = set()
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        owner = getattr(value, "__module__", None)
        if owner is None:
            if package and isinstance(value, int | str | tuple):
                public.add(name)
        elif owner == module.__name__ or (package and owner.startswith("fuzzer")):
            public.add(name)
    assert public - set(exported) == set(), "public names missing from __all__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _private(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "fuzzer" and any(p.startswith("_") and not p.startswith("__") for p in parts[1:])


def test_plugins_examples_and_docs_use_only_the_public_api() -> None:
    offenders = []
    for top in ("plugins", "examples", "docs"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "tests" in path.relative_to(ROOT).parts:
                continue
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in _imports(path) if _private(n)]
    for path in sorted([*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]):
        for block in re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            tree = ast.parse(block)
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if _private(n)]
    assert not offenders, "private imports outside the package:\n" + "\n".join(offenders)


def test_the_kernel_core_is_importable_under_its_public_name() -> None:
    from fuzzer.kernel import patching

    assert fuzzer.kernel.context is patching.context
    assert set(patching.__all__) <= set(dir(patching))
