"""Campaign statistics over time: ``run --stats PATH`` (JSON lines) and ``--stats-plot PATH``.

One sample per progress report (about one a second), and one when the
campaign ends::

    {"time": 1.52, "examples": 100, "steps": 24170, "steps_per_s": 15901.3,
     "examples_per_s": 65.8, "distinct_failures": 0, "routines": 49, "routines_total": 73,
     "interleavings": 21}

``time`` is seconds since the campaign started; ``steps`` are emulated
steps; ``distinct_failures`` counts distinct kernel failure signatures seen
(shrinking meets others on its way); ``routines`` is how many of the
resolved table's ``routines_total`` modelled routines some example entered;
``interleavings`` is the number of ordered pairs of conflicting accesses the
walk's interleaving feedback has seen (0 without it).
The plot (matplotlib, the ``plot`` extra) shows routines reached and
distinct failures against time.
"""

from __future__ import annotations

import json
import os
from typing import Any, TextIO

from fuzzer._engine.records import StatsSnapshot
from fuzzer._errors import UsageError

#: Seconds between two samples (the last one is always taken).
INTERVAL = 1.0
PLOT_SUFFIXES = (".png", ".svg")


def check_plot_path(path: str) -> None:
    """A usage error unless ``path`` is a PNG/SVG name and matplotlib is installed."""
    if os.path.splitext(path)[1].lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--stats-plot {path}: the name must end in .png or .svg")
    try:
        import matplotlib  # noqa: F401  (an optional extra)
    except ImportError:
        raise UsageError(f"--stats-plot {path} needs matplotlib: pip install 'ppc-kernel-fuzzer[plot]'"
                         ) from None


class StatsLog:
    """Samples a campaign's statistics over time; writes them as JSON lines as they come."""

    def __init__(self, path: str | None, routines_total: int) -> None:
        self.samples: list[dict[str, Any]] = []
        self.routines_total = routines_total
        self.last = -INTERVAL
        self.stream: TextIO | None = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115

    def sample(self, stats: StatsSnapshot, elapsed: float, *, final: bool = False) -> None:
        if not final and elapsed - self.last < INTERVAL:
            return
        self.last = elapsed
        self.add(elapsed, stats.examples, stats.emulated_steps, len(stats.signatures), len(stats.routines),
                 pairs=stats.pairs)

    def add(self, elapsed: float, examples: int, steps: int, distinct_failures: int, routines: int,
            *, pairs: int = 0) -> None:
        rec = {
            "time": round(elapsed, 3), "examples": examples, "steps": steps,
            "steps_per_s": round(steps / elapsed, 1) if elapsed else 0.0,
            "examples_per_s": round(examples / elapsed, 2) if elapsed else 0.0,
            "distinct_failures": distinct_failures, "routines": routines,
            "routines_total": self.routines_total, "interleavings": pairs,
        }
        self.samples.append(rec)
        if self.stream is not None:
            self.stream.write(json.dumps(rec) + "\n")
            self.stream.flush()

    def end(self, elapsed: float, examples: int, steps: int, distinct_failures: int, routines: int,
            *, pairs: int = 0) -> None:
        """The final sample: the outcome's totals (unless the last progress report gave them)."""
        last = self.samples[-1] if self.samples else None
        if last is None or (last["examples"], last["steps"], last["distinct_failures"], last["routines"],
                            last["interleavings"]) != (examples, steps, distinct_failures, routines, pairs):
            self.add(elapsed, examples, steps, distinct_failures, routines, pairs=pairs)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def plot(self, path: str, title: str) -> None:
        """Routines reached and distinct failures against time, as PNG or SVG (by the name)."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator

        samples = [{"time": 0.0, "routines": 0, "distinct_failures": 0}, *self.samples]
        t = [s["time"] for s in samples]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        try:
            ax.step(t, [s["routines"] for s in samples], where="post", color="tab:blue",
                    label="modelled routines reached")
            ax.axhline(self.routines_total, color="tab:blue", linestyle=":", linewidth=1,
                       label=f"routines in the model ({self.routines_total})")
            ax.set_xlabel("time (s)")
            ax.set_ylabel("routines reached", color="tab:blue")
            ax.set_ylim(0, self.routines_total * 1.05 + 1)
            ax2 = ax.twinx()
            ax2.step(t, [s["distinct_failures"] for s in samples], where="post", color="tab:red",
                     label="distinct failures")
            ax2.set_ylabel("distinct failures", color="tab:red")
            top = max(s["distinct_failures"] for s in samples)
            ax2.set_ylim(0, top + 1)
            ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
            lines = ax.get_legend_handles_labels()
            more = ax2.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
            ax.set_title(title)
            fig.tight_layout()
            fig.savefig(path)
        finally:
            plt.close(fig)
