"""Print the table of modelled routines for docs/fidelity.md: ``python docs/fidelity_table.py``.

Builds the model of every kernel version on every MMU and lists, per routine
name, which function of which kernel file each version runs, with the first
line of its docstring.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

from fuzzer import FuzzerPluginManager
from fuzzer.testing import make_model


def rows() -> dict[str, dict[str, set[str]]]:
    """routine name -> "symbol (file)" -> set of "version/mmu" it runs at."""
    pm = FuzzerPluginManager()
    pm.load(autoload=False)
    table: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for version in pm.kernel_versions():
        for mmu in sorted(pm.mmus()):
            # The model run builds: each version's default config (its version_defaults).
            model = make_model(version.name, mmu=mmu)
            for name, info in model.routine_infos.items():
                doc = (inspect.getdoc(info.fn) or "").splitlines()
                head = doc[0] if doc else ""
                table[name][f"`{info.symbol}` ({info.file}) -- {head}"].add(f"{version.name}/{mmu}")
    return table


def markdown() -> str:
    out = ["| routine | runs at | kernel function (file) -- what the model follows |",
           "|---|---|---|"]
    order = {"v6.1": 0, "next-20221215": 1, "v6.2": 2, "v6.12": 3, "v6.12-fixed": 4}
    table = rows()
    for name in sorted(table):
        for target, where in sorted(table[name].items()):
            by_version: dict[str, set[str]] = defaultdict(set)
            for item in where:
                version, mmu = item.split("/")
                by_version[version].add(mmu)
            parts = []
            for version in sorted(by_version, key=lambda v: order.get(v, 99)):
                mmus = by_version[version]
                parts.append(version if len(mmus) > 1 else f"{version} ({next(iter(mmus))})")
            out.append(f"| `{name}` | {', '.join(parts)} | {target.replace('|', '/')} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
