"""The plugin host: pluggy, loaded pytest-style (built-ins, entry points, ``-p``)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
from collections.abc import Iterable, Sequence
from typing import Any

import pluggy

from fuzzer import _hookspec
from fuzzer._config import ConfigOption, KernelVersion
from fuzzer._errors import PluginError, UsageError
from fuzzer._specs import MmuSpec

#: The modelled kernel core, always loaded: it cannot be blocked with ``-p no:``.
ESSENTIAL_PLUGINS = ("boot", "cpuhp", "mm", "patching")
#: Built-in plugins, loaded by the same mechanism as third-party ones.
BUILTIN_PLUGINS = (
    "radix", "hash", "kprobes", "optprobes", "jump_label", "fixups", "ftrace", "interrupts",
    "breakpoints",
)
#: Third-party plugins register under this entry-point group.
ENTRY_POINT_GROUP = "fuzzer"
#: Set (to anything but empty) to skip entry-point plugins; ``-p`` still loads.
AUTOLOAD_ENV = "FUZZER_DISABLE_PLUGIN_AUTOLOAD"

hookimpl = pluggy.HookimplMarker("fuzzer")


def module_for(name: str) -> str:
    """The module a short plugin name stands for (``radix`` -> ``fuzzer_plugins.radix``)."""
    if name in ESSENTIAL_PLUGINS:
        return f"fuzzer.kernel.{name}"
    if name in BUILTIN_PLUGINS:
        return f"fuzzer_plugins.{name}"
    return name


class FuzzerPluginManager(pluggy.PluginManager):
    """pluggy's manager with pytest's habits: prefixed hooks, origins, blocking."""

    def __init__(self) -> None:
        super().__init__("fuzzer")
        self.add_hookspecs(_hookspec)
        self.origins: dict[str, str] = {}
        """Plugin name -> where it came from (essential, built-in, entry point, -p)."""
        self.blocked_names: set[str] = set()
        self._versions: list[KernelVersion] | None = None
        self._mmus: dict[str, MmuSpec] | None = None
        self._config_options: list[ConfigOption] | None = None

    # pytest's parse_hookimpl_opts: a ``fuzzer_`` function is a hook without a marker,
    # and a marked function without the prefix is refused.
    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if not name.startswith("fuzzer_"):
            if opts is not None:
                raise pluggy.PluginValidationError(
                    plugin, f"hook implementation {name!r} must be named fuzzer_<area>_<event>"
                )
            return None
        method = getattr(plugin, name, None)
        if not inspect.isroutine(method):
            return None
        if opts is None:
            opts = {
                "wrapper": False,
                "hookwrapper": False,
                "optionalhook": False,
                "tryfirst": False,
                "trylast": False,
                "specname": None,
            }
        return opts

    # -- loading -----------------------------------------------------------------

    def load(self, requested: Sequence[str] = (), *, autoload: bool | None = None) -> None:
        """Load essential, built-in, entry-point and ``-p`` plugins, then validate.

        ``requested`` holds the ``-p`` values in order: ``NAME`` loads a plugin
        by short name or module name, ``no:NAME`` blocks one.
        """
        for value in requested:
            if value.startswith("no:"):
                name = value[3:]
                if name in ESSENTIAL_PLUGINS:
                    raise UsageError(
                        f"plugin {name!r} is the modelled kernel core and cannot be blocked;"
                        f" blockable built-ins: {', '.join(BUILTIN_PLUGINS)}"
                    )
                self.blocked_names.add(name)
                self.set_blocked(name)
        for name in ESSENTIAL_PLUGINS:
            self.import_plugin(name, "essential (modelled kernel core)")
        for name in BUILTIN_PLUGINS:
            if name not in self.blocked_names:
                self.import_plugin(name, "built-in")
        if autoload is None:
            autoload = not os.environ.get(AUTOLOAD_ENV)
        if autoload:
            self._load_entry_points()
        for value in requested:
            if not value.startswith("no:"):
                self.import_plugin(value, "-p")
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            raise UsageError(f"plugin {self._name_of(exc.plugin)!r}: {_one_line(exc)}") from None

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self.blocked_names or self.get_plugin(ep.name) is not None:
                continue
            dist = getattr(ep, "dist", None)
            origin = f"entry point of {dist.name} {dist.version}" if dist else "entry point"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise UsageError(
                    f"cannot load plugin {ep.name!r} ({origin}): {type(exc).__name__}: {exc};"
                    f" set {AUTOLOAD_ENV}=1 or pass -p no:{ep.name} to skip it"
                ) from None
            self._register(plugin, ep.name, origin)

    def import_plugin(self, name: str, origin: str) -> None:
        """Import a plugin by short or module name and register it under ``name``."""
        if self.is_blocked(name) or self.get_plugin(name) is not None:
            return
        modname = module_for(name)
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == modname or modname.startswith(exc.name + ".")):
                raise UsageError(
                    f"unknown plugin {name!r}: no module named {modname!r};"
                    f" built-in plugins: {', '.join(BUILTIN_PLUGINS)}"
                ) from None
            raise UsageError(f"cannot load plugin {name!r}: {exc}") from None
        except Exception as exc:
            raise UsageError(
                f"cannot load plugin {name!r}: {type(exc).__name__}: {exc}"
            ) from None
        self._register(module, name, origin)

    def _register(self, plugin: Any, name: str, origin: str) -> None:
        try:
            self.register(plugin, name)
        except pluggy.PluginValidationError as exc:
            raise UsageError(f"plugin {name!r}: {_one_line(exc)}") from None
        except ValueError as exc:  # a plugin registered twice under two names
            raise UsageError(f"plugin {name!r}: {_one_line(exc)}") from None
        self.origins[name] = origin

    def _name_of(self, plugin: Any) -> str:
        return self.get_name(plugin) or repr(plugin)

    def plugin_name(self, plugin: Any) -> str:
        return self._name_of(plugin)

    @staticmethod
    def serves(plugin: Any, arch: str) -> bool:
        """Whether ``plugin`` takes part in a run of ``arch``: unless its module sets
        ``FUZZER_ARCH`` to another architecture."""
        own = getattr(plugin, "FUZZER_ARCH", None)
        return own is None or own == arch

    def is_core(self, name: str) -> bool:
        return name in ESSENTIAL_PLUGINS

    def plugin_modules(self) -> dict[str, str]:
        """Module name -> plugin name for every non-core module plugin."""
        out: dict[str, str] = {}
        for name, plugin in self.list_name_plugin():
            if plugin is None or self.is_core(name):
                continue
            mod = getattr(plugin, "__name__", None) or type(plugin).__module__
            if isinstance(mod, str):
                out[mod] = name
        return out

    # -- calling hooks with blame --------------------------------------------------

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook`` in registration order, blaming errors.

        Registration order is: the kernel core, built-ins, entry points, ``-p``
        (``tryfirst``/``trylast`` move an implementation to an end). A plugin
        that raises is reported as that plugin's fault (:class:`PluginError`),
        never as a kernel failure. With a ``config`` argument, plugins of another
        architecture (``FUZZER_ARCH``) are skipped.
        """
        arch = getattr(kwargs.get("config"), "arch", None)
        out: list[tuple[str, Any]] = []
        for impl in self.impls(hook):
            if arch is not None and not self.serves(impl.plugin, arch):
                continue
            name = self._name_of(impl.plugin)
            args = [kwargs[a] for a in impl.argnames]
            try:
                result = impl.function(*args)
            except UsageError:
                raise
            except Exception as exc:
                if self.is_core(name):
                    raise
                raise PluginError(name, f"hook {hook}", exc) from exc
            if result is not None:
                out.append((name, result))
        return out

    def impls(self, hook: str) -> list[Any]:
        """Implementations of ``hook`` in registration order (tryfirst last in pluggy's list)."""
        impls = getattr(self.hook, hook).get_hookimpls()
        first = [i for i in impls if i.tryfirst]
        last = [i for i in impls if i.trylast]
        rest = [i for i in impls if not i.tryfirst and not i.trylast]
        return [*reversed(first), *rest, *last]

    def config_options(self, arch: str | None = None) -> list[ConfigOption]:
        """Every plugin's config options; with ``arch``, those of that architecture
        (and the architecture-neutral ones)."""
        if arch is not None:
            return [o for o in self.config_options() if o.arch in (None, arch)]
        if self._config_options is None:
            opts: list[ConfigOption] = []
            owner: dict[str, str] = {}
            for plugin, result in self.call_each("fuzzer_addconfig"):
                for opt in result:
                    if opt.name in owner:
                        raise UsageError(
                            f"config option {opt.name} is defined by plugins"
                            f" {owner[opt.name]!r} and {plugin!r}"
                        )
                    owner[opt.name] = plugin
                    opts.append(opt)
            self._config_options = opts
        return self._config_options

    def kernel_versions(self, arch: str | None = None) -> list[KernelVersion]:
        """Every modelled kernel version, oldest first; with ``arch``, that architecture's."""
        if arch is not None:
            return [v for v in self.kernel_versions() if v.arch == arch]
        if self._versions is None:
            vs: dict[str, KernelVersion] = {}
            for plugin, result in self.call_each("fuzzer_kernel_versions"):
                for v in result:
                    if v.name in vs:
                        raise UsageError(f"kernel version {v.name!r} is defined twice (again by {plugin!r})")
                    vs[v.name] = v
            self._versions = sorted(vs.values(), key=lambda v: v.order)
        return self._versions

    def mmus(self) -> dict[str, MmuSpec]:
        if self._mmus is None:
            out: dict[str, MmuSpec] = {}
            for plugin, result in self.call_each("fuzzer_mmus"):
                for spec in result:
                    if spec.name in out:
                        raise UsageError(f"MMU {spec.name!r} is defined twice (again by {plugin!r})")
                    out[spec.name] = spec
            self._mmus = out
        return self._mmus

    def arch_of(self, mmu: str) -> str:
        """The architecture of MMU ``mmu``; a usage error naming the loaded MMUs if unknown."""
        mmus = self.mmus()
        if mmu not in mmus:
            raise UsageError(f"unknown MMU {mmu!r}; loaded MMU plugins: {', '.join(sorted(mmus)) or 'none'}")
        return mmus[mmu].arch

    def resolve_kernel(self, kernel: str | None, mmu: str) -> str:
        """The ``--kernel`` for ``--mmu``: the newest version of the MMU's architecture when
        ``kernel`` is None; a one-line usage error naming the valid choices for a bad pair."""
        arch = self.arch_of(mmu)
        valid = [v.name for v in self.kernel_versions(arch)]
        if kernel is None:
            if not valid:
                raise UsageError(f"no kernel version models {arch} (--mmu {mmu}): no loaded plugin has one")
            return valid[-1]
        if kernel in valid:
            return kernel
        other = {v.name: v for v in self.kernel_versions()}.get(kernel)
        what = (f"kernel version {kernel!r} is a {other.arch} version" if other is not None
                else f"unknown kernel version {kernel!r}")
        raise UsageError(f"{what}; --mmu {mmu} ({arch}) runs: {', '.join(valid) or 'none'}")

    def hooks_of(self, plugin: Any) -> list[str]:
        callers = self.get_hookcallers(plugin) or []
        return sorted(c.name for c in callers)

    def listing(self) -> Iterable[tuple[str, str, str, list[str]]]:
        """(name, origin, module file, hooks) for every loaded plugin."""
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            where = getattr(plugin, "__file__", None) or repr(plugin)
            yield name, self.origins.get(name, "registered"), str(where), self.hooks_of(plugin)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
