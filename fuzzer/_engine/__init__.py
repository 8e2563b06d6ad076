"""The engine wing: engines, the campaign, replay, the shrinker and their records.

Private: the public face is :mod:`fuzzer.testing` and the command line.
"""

from fuzzer._engine.campaign import ENGINES, SHRINK_BUDGET, run_campaign
from fuzzer._engine.records import ExitCode, Finding, Outcome, Stats, StatsSnapshot, Status
from fuzzer._engine.replay import apply_step, replay
from fuzzer._engine.search import Engine, Events, Search
from fuzzer._engine.shrink import Shrinker

__all__ = ["ENGINES", "SHRINK_BUDGET", "Engine", "Events", "ExitCode", "Finding", "Outcome", "Search",
           "Shrinker", "Stats", "StatsSnapshot", "Status", "apply_step", "replay", "run_campaign"]
