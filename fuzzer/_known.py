"""Known findings: failures of unmodified, released kernels that a campaign counts and searches past.

As syzkaller's ignores and syzbot's known-bug lists do: a plugin declares
each one through ``fuzzer_known_findings``; a run names those that apply to
its kernel in its header; an example that fails with a known signature is
counted ("1 known finding seen: ...") and the search goes on, without
changing the exit code. ``run --report-known`` reports them as ordinary
findings (stop, shrink, report, save).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from fuzzer._errors import Signature


@attrs.frozen
class KnownFinding:
    """A failure the model finds on an unmodified kernel that is known and understood."""

    signature: Signature
    """The failure's signature: kind, function, location (what examples are compared on)."""
    kernels: frozenset[str] = attrs.field(converter=frozenset)
    """The kernel versions it is known on; a version derived with ``based_on`` from one of
    them inherits it."""
    title: str
    """One line for people: what goes wrong."""
    fix: str = ""
    """The one-line fix it implies, or the upstream commit that fixes it."""
    reference: str = ""
    """Where the real kernel was seen doing it (a boot log, a mailing-list report)."""
    fixed_in: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    """Versions that carry the fix: a version derived from one of them (``v6.12-fixed``
    from ``v6.12``) does not inherit the finding from its ancestors."""

    def applies_to(self, kernel: str, based_on: Callable[[str], str | None]) -> bool:
        """Whether it is known on ``kernel``: named, or an ancestor along ``based_on`` is,
        unless a version on the way (nearer than the one it names) carries the fix."""
        seen: set[str] = set()
        version: str | None = kernel
        while version is not None and version not in seen:
            if version in self.fixed_in:
                return False
            if version in self.kernels:
                return True
            seen.add(version)
            version = based_on(version)
        return False


def known_for(findings: Iterable[KnownFinding], kernel: str,
              based_on: Callable[[str], str | None]) -> tuple[KnownFinding, ...]:
    """The findings known on ``kernel``, one per signature (the first declared wins)."""
    out: dict[Signature, KnownFinding] = {}
    for finding in findings:
        if finding.applies_to(kernel, based_on):
            out.setdefault(finding.signature, finding)
    return tuple(out.values())
