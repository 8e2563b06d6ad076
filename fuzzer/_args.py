"""Operation argument types: small, plain and known to both engines.

An :class:`~fuzzer.Operation` declares each argument as one of these: the
walk samples it uniformly from its own ``random.Random``, the shrinker asks
it for simpler values, and the Hypothesis engine draws it from
:meth:`~ArgType.strategy`. Neither engine looks inside Hypothesis. Any other
Hypothesis strategy is still accepted: the Hypothesis engine draws it as
usual, and the walk samples from a pool of values Hypothesis drew from it
once, seeded with the campaign's seed (public Hypothesis API only).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

from fuzzer._errors import UsageError
from fuzzer._local_constants import local_constants_off

#: Values Hypothesis draws from a strategy that is not one of ours (once per campaign).
POOL_SIZE = 256


class ArgType:
    """An operation argument's type: how to sample it, simplify it, and draw it with Hypothesis."""

    def sample(self, rng: random.Random) -> Any:
        """A value drawn uniformly with ``rng``."""
        raise NotImplementedError

    def simpler(self, value: Any) -> list[Any]:
        """Simpler values than ``value`` to try, simplest first (empty: it is the simplest)."""
        raise NotImplementedError

    def strategy(self) -> st.SearchStrategy[Any]:
        """The same values as a Hypothesis strategy (the Hypothesis engine's)."""
        raise NotImplementedError

    @property
    def simplest(self) -> Any:
        """The value shrinking ends at."""
        value = self.sample(random.Random(0))
        simpler = self.simpler(value)
        return simpler[0] if simpler else value


@attrs.frozen
class IntRange(ArgType):
    """An integer from ``lo`` to ``hi``, both included; shrinks towards ``lo``."""

    lo: int
    hi: int

    def __attrs_post_init__(self) -> None:
        if self.lo > self.hi:
            raise UsageError(f"IntRange({self.lo}, {self.hi}): lo must not exceed hi")

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.lo, self.hi)

    def simpler(self, value: Any) -> list[Any]:
        lo = self.lo
        if not isinstance(value, int) or value <= lo:
            return []
        out = [lo]
        mid = lo + (value - lo) // 2
        if lo < mid < value:
            out.append(mid)
        if value - 1 > lo and value - 1 != mid:
            out.append(value - 1)
        return out

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.integers(self.lo, self.hi)


@attrs.frozen
class Choice(ArgType):
    """One of ``values`` (plain JSON values); shrinks towards the first."""

    values: tuple[Any, ...] = attrs.field(converter=lambda v: _as_tuple(v))

    def __attrs_post_init__(self) -> None:
        if not self.values:
            raise UsageError("Choice(): give at least one value")

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def simpler(self, value: Any) -> list[Any]:
        return _earlier(self.values, value)

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.sampled_from(self.values)


@attrs.frozen
class Boolean(ArgType):
    """True or False; shrinks towards False."""

    def sample(self, rng: random.Random) -> bool:
        return rng.random() < 0.5

    def simpler(self, value: Any) -> list[Any]:
        return [False] if value else []

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.booleans()


@attrs.frozen
class Constant(ArgType):
    """Always ``value``."""

    value: Any

    def sample(self, rng: random.Random) -> Any:
        return self.value

    def simpler(self, value: Any) -> list[Any]:
        return []

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.just(self.value)


@attrs.frozen
class Pool(ArgType):
    """Values Hypothesis drew once from a strategy that is not one of ours; the walk samples
    among them, and earlier ones (Hypothesis draws simple values first) are simpler."""

    values: tuple[Any, ...]
    source: st.SearchStrategy[Any] = attrs.field(eq=False)

    @classmethod
    def draw(cls, strategy: st.SearchStrategy[Any], seed: int) -> Pool:
        values: list[Any] = []

        @hypothesis.settings(max_examples=POOL_SIZE, database=None, deadline=None,
                             phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @hypothesis.given(strategy)
        def collect(value: Any) -> None:
            values.append(value)

        with local_constants_off():
            hypothesis.seed(seed)(collect)()
        if not values:
            raise UsageError(f"cannot draw any value from the argument strategy {strategy!r}")
        # Distinct values, in the order Hypothesis found them (simplest first).
        distinct = tuple(dict.fromkeys(values)) if all(_hashable(v) for v in values) else tuple(values)
        return cls(distinct, strategy)

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def simpler(self, value: Any) -> list[Any]:
        return _earlier(self.values, value)

    def strategy(self) -> st.SearchStrategy[Any]:
        return self.source


def arg_type(arg: Any, *, seed: int) -> ArgType:
    """``arg`` as an :class:`ArgType`: itself, or a :class:`Pool` drawn from a Hypothesis
    strategy with ``seed`` (the campaign's); anything else is a usage error."""
    if isinstance(arg, ArgType):
        return arg
    if isinstance(arg, st.SearchStrategy):
        return Pool.draw(arg, seed)
    raise UsageError(f"an operation argument must be an IntRange, Choice, Boolean, Constant or a"
                     f" Hypothesis strategy, not {arg!r}")


def strategy_of(arg: Any) -> st.SearchStrategy[Any]:
    """What the Hypothesis engine draws an argument from."""
    if isinstance(arg, ArgType):
        return arg.strategy()
    if isinstance(arg, st.SearchStrategy):
        return arg
    raise UsageError(f"an operation argument must be an IntRange, Choice, Boolean, Constant or a"
                     f" Hypothesis strategy, not {arg!r}")


def sampler(arg: Any, *, seed: int = 0) -> tuple[Callable[[random.Random], Any], Callable[[Any], list[Any]]]:
    """The walk's sampler of an argument, and its simplifier."""
    kind = arg_type(arg, seed=seed)
    return kind.sample, kind.simpler


def _as_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(values)


def _earlier(elements: Sequence[Any], value: Any) -> list[Any]:
    for i, e in enumerate(elements):
        if e == value:
            return list(elements[:i])
    return []


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
