"""Kernel configuration, kernel versions and the run's configuration."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs

from fuzzer._errors import UsageError

ConfigValue = bool | int | str
T = TypeVar("T")


@attrs.frozen
class ConfigOption:
    """A kernel config option the model understands (``CONFIG_DEBUG_VM``)."""

    name: str
    """Full name with the ``CONFIG_`` prefix."""
    default: ConfigValue
    """Value in the default fuzzing config; its type is the option's type."""
    help: str = ""
    """One line on what it changes in the model."""
    choices: tuple[ConfigValue, ...] | None = None
    """Allowed values for int/str options; ``None`` for any."""
    arch: str | None = None
    """The architecture the option belongs to (``powerpc``); ``None`` for every one."""
    version_defaults: Mapping[str, ConfigValue] = attrs.field(factory=dict)
    """Defaults that differ at some kernel versions, by version name (looked up along
    the version's ``based_on`` chain): the config a version's known report came from."""

    def default_at(self, version: VersionChain | None) -> ConfigValue:
        """The default at ``version`` (``default`` where no version along its chain differs)."""
        if version is not None:
            for name in version.names:
                if name in self.version_defaults:
                    return self.version_defaults[name]
        return self.default

    def parse(self, text: str) -> ConfigValue:
        """Parse a command-line value as Kconfig spells it (``y``/``n``, numbers)."""
        if isinstance(self.default, bool):
            low = text.strip().lower()
            if low in ("y", "yes", "1", "true", "on"):
                return True
            if low in ("n", "no", "0", "false", "off"):
                return False
            raise UsageError(f"{self.name} is a bool option: use {self.name}=y or {self.name}=n")
        value: ConfigValue
        if isinstance(self.default, int):
            try:
                value = int(text, 0)
            except ValueError:
                raise UsageError(f"{self.name} takes an integer, not {text!r}") from None
        else:
            value = text
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise UsageError(f"{self.name}={text} is not allowed; choose from: {allowed}")
        return value


@attrs.frozen
class KernelVersion:
    """A kernel version the model can run (``v6.2``, ``next-20221215``)."""

    name: str
    """What ``--kernel`` takes."""
    order: int
    """Sort key: higher is newer; the newest is the default."""
    description: str = ""
    """One line: what distinguishes it (the commit it follows)."""
    based_on: str | None = None
    """A version whose routines apply where this one defines none of its own."""
    arch: str = "powerpc"
    """The architecture it is a version of: only MMUs of the same ``arch`` run it."""


@attrs.frozen
class VersionChain:
    """A kernel version and the versions it is ``based_on``, nearest first.

    Everything version-dependent in the model resolves along it: routines
    (:func:`fuzzer._routines.resolve`), predicates (:meth:`is_`) and per-version
    tables such as cited line numbers (:meth:`lookup`). A version derived from
    ``v6.12`` is ``v6.12`` wherever it defines nothing of its own.
    """

    names: tuple[str, ...]
    """The version itself first, then its ``based_on``, and so on to the root."""

    @property
    def name(self) -> str:
        return self.names[0]

    @classmethod
    def of(cls, version: str, based_on: Mapping[str, str | None]) -> VersionChain:
        """The chain of ``version`` given each known version's ``based_on``."""
        names: list[str] = []
        v: str | None = version
        while v is not None and v not in names:
            names.append(v)
            v = based_on.get(v)
        return cls(tuple(names))

    def is_(self, *versions: str) -> bool:
        """Whether this version is, or is based on, one of ``versions`` (``in V61`` tests)."""
        return any(v in versions for v in self.names)

    def lookup(self, table: Mapping[str, T], what: str) -> T:
        """``table``'s entry for the nearest version of the chain that has one.

        A version with no entry anywhere along its chain is a model limitation
        naming it -- never a silent fallback to another version's data.
        """
        for v in self.names:
            if v in table:
                return table[v]
        from fuzzer._errors import ModelLimitation

        ancestors = f" or the versions it is based on ({', '.join(self.names[1:])})" if self.names[1:] else ""
        known = ", ".join(table) or "none"
        raise ModelLimitation(f"{what}: nothing for kernel {self.name}{ancestors}; known for: {known}")


@attrs.frozen
class KernelConfig:
    """The kernel's config: every known option with its value."""

    values: Mapping[str, ConfigValue] = attrs.field(converter=lambda m: dict(sorted(m.items())))

    def __getitem__(self, name: str) -> ConfigValue:
        return self.values[name]

    def enabled(self, name: str) -> bool:
        """``IS_ENABLED(CONFIG_X)``: false for unknown options, as in the kernel."""
        return bool(self.values.get(name, False))

    @classmethod
    def build(
        cls, options: Iterable[ConfigOption], assignments: Iterable[str],
        version: VersionChain | None = None,
    ) -> KernelConfig:
        """Defaults from ``options`` (at ``version``), then each ``CONFIG_X=VALUE`` in order."""
        known = {o.name: o for o in options}
        values: dict[str, ConfigValue] = {n: o.default_at(version) for n, o in known.items()}
        for text in assignments:
            name, sep, raw = text.partition("=")
            name = name.strip()
            if not name.startswith("CONFIG_"):
                name = "CONFIG_" + name
            if not sep:
                raise UsageError(f"--config takes CONFIG_X=VALUE, not {text!r}")
            if name not in known:
                raise UsageError(
                    f"unknown config option {name}; known: {', '.join(sorted(known))}"
                )
            values[name] = known[name].parse(raw)
        return cls(values)

    def describe(self) -> str:
        def fmt(v: ConfigValue) -> str:
            if isinstance(v, bool):
                return "y" if v else "n"
            return str(v)

        return " ".join(f"{k}={fmt(v)}" for k, v in self.values.items())


@attrs.frozen
class RunConfig:
    """Everything a run is a function of, besides its steps."""

    kernel: str
    """Kernel version name."""
    mmu: str
    """MMU plugin name (``radix``, ``hash``, ...)."""
    config: KernelConfig
    """The kernel config."""
    cpus: int = 4
    """Number of CPUs in the machine (all possible; CPU 0 boots)."""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    """Plugin command-line options (``--kprobes-sites`` and the like), by dest."""
    arch: str = "powerpc"
    """The architecture of the kernel version and MMU (``powerpc``, ``x86``)."""

    def enabled(self, name: str) -> bool:
        return self.config.enabled(name)

    @property
    def page_shift(self) -> int:
        if self.arch != "powerpc":
            return 12
        return 16 if self.config.enabled("CONFIG_PPC_64K_PAGES") else 12

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    def option(self, dest: str, default: Any = None) -> Any:
        return self.options.get(dest, default)
