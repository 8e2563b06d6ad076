"""Plugin command-line options: a host-side registry, as pytest's own ``Parser`` is.

A plugin declares its options in ``fuzzer_addoption(parser)`` with
``parser.addoption("--kprobe-sites", metavar="LIST", help=...)``; the host
keeps them as plain :class:`OptionSpec` records. The command line turns them
into argparse options (``fuzzer._cli``); a corpus entry and
``fuzzer.testing`` give their values by ``dest`` directly. Either way a
plugin reads the value as ``config.option(dest)``: it never sees argparse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from fuzzer._errors import UsageError

#: The actions an option may have: take a value (``store``), or be a flag.
ACTIONS = ("store", "store_true", "store_false")


@attrs.frozen
class OptionSpec:
    """One plugin option of ``run``."""

    names: tuple[str, ...]
    """Its spellings on the command line (``--kprobe-sites``)."""
    dest: str
    """The key of ``RunConfig.options`` (``kprobe_sites``)."""
    plugin: str
    """The plugin that declared it."""
    default: Any = None
    """The value when the option is not given."""
    type: Callable[[str], Any] | None = None
    """Converts the command-line text (``int``); None keeps the text."""
    help: str = ""
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    action: str = "store"
    """``store`` takes a value; ``store_true``/``store_false`` are flags."""

    def convert(self, value: Any) -> Any:
        """A value given as data (a corpus entry, ``fuzzer.testing``), checked like the
        command line checks it; text goes through :attr:`type`."""
        if self.action != "store":
            if not isinstance(value, bool):
                raise UsageError(f"{self.names[0]} is a flag: give true or false, not {value!r}")
            return value
        if isinstance(value, str) and self.type is not None:
            try:
                value = self.type(value)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"{self.names[0]}: invalid value {value!r}: {exc}") from None
        if self.choices is not None and value is not None and value not in self.choices:
            raise UsageError(f"{self.names[0]}: {value!r} is not one of"
                             f" {', '.join(map(repr, self.choices))}")
        return value


class OptionGroup:
    """The options of one plugin, titled after it (``plugin kprobes`` in ``run --help``)."""

    def __init__(self, registry: OptionRegistry, plugin: str) -> None:
        self.registry = registry
        self.plugin = plugin
        self.title = f"plugin {plugin}"

    def addoption(self, *names: str, dest: str | None = None, default: Any = None,
                  type: Callable[[str], Any] | None = None, help: str = "",
                  metavar: str | None = None, choices: Any = None, action: str = "store") -> None:
        """Declare an option (pytest's ``Parser.addoption``): long names only, so they
        cannot clash with the host's short ones."""
        if not names or not all(n.startswith("--") and len(n) > 2 for n in names):
            raise UsageError(f"plugin {self.plugin!r}: option names must be long (--name), not"
                             f" {', '.join(map(repr, names)) or 'none'}")
        if action not in ACTIONS:
            raise UsageError(f"plugin {self.plugin!r}: option {names[0]}: action must be one of"
                             f" {', '.join(ACTIONS)}, not {action!r}")
        if action != "store" and default is None:
            default = action == "store_false"
        spec = OptionSpec(names=tuple(names), dest=dest or names[0][2:].replace("-", "_"),
                          plugin=self.plugin, default=default, type=type, help=help, metavar=metavar,
                          choices=tuple(choices) if choices is not None else None, action=action)
        self.registry.add(spec)


class OptionRegistry:
    """Every loaded plugin's options, by ``dest``."""

    def __init__(self, reserved: Mapping[str, str] | None = None) -> None:
        self.specs: dict[str, OptionSpec] = {}
        self.groups: list[OptionGroup] = []
        self.reserved = dict(reserved or {})
        """dest -> option of the host's own (``run``'s); a plugin may not reuse them."""

    def group(self, plugin: str) -> OptionGroup:
        group = OptionGroup(self, plugin)
        self.groups.append(group)
        return group

    def add(self, spec: OptionSpec) -> None:
        taken = self.specs.get(spec.dest)
        if taken is not None or spec.dest in self.reserved:
            owner = (f"plugin {taken.plugin!r}" if taken is not None
                     else f"run's own {self.reserved[spec.dest]}")
            raise UsageError(f"plugin {spec.plugin!r}: option {spec.names[0]} (dest {spec.dest!r})"
                             f" is already {owner}'s")
        self.specs[spec.dest] = spec

    def of(self, group: OptionGroup) -> list[OptionSpec]:
        return [s for s in self.specs.values() if s.plugin == group.plugin]

    def defaults(self) -> dict[str, Any]:
        return {dest: spec.default for dest, spec in self.specs.items()}

    def values(self, given: Mapping[str, Any], *, what: str = "option") -> dict[str, Any]:
        """Every option's value: the defaults, then ``given`` (by dest), each checked; an
        unknown dest is a usage error naming the known ones."""
        out = self.defaults()
        for dest, value in given.items():
            spec = self.specs.get(dest)
            if spec is None:
                raise UsageError(f"unknown plugin {what} {dest!r}; the loaded plugins' options:"
                                 f" {', '.join(sorted(self.specs)) or 'none'}")
            out[dest] = spec.convert(value)
        return out
