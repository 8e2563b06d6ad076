"""The plugin host: pluggy, loaded pytest-style (built-ins, entry points, ``-p``)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pluggy

import fuzzer._hookspec as _hookspec
from fuzzer._config import ConfigOption, KernelVersion, RunConfig
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError, UsageError
from fuzzer._known import KnownFinding, known_for
from fuzzer._options import OptionRegistry
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
        self._options: OptionRegistry | None = None
        self.session_plugins: set[str] = set()
        """Names of the session plugins ``run`` registers (the terminal, --stats, ...)."""
        self.reserved_options: dict[str, str] = {}
        """dest -> option name of the host's own ``run`` options (set by the command line)."""

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

    # -- calling hooks through pluggy, with blame ---------------------------------------

    def caller(self, hook: str, arch: str | None = None) -> Any:
        """pluggy's caller of ``hook``; with ``arch``, one that leaves out the plugins of
        another architecture (``FUZZER_ARCH``), through :meth:`subset_hook_caller`.

        Wrappers, ``firstresult``, historic calls and hook-call monitoring all apply.
        """
        full = getattr(self.hook, hook)
        if arch is None:
            return full
        others = [impl.plugin for impl in full.get_hookimpls() if not self.serves(impl.plugin, arch)]
        return self.subset_hook_caller(hook, others) if others else full

    def call(self, hook: str, *, arch: str | None = None, **kwargs: Any) -> list[Any]:
        """Call ``hook`` through pluggy; the results in plugin registration order (the kernel
        core, built-ins, entry points, ``-p``), None results left out.

        A plugin that raises is reported as that plugin's fault (:class:`PluginError`),
        never as a kernel failure. With ``config`` among the arguments, plugins of another
        architecture are left out.
        """
        if arch is None:
            arch = getattr(kwargs.get("config"), "arch", None)
        results = call_blamed(self.caller(hook, arch), hook, self._name_of, self.is_core, **kwargs)
        return list(reversed(results)) if isinstance(results, list) else results

    def implemented(self, hook: str, arch: str | None = None) -> bool:
        """Whether any loaded plugin (of ``arch``) implements ``hook``."""
        return bool(self.caller(hook, arch).get_hookimpls())

    def owner_of(self, obj: Any) -> str:
        """The plugin a function or object was defined in, by its module (a package
        plugin's submodules included); its module's name when no plugin owns it."""
        mod = getattr(obj, "__module__", None) or type(obj).__module__
        owners = {getattr(p, "__name__", None): n for n, p in self.list_name_plugin() if p is not None}
        name = mod
        while name:
            if name in owners:
                return owners[name]
            name = name.rpartition(".")[0]
        return mod

    def config_options(self, arch: str | None = None) -> list[ConfigOption]:
        """Every plugin's config options; with ``arch``, those of that architecture
        (and the architecture-neutral ones)."""
        if arch is not None:
            return [o for o in self.config_options() if o.arch in (None, arch)]
        if self._config_options is None:
            opts = self._listing("fuzzer_addconfig", "config option", lambda o: o.name)
            self._config_options = list(opts.values())
        return self._config_options

    def kernel_versions(self, arch: str | None = None) -> list[KernelVersion]:
        """Every modelled kernel version, oldest first; with ``arch``, that architecture's."""
        if arch is not None:
            return [v for v in self.kernel_versions() if v.arch == arch]
        if self._versions is None:
            vs = self._listing("fuzzer_kernel_versions", "kernel version", lambda v: v.name)
            self._versions = sorted(vs.values(), key=lambda v: v.order)
        return self._versions

    def mmus(self) -> dict[str, MmuSpec]:
        if self._mmus is None:
            self._mmus = self._listing("fuzzer_mmus", "MMU", lambda m: m.name)
        return self._mmus

    def options(self) -> OptionRegistry:
        """The plugins' command-line options: ``fuzzer_addoption`` once per plugin (through
        pluggy, with only that plugin's implementations), each into its own titled group."""
        if self._options is None:
            registry = OptionRegistry(self.reserved_options)
            for impl in reversed(self.hook.fuzzer_addoption.get_hookimpls()):
                if impl.hookwrapper or impl.wrapper:
                    continue
                name = self._name_of(impl.plugin)
                others = [p for p in self.get_plugins() if p is not impl.plugin]
                caller = self.subset_hook_caller("fuzzer_addoption", others)
                call_blamed(caller, "fuzzer_addoption", self._name_of, self.is_core,
                            parser=registry.group(name), pluginmanager=self)
            self._options = registry
        return self._options

    def model_plugins(self) -> list[str]:
        """The loaded plugins' names, in registration order, without ``run``'s session plugins."""
        return [n for n, p in self.list_name_plugin() if p is not None and n not in self.session_plugins]

    def known_findings(self, run: RunConfig) -> tuple[KnownFinding, ...]:
        """The known findings plugins declare for ``run``'s kernel (``fuzzer_known_findings``)."""
        versions = {v.name: v for v in self.kernel_versions()}
        declared = [k for result in self.call("fuzzer_known_findings", config=run) for k in result]
        for k in declared:
            if not isinstance(k, KnownFinding):
                raise UsageError(f"fuzzer_known_findings returned {k!r}, not a fuzzer.KnownFinding")
        return known_for(declared, run.kernel, lambda v: versions[v].based_on if v in versions else None)

    def _listing(self, hook: str, what: str, key: Callable[[Any], str]) -> dict[str, Any]:
        """The concatenated results of a listing hook by name; a name defined twice is a
        usage error naming the plugins that define it."""
        out: dict[str, Any] = {}
        for result in self.call(hook):
            for item in result:
                if key(item) in out:
                    owners = self._definers(hook, key(item), key)
                    raise UsageError(f"{what} {key(item)} is defined by more than one plugin:"
                                     f" {', '.join(map(repr, owners))}")
                out[key(item)] = item
        return out

    def _definers(self, hook: str, name: str, key: Callable[[Any], str]) -> list[str]:
        """Which plugins' ``hook`` implementations list ``name`` (only for an error message:
        each implementation is called on its own)."""
        owners = []
        for impl in getattr(self.hook, hook).get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                continue
            result = impl.function() or ()
            if any(key(item) == name for item in result):
                owners.append(self._name_of(impl.plugin))
        return list(reversed(owners))

    def arch_of(self, mmu: str) -> str:
        """The architecture of MMU ``mmu``; a usage error naming the loaded MMUs if unknown."""
        mmus = self.mmus()
        if mmu not in mmus:
            raise UsageError(f"unknown MMU {mmu!r}; loaded MMU plugins: {', '.join(sorted(mmus)) or 'none'}")
        return mmus[mmu].arch

    def check_kernel(self, kernel: str) -> None:
        """A usage error naming the choices unless ``kernel`` is a loaded version (any
        architecture; :meth:`resolve_kernel` checks it against an MMU)."""
        versions = [v.name for v in self.kernel_versions()]
        if kernel not in versions:
            raise UsageError(f"unknown kernel version {kernel!r}; choose from: {', '.join(versions)}")

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


def call_blamed(caller: Any, hook: str, name_of: Callable[[Any], str],
                is_core: Callable[[str], bool], **kwargs: Any) -> Any:
    """``caller(**kwargs)``; an exception a plugin's implementation raised becomes a
    :class:`PluginError` naming that plugin and the hook.

    The plugin is the one whose implementation (a wrapper included) is outermost in the
    traceback. Usage errors and kernel failures pass through, and so do the kernel
    core's own exceptions (internal errors).
    """
    try:
        return caller(**kwargs)
    except (UsageError, PluginError, KernelFailure, ModelLimitation):
        raise
    except Exception as exc:
        codes = {impl.function.__code__: impl.plugin for impl in caller.get_hookimpls()
                 if hasattr(impl.function, "__code__")}
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            plugin = codes.get(frame.f_code)
            if plugin is not None:
                name = name_of(plugin)
                if is_core(name):
                    raise
                raise PluginError(name, f"hook {hook}", exc) from exc
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
