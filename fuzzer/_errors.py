"""The three kinds of failure, kept apart: kernel failures, plugin errors, usage errors."""

from __future__ import annotations

from typing import Any

import attrs


class UsageError(Exception):
    """Bad input from the user: an option, a plugin name, a corpus file.

    Printed as one line ``ERROR: <message>`` and exit code 4.
    """


class PluginError(Exception):
    """A plugin raised outside the modelled kernel's own failure paths.

    It is that plugin's fault, never a kernel finding. ``plugin`` names the
    plugin, ``where`` the hook or routine it raised from.
    """

    def __init__(self, plugin: str, where: str, cause: BaseException) -> None:
        self.plugin = plugin
        self.where = where
        self.cause = cause
        super().__init__(
            f"plugin {plugin!r} raised in {where}: {type(cause).__name__}: {cause}"
        )

    def __reduce__(self) -> Any:  # keep it picklable for worker processes
        return (PluginError, (self.plugin, self.where, self.cause))


class ModelLimitation(Exception):
    """The model was asked to do something it does not model (an internal error)."""


# --------------------------------------------------------------------------
# Kernel failures: findings.
# --------------------------------------------------------------------------


@attrs.frozen
class Frame:
    """One entry of a modelled call trace."""

    function: str
    """Kernel function name, e.g. ``assert_pte_locked``."""
    file: str
    """Kernel source file it lives in, e.g. ``arch/powerpc/mm/pgtable.c``."""
    inlined: bool = False
    """True where the kernel inlines it (the real oops would not show it)."""


@attrs.frozen
class Signature:
    """What makes two failures the same bug: the kind plus the modelled location."""

    kind: str
    """One of the ``KernelFailure.kind`` values (``BUG``, ``WARNING``, ...)."""
    function: str
    """Kernel function (or invariant name) where it fired."""
    location: str
    """Kernel ``file:line`` where it fired, or ``""`` for an invariant."""

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.kind} in {self.function}{where}"


class KernelFailure(Exception):
    """A finding: the modelled kernel failed one of its own assertions or an invariant.

    Raised from modelled kernel code (or from an invariant); the machine fills
    in the context (CPU, step, call trace) where it catches it.
    """

    kind = "FAILURE"

    def __init__(self, message: str, *, at: str = "", function: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at
        self.function = function
        self.cpu: int | None = None
        self.task: str | None = None
        self.step_index: int | None = None
        self.trace: tuple[Frame, ...] = ()
        self.context: dict[str, Any] = {}
        self.warned: tuple[KernelWarning, ...] = ()
        """The WARNINGs the kernel printed and went on from before this failure, in order
        (``panic_on_warn`` not set for them: see :meth:`fuzzer.Machine.warn`)."""

    @property
    def signature(self) -> Signature:
        function = self.function or (self.trace[0].function if self.trace else "")
        return Signature(self.kind, function, self.at)


class KernelBug(KernelFailure):
    """A modelled ``BUG()`` / ``BUG_ON()``: prints ``kernel BUG at file:line!``."""

    kind = "BUG"

    def __init__(self, at: str, *, function: str = "", detail: str = "") -> None:
        super().__init__(f"kernel BUG at {at}!", at=at, function=function)
        self.detail = detail


class KernelWarning(KernelFailure):
    """A modelled ``WARN_ON()``.

    Raised, it ends the example as ``panic_on_warn`` would. Given to
    :meth:`fuzzer.Machine.warn` (:func:`fuzzer.kernel.warn`) instead, the run's
    ``--panic-on-warn`` decides: end the example, or print it and let the code
    go on, as the kernel does without panic_on_warn (known findings by default).
    """

    kind = "WARNING"

    def __init__(self, at: str, *, function: str = "", detail: str = "") -> None:
        super().__init__(f"WARNING: at {at}", at=at, function=function)
        self.detail = detail


class LockdepSplat(KernelFailure):
    """A lockdep- or might_sleep-style report (``BUG: sleeping function called ...``)."""

    kind = "LOCKDEP"


class MemoryCorruption(KernelFailure):
    """A KASAN-style report: use of freed page-table memory and the like."""

    kind = "KASAN"


class InvariantViolation(KernelFailure):
    """A property a correct kernel keeps was broken (checked by the fuzzer, not printed by the kernel)."""

    kind = "INVARIANT"

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"invariant {name!r} violated: {detail}", function=name)
        self.name = name
        self.detail = detail


class HardwareViolation(KernelFailure):
    """The kernel broke a rule of the architecture (a missing ptesync, isync, ...)."""

    kind = "HARDWARE"

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"architecture rule {rule!r} broken: {detail}", function=rule)
        self.rule = rule
        self.detail = detail


class EndStateViolation(KernelFailure):
    """After every CPU ran to completion, a property of the end state did not hold."""

    kind = "END-STATE"

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"end state {name!r} violated: {detail}", function=name)
        self.name = name
        self.detail = detail


class Deadlock(KernelFailure):
    """Every CPU with work to do is waiting (the kernel would report a hard/soft lockup).

    Its signature names the routine that most of the waiting CPUs wait in, when two or
    more do (``DEADLOCK in smp_call_function_many_cond``), else ``deadlock``.
    """

    kind = "DEADLOCK"

    def __init__(self, detail: str, *, function: str = "deadlock") -> None:
        super().__init__(f"deadlock: {detail}", function=function)
        self.detail = detail


class Livelock(KernelFailure):
    """The step bound was reached with work still running."""

    kind = "LIVELOCK"

    def __init__(self, detail: str) -> None:
        super().__init__(f"livelock: {detail}", function="livelock")
        self.detail = detail


class KernelOops(KernelFailure):
    """A bad kernel data access: NULL or a freed object's poison, as ``__bad_page_fault`` prints it.

    ``arch/powerpc/mm/fault.c`` (``__bad_page_fault``, 6.1:568, 6.12:612):
    below ``PAGE_SIZE`` it is "Kernel NULL pointer dereference", else
    "Unable to handle kernel data access"; a data storage interrupt says
    "on read"/"on write", a data segment interrupt (an address outside every
    segment, as SLUB's poison is) does not; then ``die("Kernel access of bad
    area", regs, SIGSEGV)``. A NULL access is a user address, so KUAP's
    ``bad_kernel_fault`` prints its "Kernel attempted to read user page" line
    first. The signature is the faulting function (the innermost modelled frame).
    """

    kind = "OOPS"

    def __init__(self, address: int, *, write: bool = False, what: str = "") -> None:
        access = "write" if write else "read"
        self.kuap = ""
        """The line KUAP prints before the oops (a user address: NULL), or ``""``."""
        if address < 0x1_0000:  # below PAGE_SIZE: a NULL pointer plus a field offset
            self.kuap = (f"Kernel attempted to {access} user page ({address:x})"
                         " - exploit attempt? (uid: 0)")
            super().__init__(f"BUG: Kernel NULL pointer dereference on {access} at 0x{address:08x}")
        else:
            super().__init__(f"BUG: Unable to handle kernel data access at 0x{address:08x}")
        self.address = address
        self.write = write
        self.detail = what
