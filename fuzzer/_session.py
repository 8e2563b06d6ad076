"""A ``run`` session: the settings, the model and the streams the lifecycle hooks share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from fuzzer._engine.search import Events
from fuzzer._known import KnownFinding
from fuzzer._model import Model
from fuzzer._plugins import FuzzerPluginManager, call_blamed
from fuzzer._settings import Settings

if TYPE_CHECKING:
    from fuzzer._engine.records import ExitCode


@attrs.define(eq=False)
class Session:
    """What every ``fuzzer_session_*`` hook gets: one per ``run``."""

    settings: Settings
    model: Model
    pluginmanager: FuzzerPluginManager
    out: TextIO
    """Where the report goes (stdout)."""
    err: TextIO
    """Where progress and warnings go (stderr)."""
    known: tuple[KnownFinding, ...] = ()
    """The known findings that apply to this run's kernel."""
    notes: list[str] = attrs.Factory(list)
    """Lines printed after the report, before the summary line (outputs written, coverage)."""
    exitcode: ExitCode | None = None
    """Set by the terminal reporter once the outcome is known."""

    def hook(self, name: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook with this session, through pluggy, blaming a plugin that raises."""
        return self.pluginmanager.call(name, arch=self.model.run.arch, session=self, **kwargs)

    def events(self, *, examples: bool = True) -> Events:
        """The engine's callbacks, resolved once: None for a hook no plugin implements, so an
        example pays nothing for it (trio's ``_instrumentation`` habit). ``examples=False``
        leaves out the per-example hooks (worker processes run those examples)."""
        def bound(name: str, *params: str) -> Callable[..., None] | None:
            pm = self.pluginmanager
            caller = pm.caller(name, self.model.run.arch)
            if not caller.get_hookimpls():
                return None

            def call(*args: Any) -> None:
                call_blamed(caller, name, pm.plugin_name, pm.is_core, session=self,
                            **dict(zip(params, args, strict=True)))

            return call

        return Events(
            example_start=bound("fuzzer_example_start") if examples else None,
            example_finish=bound("fuzzer_example_finish", "machine", "failure") if examples else None,
            progress=bound("fuzzer_campaign_progress", "stats", "elapsed"),
            failure_found=_with_worker(bound("fuzzer_failure_found", "failure", "worker")),
            failure_shrunk=bound("fuzzer_failure_shrunk", "failure"),
        )


def _with_worker(call: Callable[..., None] | None) -> Callable[..., None] | None:
    """``failure_found(failure)`` from an engine: no worker."""
    if call is None:
        return None
    return lambda failure, worker=None: call(failure, worker)
