"""--panic-on-warn: a WARN the kernel goes on from, as a kernel booted without panic_on_warn.

A throw-away plugin warns at two sites -- a ``WARN_ON_ONCE`` and a ``WARN_ON`` -- on every
``canary.poke``, and BUGs on the second poke: behind its WARNINGs. Declared
known, those WARNINGs are printed and the kernel goes on (the default); the BUG is found,
shrunk, reported under them, saved and replayed.
"""

from __future__ import annotations

import json
import re

import pytest

from fuzzer import Signature, Step
from fuzzer._corpus import Entry, load
from fuzzer._engine.campaign import run_campaign
from fuzzer._regression import replay_entry
from fuzzer._report import format_failure
from fuzzer.testing import make_model, replay, search

CANARY = """
    import fuzzer
    from fuzzer.kernel import warn

    @fuzzer.routine("canary_poke", "kernel/canary.c")
    def canary_poke(cpu, n):
        pokes = cpu.m.state.setdefault("canary_pokes", [0])
        pokes[0] += 1
        yield
        warn(cpu, "kernel/canary.c:10", function="canary_poke")  # WARN_ON_ONCE
        yield
        warn(cpu, "kernel/canary.c:20", function="canary_poke", once=False)  # WARN_ON
        yield
        if pokes[0] >= 2:
            raise fuzzer.KernelBug("kernel/canary.c:30", function="canary_poke")

    @fuzzer.hookimpl
    def fuzzer_routines(config):
        return [canary_poke]

    @fuzzer.hookimpl
    def fuzzer_operations(config):
        return [fuzzer.Operation("canary.poke", lambda cpu, n: cpu.k.canary_poke(cpu, n),
                                 {"n": fuzzer.IntRange(0, 3)})]

    @fuzzer.hookimpl
    def fuzzer_known_findings(config):
        return [fuzzer.KnownFinding(
            signature=fuzzer.Signature("WARNING", "canary_poke", f"kernel/canary.c:{n}"),
            kernels={"v6.2"}, title=f"canary WARNING {n}") for n in (10, 20)]
    """

ONCE = Signature("WARNING", "canary_poke", "kernel/canary.c:10")
EVERY = Signature("WARNING", "canary_poke", "kernel/canary.c:20")
BUG = Signature("BUG", "canary_poke", "kernel/canary.c:30")


def poke(n: int) -> list[Step]:
    return [Step("start", cpu=0, name="canary.poke", args={"n": n}), Step("run", cpus=[0] * 8)]


STEPS = [Step("boot", seed=0), *poke(0), *poke(3)]


@pytest.fixture
def canary(make_plugin):
    return make_plugin("canary", CANARY)


def model(canary: str, panic_on_warn: str | None = None, **kw):
    options = {"panic_on_warn": panic_on_warn} if panic_on_warn is not None else None
    return make_model("v6.2", mmu="hash", plugins=[canary], options=options, **kw)


def test_known_warnings_are_printed_once_or_every_time_and_the_kernel_goes_on(canary):
    m, failure = replay(model(canary), STEPS)
    assert failure is not None and failure.signature == BUG
    # WARN_ON_ONCE once per boot, WARN_ON at each poke: the log the BUG comes after.
    assert [w.signature for w in failure.warned] == [ONCE, EVERY, EVERY]
    assert [w.signature for w in m.warnings] == [ONCE, EVERY, EVERY]
    assert failure.warned[0].trace[0].function == "canary_poke" and failure.warned[0].cpu == 0
    assert sum("not panic_on_warn: the kernel goes on" in line for line in m.log) == 3
    assert m.warned_past() == [ONCE, EVERY]


def test_panic_on_warn_1_ends_the_example_at_the_first_warning(canary):
    _, failure = replay(model(canary, "1"), STEPS)
    assert failure is not None and failure.signature == ONCE and not failure.warned


def test_known_ends_the_example_at_a_warning_that_is_not_known(canary):
    m = model(canary)
    _, failure = replay(m.searching([EVERY]), STEPS)  # canary.c:10 not known here
    assert failure is not None and failure.signature == ONCE
    _, failure = replay(m.searching([ONCE]), STEPS)
    assert failure is not None and failure.signature == EVERY
    assert [w.signature for w in failure.warned] == [ONCE]


def test_panic_on_warn_0_reports_the_first_unknown_warning_when_the_example_ends(canary):
    m = model(canary, "0").searching([ONCE])
    _, failure = replay(m, [Step("boot", seed=0), *poke(0)])
    assert failure is not None and failure.signature == EVERY
    assert [w.signature for w in failure.warned] == [ONCE]
    _, failure = replay(m, STEPS)  # a fatal failure first: it is the finding, the WARNINGs above it
    assert failure is not None and failure.signature == BUG
    _, failure = replay(model(canary, "0"), STEPS[:3])  # every WARNING known: nothing to report
    assert failure is None


def test_the_search_finds_the_failure_behind_known_warnings_and_shrinks_to_it(canary):
    """Found by the walk from a seed; the shrinker keeps the BUG as its target (the known
    WARNINGs do not end an example, so no candidate can stop at one) and ends at two pokes."""
    m = model(canary)
    out = search(m, seed=1, max_examples=300, time_budget=0)
    assert out.status == "failed", out
    f = out.failure
    assert f.signature == BUG and [w.signature for w in f.warned] == [ONCE, EVERY, EVERY]
    assert [s.action for s in f.steps].count("start") == 2
    assert out.stats.warned_seen.get(ONCE, 0) >= 1
    _, again = replay(m, f.steps)
    assert again is not None and again.signature == BUG


def test_the_hypothesis_engine_finds_it_behind_known_warnings_too(canary):
    """The state machine's examples go past the known WARNINGs as the walk's do (unshrunk
    here: Hypothesis's own shrinking of it runs ~1,100 examples)."""
    m = model(canary)
    out = run_campaign(m, seed=1, max_examples=300, time_budget=0, engine="hypothesis", shrink=False,
                       known=[k.signature for k in m.known])
    assert out.status == "failed", out
    assert out.failure.signature == BUG
    assert [w.signature for w in out.failure.warned] == [ONCE, *([EVERY] * (len(out.failure.warned) - 1))]
    assert out.stats.warned_seen.get(ONCE, 0) >= 1


def test_the_report_shows_the_warnings_above_the_failure(canary):
    m = model(canary)
    _, failure = replay(m, STEPS)
    text = format_failure(failure, m, failure.steps)
    assert text.count("------------[ cut here ]------------") == 4
    assert text.index("at kernel/canary.c:10") < text.index("at kernel/canary.c:20") < text.index(
        "kernel BUG at kernel/canary.c:30!")
    assert "Tainted: G        W" in text and "Panic on warn: known (the kernel went on after 3" in text


def test_a_corpus_entry_records_the_warnings_and_replays_past_exactly_those(canary, tmp_path):
    m = model(canary)
    _, failure = replay(m, STEPS)
    run = m.run
    entry = Entry.from_failure(kernel=run.kernel, mmu=run.mmu, cpus=run.cpus, plugins=[canary],
                               config=run.config.values, options=run.options, failure=failure,
                               steps=failure.steps)
    path = tmp_path / entry.filename()
    path.write_text(entry.dumps())
    data = json.loads(path.read_text())
    assert data["options"]["panic_on_warn"] == "known"
    assert data["warned"] == [{"kind": "WARNING", "function": "canary_poke",
                               "location": f"kernel/canary.c:{n}"} for n in (10, 20, 20)]
    loaded = load(path)
    assert loaded.warned == (ONCE, EVERY, EVERY)
    assert replay_entry(loaded).ok
    # Recorded with panic_on_warn=1, the same steps stop at the first WARNING: a different outcome.
    data["options"]["panic_on_warn"] = "1"
    path.write_text(json.dumps(data))
    result = replay_entry(load(path))
    assert not result.ok and result.actual == ONCE


def test_an_entry_written_before_the_option_replays_with_panic_on_warn_1(canary, tmp_path):
    m = model(canary)
    _, failure = replay(m.searching([]), STEPS)
    run = m.run
    options = {k: v for k, v in run.options.items() if k != "panic_on_warn"}
    entry = Entry.from_failure(kernel=run.kernel, mmu=run.mmu, cpus=run.cpus, plugins=[canary],
                               config=run.config.values, options=options, failure=failure,
                               steps=failure.steps)
    assert entry.expect == ONCE and not entry.warned
    path = tmp_path / entry.filename()
    path.write_text(entry.dumps())
    assert replay_entry(load(path)).ok


def test_run_reports_the_failure_behind_known_warnings_saves_and_replays_it(cli, canary, tmp_path):
    corpus = tmp_path / "corpus"
    res = cli("-p", canary, "run", "--kernel", "v6.2", "--mmu", "hash", "--seed", "1",
              "--max-examples", "300", "--corpus", str(corpus))
    assert res.rc == 1, res.out + res.err
    assert "1 failed: kernel BUG at kernel/canary.c:30!" in res.out
    assert re.search(r"^2 known findings seen: canary WARNING 10 \(\d+ examples?\); canary WARNING 20",
                     res.out, re.M), res.out
    [saved] = corpus.glob("*.json")
    assert [w["location"] for w in json.loads(saved.read_text())["warned"]] == [
        "kernel/canary.c:10", "kernel/canary.c:20", "kernel/canary.c:20"]
    res = cli("replay", str(corpus))
    assert res.rc == 0, res.out + res.err


def test_report_known_match_reports_only_the_matching_known_finding(cli, canary, tmp_path):
    res = cli("-p", canary, "run", "--kernel", "v6.2", "--mmu", "hash", "--seed", "1",
              "--max-examples", "300", "--corpus", "none", "--report-known", "canary.c:20")
    assert res.rc == 1, res.out + res.err
    assert "known finding: canary WARNING 20 [WARNING in canary_poke at kernel/canary.c:20]" \
        " -- reported (--report-known)" in res.out
    assert "[WARNING in canary_poke at kernel/canary.c:10] -- counted, the search goes on" in res.out
    assert "1 failed: WARNING: at kernel/canary.c:20" in res.out
    first = res.out.index("WARNING: CPU: 0 PID: 2 at kernel/canary.c:10")
    assert first < res.out.index("WARNING: CPU: 0 PID: 2 at kernel/canary.c:20")
