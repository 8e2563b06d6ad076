"""The regression corpus: one JSON file per reproduction, stable across Hypothesis and plugin changes.

An entry is plain data: the configuration a failure needs (kernel version,
MMU, every config option, CPU count, plugin options, the ``-p`` plugins), the
exact :class:`~fuzzer.Step` sequence, and the expected outcome -- a failure
signature or ``"clean"``. Loading one parses JSON and validates every field;
it never imports or evaluates anything the file names (its plugins are
loaded only when it is replayed, through the plugin manager, as ``-p`` would).

Format, ``"schema": 1`` (fields in this order; ``fixed_by`` optional)::

    {
      "schema": 1,
      "title": "kernel BUG at arch/powerpc/mm/pgtable.c:333!",
      "fixed_by": "980411a4d1bb",
      "kernel": "next-20221215",
      "mmu": "radix",
      "cpus": 4,
      "plugins": [],
      "config": {"CONFIG_DEBUG_VM": true, ...},
      "options": {"kprobe_sites": null},
      "expect": {"kind": "BUG", "function": "assert_pte_locked",
                 "location": "arch/powerpc/mm/pgtable.c:333"},
      "warned": [],
      "steps": [
        {"action": "boot", "seed": 0}
      ]
    }

``expect`` is ``"clean"`` for a reproduction that must run without a kernel
failure. ``warned`` (optional, written when not empty) lists, in order, the
WARNINGs the steps print and the kernel goes on from before that outcome
(``options.panic_on_warn``); a replay goes on after exactly those and must
print them again. An entry whose ``options`` have no ``panic_on_warn`` was
written before the option existed, when every WARNING ended a run: it
replays with ``panic_on_warn`` ``"1"``. A change to the format that old readers would misread bumps
``schema``; a reader refuses versions it does not know.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._errors import Signature, UsageError
from fuzzer._steps import Step, StepFormatError

if TYPE_CHECKING:
    from fuzzer._engine.records import Finding

#: The corpus format version this fuzzer writes and reads.
SCHEMA = 1
#: Where ``run`` saves and ``replay`` looks by default (relative to the working directory).
DEFAULT_DIR = "corpus"
#: Top-level fields, in the order they are written.
FIELDS = ("schema", "title", "fixed_by", "kernel", "mmu", "cpus", "plugins", "config", "options",
          "expect", "warned", "steps")
_OPTIONAL = ("fixed_by", "warned")
#: Fields that describe an entry to people; they do not make it a different reproduction.
_DESCRIPTIVE = ("title", "fixed_by")
_WHOLE = "<document>"


class CorpusError(UsageError):
    """A corpus file that cannot be used: printed as ``ERROR: <file>: <field>: <problem>``."""

    def __init__(self, file: str | os.PathLike[str], field: str, problem: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.file}: {field}: {problem}")


@attrs.frozen
class Entry:
    """One reproduction: a configuration, its steps and the outcome they must give."""

    title: str
    """One line for people: what the reproduction shows."""
    kernel: str
    """Kernel version the steps run on (``--kernel``)."""
    mmu: str
    """MMU plugin (``--mmu``)."""
    cpus: int
    """CPUs in the machine (``--cpus``)."""
    plugins: tuple[str, ...]
    """The ``-p`` values the run had (``fuzzer_plugins.mistakes.irqs_early``, ``no:kprobes``)."""
    config: Mapping[str, bool | int | str] = attrs.field(converter=lambda m: dict(sorted(m.items())))
    """Every kernel config option, explicitly, so a later change of default changes nothing."""
    options: Mapping[str, Any] = attrs.field(converter=lambda m: dict(sorted(m.items())))
    """Plugin command-line options by dest (``kprobe_sites``), defaults included."""
    expect: Signature | None
    """The failure the steps must give, or None for "clean"."""
    steps: tuple[Step, ...] = attrs.field(converter=lambda s: _step_tuple(s))
    """The exact step sequence, replayed without Hypothesis."""
    fixed_by: str | None = None
    """The commit that fixes the bug, where known."""
    warned: tuple[Signature, ...] = attrs.field(default=(), converter=lambda s: _signatures(s))
    """The WARNINGs the steps print, in order, that the kernel goes on from before the
    expected outcome (known findings under ``--panic-on-warn``)."""
    path: Path | None = attrs.field(default=None, eq=False)
    """The file it was loaded from or saved to (not part of the entry)."""

    @classmethod
    def from_failure(
        cls,
        *,
        kernel: str,
        mmu: str,
        cpus: int,
        plugins: Sequence[str],
        config: Mapping[str, bool | int | str],
        options: Mapping[str, Any],
        failure: Finding | None,
        steps: Sequence[Step],
        title: str = "",
    ) -> Entry:
        """The entry for a run's outcome (a kernel failure, or None for clean)."""
        return cls(
            title=title or (failure.message if failure is not None else "runs clean"),
            kernel=kernel, mmu=mmu, cpus=cpus, plugins=tuple(plugins), config=config,
            options={k: _plain(v) for k, v in options.items()},
            expect=failure.signature if failure is not None else None, steps=tuple(steps),
            warned=tuple(w.signature for w in failure.warned) if failure is not None else (),
        )

    @property
    def expected(self) -> str:
        """The expected outcome as people read it."""
        return str(self.expect) if self.expect is not None else "clean"

    def dedup_key(self) -> tuple[Any, ...]:
        """Two entries with the same key show the same bug (or the same clean run)."""
        return (self.kernel, self.mmu, tuple(sorted(self.plugins)), self.expect)

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA, "title": self.title}
        if self.fixed_by:
            out["fixed_by"] = self.fixed_by
        out.update(kernel=self.kernel, mmu=self.mmu, cpus=self.cpus, plugins=list(self.plugins),
                   config=dict(self.config), options=dict(self.options))
        if self.expect is None:
            out["expect"] = "clean"
        else:
            out["expect"] = {"kind": self.expect.kind, "function": self.expect.function,
                             "location": self.expect.location}
        if self.warned:
            out["warned"] = [{"kind": w.kind, "function": w.function, "location": w.location}
                             for w in self.warned]
        out["steps"] = [s.to_json() for s in self.steps]
        return out

    def dumps(self) -> str:
        """The file's text: indented, one step per line so a diff shows which step changed."""
        data = self.to_json()
        steps = data.pop("steps")
        head = json.dumps(data, indent=2, ensure_ascii=False)
        body = ",\n".join("    " + json.dumps(s, ensure_ascii=False) for s in steps)
        return head[:-2] + ',\n  "steps": [\n' + body + "\n  ]\n}\n"

    def content_hash(self) -> str:
        """Hash of what makes it this reproduction (not its title): names the file."""
        data = {k: v for k, v in self.to_json().items() if k not in _DESCRIPTIVE}
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def filename(self) -> str:
        """``<kernel>-<kind>-<function>-<hash12>.json``, or ``<kernel>-clean-<hash12>.json``."""
        if self.expect is None:
            parts = [self.kernel, "clean"]
        else:
            parts = [self.kernel, self.expect.kind.lower(), self.expect.function]
        stem = "-".join(_slug(p) for p in parts if p)
        return f"{stem}-{self.content_hash()}.json"

    @classmethod
    def from_json(cls, data: Any, file: str | os.PathLike[str]) -> Entry:
        """Validate plain data as an entry; a bad field raises :class:`CorpusError` naming it."""
        if not isinstance(data, dict):
            raise CorpusError(file, _WHOLE, f"expected a JSON object, not {_kind(data)}")

        def bad(field: str, problem: str) -> CorpusError:
            return CorpusError(file, field, problem)

        if "schema" not in data:
            raise bad("schema", f'missing; a corpus entry starts with "schema": {SCHEMA}')
        schema = data["schema"]
        if schema != SCHEMA or isinstance(schema, bool):
            raise bad("schema", f"unknown version {schema!r}; this fuzzer reads version {SCHEMA}")
        for key in data:
            if key not in FIELDS:
                raise bad(str(key), f"unknown field; the fields of schema {SCHEMA}: {', '.join(FIELDS)}")
        for key in FIELDS:
            if key not in data and key not in _OPTIONAL:
                raise bad(key, "missing")

        def string(field: str, value: Any) -> str:
            if not isinstance(value, str) or not value.strip():
                raise bad(field, f"expected a non-empty string, not {_kind(value)}")
            return value

        title = string("title", data["title"])
        fixed_by = data.get("fixed_by")
        if fixed_by is not None:
            string("fixed_by", fixed_by)
        kernel = string("kernel", data["kernel"])
        mmu = string("mmu", data["mmu"])
        cpus = data["cpus"]
        if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 64:
            raise bad("cpus", f"expected a whole number from 1 to 64, not {cpus!r}")
        plugins = data["plugins"]
        if not isinstance(plugins, list):
            raise bad("plugins", f"expected a list of -p names, not {_kind(plugins)}")
        for i, name in enumerate(plugins):
            string(f"plugins[{i}]", name)
        config = data["config"]
        if not isinstance(config, dict):
            raise bad("config", f"expected an object of CONFIG_X: value, not {_kind(config)}")
        for key, value in config.items():
            if not key.startswith("CONFIG_"):
                raise bad(f"config.{key}", "not a kernel config option (CONFIG_X)")
            if not isinstance(value, bool | int | str):
                raise bad(f"config.{key}", f"expected true/false, a number or a string, not {_kind(value)}")
        options = _options(data["options"], bad)
        expect = _expectation(data["expect"], bad)
        warned = _warned(data.get("warned", []), bad)
        steps = _steps(data["steps"], cpus, bad)
        return cls(title=title, kernel=kernel, mmu=mmu, cpus=cpus, plugins=tuple(plugins),
                   config=config, options=options, expect=expect, steps=tuple(steps),
                   fixed_by=fixed_by, warned=tuple(warned), path=Path(file))


def _options(options: Any, bad: Any) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise bad("options", f"expected an object of plugin options, not {_kind(options)}")
    for key, value in options.items():
        if value is not None and not isinstance(value, bool | int | float | str):
            raise bad(f"options.{key}", f"expected a plain value, not {_kind(value)}")
    return options


def _warned(raw_warned: Any, bad: Any) -> list[Signature]:
    if not isinstance(raw_warned, list):
        raise bad("warned", f"expected a list of WARNING signatures, not {_kind(raw_warned)}")
    warned = []
    for i, raw in enumerate(raw_warned):
        sig = _expectation(raw, lambda f, p, i=i: bad(f.replace("expect", f"warned[{i}]", 1), p))
        if sig is None or sig.kind != "WARNING":
            raise bad(f"warned[{i}]", "expected a WARNING's kind, function and location")
        warned.append(sig)
    return warned


def _steps(raw_steps: Any, cpus: int, bad: Any) -> list[Step]:
    if not isinstance(raw_steps, list) or not raw_steps:
        raise bad("steps", f"expected a non-empty list of steps, not {_kind(raw_steps)}")
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        try:
            step = Step.from_json(raw)
        except StepFormatError as exc:
            field = f"steps[{i}]" + (f".{exc.field}" if exc.field else "")
            raise bad(field, exc.problem) from None
        for field, n in [("cpu", step.cpu), *((f"cpus[{j}]", c) for j, c in enumerate(step.cpus))]:
            if n is not None and n >= cpus:
                raise bad(f"steps[{i}].{field}", f"CPU {n} does not exist: the entry has {cpus} CPUs")
        steps.append(step)
    return steps


def _expectation(value: Any, bad: Any) -> Signature | None:
    if value == "clean":
        return None
    if not isinstance(value, dict):
        raise bad("expect", f'expected "clean" or an object with kind, function, location,'
                  f" not {_kind(value)}")
    for key in value:
        if key not in ("kind", "function", "location"):
            raise bad(f"expect.{key}", "unknown field; an expectation has kind, function, location")
    parts = []
    for key in ("kind", "function", "location"):
        if key not in value:
            raise bad(f"expect.{key}", "missing")
        if not isinstance(value[key], str) or (key != "location" and not value[key]):
            raise bad(f"expect.{key}", f"expected a string, not {_kind(value[key])}")
        parts.append(value[key])
    return Signature(*parts)


def load(path: str | os.PathLike[str]) -> Entry:
    """Read and validate one corpus file. Runs no code the file names."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(path, _WHOLE, f"cannot read it: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (truncated?)" if not text.rstrip().endswith("}") else ""
        raise CorpusError(path, _WHOLE, f"not valid JSON at line {exc.lineno} column {exc.colno}"
                          f"{hint}: {exc.msg}") from None
    return Entry.from_json(data, path)


def find(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The corpus files under ``paths`` (files as given, directories searched for ``*.json``)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*.json") if f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise CorpusError(p, _WHOLE, "no such file or directory")
    return out


@attrs.frozen
class Saved:
    """Where :func:`save` put an entry, or the existing entry that already shows its bug."""

    path: Path
    new: bool
    """False when an entry with the same signature (or content) was already there."""
    skipped: tuple[CorpusError, ...] = ()
    """Files in the directory that could not be read while looking for duplicates."""


def save(entry: Entry, directory: str | os.PathLike[str]) -> Saved:
    """Write ``entry`` into ``directory``, unless an entry there shows the same bug.

    Deduplicated by :meth:`Entry.dedup_key` (kernel, MMU, plugins and failure
    signature), so one bug found by many inputs is one entry. Named by content,
    so concurrent writers never clobber each other's different entries (two of
    them racing may each save the same bug once; never a mixed file). Written to
    a temporary file in the same directory, then renamed, so a killed run leaves
    a whole file or none.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / entry.filename()
    skipped: list[CorpusError] = []
    for path in sorted(directory.rglob("*.json")):
        try:
            other = load(path)
        except CorpusError as exc:
            skipped.append(exc)
            continue
        if path == target or other.dedup_key() == entry.dedup_key():
            return Saved(path, False, tuple(skipped))
    # Not mkstemp: its files are 0600, and an entry is for sharing (so the umask applies).
    tmp = directory / f".{target.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(entry.dumps())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Saved(target, True, tuple(skipped))


def _step_tuple(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


def _signatures(sigs: Iterable[Signature]) -> tuple[Signature, ...]:
    return tuple(sigs)


def _plain(value: Any) -> Any:
    """A plugin option's value as JSON keeps it (anything else as its text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-") or "x"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a bool", type(None): "null",
             int: "a number", float: "a number"}
    text = names.get(type(value), type(value).__name__)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text += f" ({value!r})"
    return text
