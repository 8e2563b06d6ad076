"""What a campaign produces: findings, statistics, outcomes and exit codes, as frozen records."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from fuzzer._errors import Frame, KernelFailure, ModelLimitation, PluginError, Signature
from fuzzer._steps import Step


class ExitCode(enum.IntEnum):
    """What ``python -m fuzzer`` exits with (pytest's numbering where it applies)."""

    OK = 0
    """The campaign found nothing; every replayed corpus entry gave its expected outcome."""
    FAILED = 1
    """A kernel failure was found; or a replayed entry's outcome differed from its expectation."""
    INTERRUPTED = 2
    """Ctrl-C."""
    INTERNAL_ERROR = 3
    """The fuzzer itself failed, or a plugin raised (reported as that plugin's fault)."""
    USAGE_ERROR = 4
    """A bad option, an unknown plugin, a broken plugin, an unwritable output path."""


class Status(enum.StrEnum):
    """How a campaign ended (a ``str`` enum: it compares equal to its value)."""

    PASSED = "passed"
    FAILED = "failed"
    """A kernel failure, shrunk and replay-verified."""
    INTERRUPTED = "interrupted"
    ERROR = "error"
    """A plugin error or an internal error."""


@attrs.frozen(kw_only=True)
class Finding:
    """A kernel failure as the campaign keeps it: made once, where the engine catches the
    exception, with the steps that led to it. Reports, the corpus and the database read it."""

    kind: str
    """``BUG``, ``WARNING``, ``LOCKDEP``, ``KASAN``, ``INVARIANT``, ``HARDWARE``, ..."""
    message: str
    """The line the kernel (or the invariant) prints."""
    signature: Signature
    """What makes two findings the same bug."""
    at: str = ""
    """Kernel ``file:line``, where it has one."""
    detail: str = ""
    cpu: int | None = None
    """The CPU it happened on."""
    task: str | None = None
    """``PID: n Comm: name`` of the task that ran."""
    trace: tuple[Frame, ...] = ()
    """The modelled call trace, innermost first."""
    steps: tuple[Step, ...] = ()
    """The steps that reach it; a strict replay of them fails the same way."""
    context: Mapping[str, Any] = attrs.field(factory=dict)
    """Machine context: ``irqs_enabled``, ``in_interrupt``."""
    details: Mapping[str, Any] = attrs.field(factory=dict)
    """The failure's own fields beyond these (an oops's ``address`` and ``kuap`` line, an
    invariant's ``name``), also readable as attributes: ``finding.address``."""
    warned: tuple[Finding, ...] = ()
    """The WARNINGs the kernel printed and went on from before this failure, in order
    (``--panic-on-warn``): what its log shows above the failure; not part of its signature."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name != "details":
            details = object.__getattribute__(self, "details")
            if name in details:
                return details[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_failure(cls, exc: KernelFailure, steps: Iterable[Step]) -> Finding:
        return cls(kind=exc.kind, message=exc.message, signature=exc.signature, at=exc.at,
                   detail=getattr(exc, "detail", "") or "", cpu=exc.cpu, task=exc.task,
                   trace=tuple(exc.trace), steps=tuple(steps), context=dict(exc.context),
                   details=_details(exc),
                   warned=tuple(cls.from_failure(w, ()) for w in exc.warned if w is not exc))


#: Attributes every KernelFailure has: the Finding's own fields.
_COMMON = frozenset({"message", "at", "function", "cpu", "task", "step_index", "trace", "context",
                     "detail", "args", "warned"})


def _details(exc: KernelFailure) -> dict[str, Any]:
    """A failure's own plain fields (``KernelOops.address``, ``.kuap``), by name."""
    return {k: v for k, v in vars(exc).items()
            if not k.startswith("_") and k not in _COMMON and isinstance(v, bool | int | str | None)}


#: What an engine catches from an example: a kernel failure, a plugin's fault, or a model
#: limitation (an internal error).
Caught = Finding | PluginError | ModelLimitation


@attrs.frozen(kw_only=True)
class StatsSnapshot:
    """A campaign's statistics at one moment (what the progress line and ``--stats`` show)."""

    examples: int = 0
    emulated_steps: int = 0
    failures_seen: int = 0
    """Failing examples (a known finding's included)."""
    signatures: frozenset[Signature] = frozenset()
    """Distinct kernel failures seen (shrinking meets others on its way)."""
    routines: frozenset[str] = frozenset()
    """Modelled routines some example entered."""
    known_seen: Mapping[Signature, int] = attrs.field(factory=dict)
    """Examples that failed with a known finding's signature, by signature."""
    warned_seen: Mapping[Signature, int] = attrs.field(factory=dict)
    """Examples that printed a known finding's WARNING and went on (``--panic-on-warn``
    ``known`` or ``0``), by signature."""
    shrink_runs: int = 0
    shrink_cache_hits: int = 0
    """Shrink candidates answered from the cache instead of being run again."""
    pairs: int = 0
    """Interleaving feedback: ordered pairs of conflicting accesses seen (the most any
    worker saw)."""

    @property
    def distinct_failures(self) -> int:
        return len(self.signatures)

    @property
    def known_met(self) -> dict[Signature, int]:
        """Examples that met each known finding: failed with it, or warned and went on."""
        met = dict(self.known_seen)
        for sig, n in self.warned_seen.items():
            met[sig] = met.get(sig, 0) + n
        return met

    @classmethod
    def merge(cls, snapshots: Iterable[StatsSnapshot]) -> StatsSnapshot:
        """The sum of several workers' statistics."""
        snaps = list(snapshots)
        known: dict[Signature, int] = {}
        warned: dict[Signature, int] = {}
        for s in snaps:
            for sig, n in s.known_seen.items():
                known[sig] = known.get(sig, 0) + n
            for sig, n in s.warned_seen.items():
                warned[sig] = warned.get(sig, 0) + n
        return cls(warned_seen=warned,examples=sum(s.examples for s in snaps),
                   emulated_steps=sum(s.emulated_steps for s in snaps),
                   failures_seen=sum(s.failures_seen for s in snaps),
                   signatures=frozenset().union(*(s.signatures for s in snaps)),
                   routines=frozenset().union(*(s.routines for s in snaps)), known_seen=known,
                   shrink_runs=sum(s.shrink_runs for s in snaps),
                   shrink_cache_hits=sum(s.shrink_cache_hits for s in snaps),
                   pairs=max((s.pairs for s in snaps), default=0))


@attrs.define
class Stats:
    """What a campaign has done so far: one mutable tally for both engines, frozen into a
    :class:`StatsSnapshot` for anyone outside the engine."""

    examples: int = 0
    """Examples run: each from boot to its end-state checks."""
    emulated_steps: int = 0
    failures_seen: int = 0
    first_failure: Caught | None = None
    on_first_failure: Callable[[Caught], None] | None = None
    signatures: set[Signature] = attrs.Factory(set)
    routines: set[str] = attrs.Factory(set)
    known_seen: dict[Signature, int] = attrs.Factory(dict)
    warned_seen: dict[Signature, int] = attrs.Factory(dict)
    shrink_runs: int = 0
    shrink_cache_hits: int = 0
    pairs: int = 0

    def count(self, nsteps: int) -> None:
        self.examples += 1
        self.emulated_steps += nsteps

    def note_warned(self, signatures: Iterable[Signature]) -> None:
        """An example printed these known findings' WARNINGs and went on (each counted once)."""
        for sig in dict.fromkeys(signatures):
            self.warned_seen[sig] = self.warned_seen.get(sig, 0) + 1

    def note_failure(self, caught: Caught, *, known: bool = False) -> None:
        """A failing example (counted by :meth:`count` once it ends): tally it; report the
        first one that is not a known finding to ``on_first_failure``."""
        self.failures_seen += 1
        if isinstance(caught, Finding):
            self.signatures.add(caught.signature)
            if known:
                self.known_seen[caught.signature] = self.known_seen.get(caught.signature, 0) + 1
                return
        if self.first_failure is None:
            self.first_failure = caught
            if self.on_first_failure is not None:
                self.on_first_failure(caught)

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(examples=self.examples, emulated_steps=self.emulated_steps,
                             failures_seen=self.failures_seen, signatures=frozenset(self.signatures),
                             routines=frozenset(self.routines), known_seen=dict(self.known_seen),
                             warned_seen=dict(self.warned_seen),
                             shrink_runs=self.shrink_runs, shrink_cache_hits=self.shrink_cache_hits,
                             pairs=self.pairs)


@attrs.frozen(kw_only=True)
class Outcome:
    """What a campaign ended with; outlives the machines it ran."""

    status: Status
    failure: Finding | None = None
    """The verified, minimal kernel failure (``failed``); for ``interrupted``, one found
    before the interrupt, replayed but not shrunk."""
    steps: tuple[Step, ...] = ()
    """The minimal reproduction's steps (``failed``), or those reaching a plugin error."""
    error: BaseException | None = None
    """A plugin error or internal error (``error``)."""
    stats: StatsSnapshot = StatsSnapshot()
    duration: float = 0.0
    time_to_first_failure: float | None = None
    examples_to_first_failure: int | None = None
    """Which example first failed (1 = the first one run); shrinking runs more after it."""
    more_failures: tuple[Finding, ...] = ()
    """Other distinct failures of the same campaign (``failed``), each verified and shrunk,
    its reproduction in its ``steps``: a cluster's shards may each find a different one."""

    @property
    def examples(self) -> int:
        return self.stats.examples

    @property
    def emulated_steps(self) -> int:
        return self.stats.emulated_steps

    @property
    def routines(self) -> frozenset[str]:
        """Modelled routines the campaign's examples entered (the cheap routine signal)."""
        return self.stats.routines

    @property
    def distinct_failures(self) -> int:
        """Distinct kernel failure signatures seen, shrinking included."""
        return self.stats.distinct_failures
