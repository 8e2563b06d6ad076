"""The kernel's random draws as search decisions: which values to try, and simpler ones.

A modelled kernel draws random numbers (``get_random_long()`` for the patching
address). The boot step can carry those draws (``Step.draws``), consumed in
order by :meth:`Machine.random_below`; a draw narrowed to ``[0, n)`` takes
``value % n``, so the values below name the boundaries of any range without
knowing ``n``: 0 and 1 are the lowest two, -1 and -2 the highest two. A boot
step without draws takes every draw from its seed, as before draws were
decisions, so saved runs replay unchanged.
"""

from __future__ import annotations

import random

#: The boundary values the search favours: lowest, its neighbour, highest, its neighbour.
BOUNDARY = (0, 1, -1, -2)
#: Fraction of examples whose boot chooses the draws (the rest use the seed alone).
CHOSEN = 0.25
#: Chance that a chosen draw is a boundary value rather than a uniform 64-bit one.
AT_BOUNDARY = 0.75


def choose(rng: random.Random, count: int) -> tuple[int, ...]:
    """The draws for one example's boot: empty for most, else ``count`` chosen values."""
    if rng.random() >= CHOSEN:
        return ()
    return tuple(rng.choice(BOUNDARY) if rng.random() < AT_BOUNDARY else rng.getrandbits(64)
                 for _ in range(count))


def simpler(draws: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Simpler draw lists to try, simplest first: none at all (back to the seed), fewer,
    then each value made simpler the way an integer argument is (towards 0)."""
    if not draws:
        return []
    out: list[tuple[int, ...]] = [(), draws[:-1]]
    for i, v in enumerate(draws):
        for w in _simpler_value(v):
            out.append((*draws[:i], w, *draws[i + 1:]))
    return out


def _simpler_value(v: int) -> list[int]:
    if v == 0:
        return []
    if v < 0:
        return [0, -v - 1] if v < -1 else [0]
    return [0, v // 2] if v > 1 else [0]
