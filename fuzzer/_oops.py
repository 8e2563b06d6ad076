"""Bad pointers in the modelled kernel: NULL and freed objects become oopses, not model crashes.

The model follows kernel pointers as Python references: ``None`` is NULL and
an object whose ``freed`` is set has been given back to the allocator. Two
ways turn following one into the oops the kernel would print
(:class:`fuzzer.KernelOops`):

* :func:`deref`, called by modelled code where the kernel dereferences a
  pointer that a mistake could leave NULL or dangling (``mm->pgd`` in
  ``walk_to_pmd``, ``kp->pre_handler`` in ``kprobe_handler``);
* the machine's blame rule (:func:`oops_of`): an ``AttributeError`` on
  ``None`` raised by the body of a modelled routine, for a member of a
  modelled kernel struct (a class registered with :func:`kernel_struct`), is
  that routine dereferencing a NULL pointer. Any other Python error -- a
  plugin's helper, an invariant, an attribute no kernel struct has -- keeps
  being blamed on its plugin or reported as an internal error.

A freed object reads as SLUB's free poison (``POISON_FREE``, 0x6b, as
``slub_debug=P`` / ``CONFIG_SLUB_DEBUG_ON`` fill it), so the pointer loaded
from it is 0x6b6b6b6b6b6b6b6b and following that one faults.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs

from fuzzer._errors import KernelOops
from fuzzer._routines import frame_of_code

T = TypeVar("T")
C = TypeVar("C", bound=type)

#: A pointer read out of a freed, poisoned object (include/linux/poison.h POISON_FREE).
POISON_POINTER = 0x6B6B_6B6B_6B6B_6B6B

#: Member name -> the kernel struct (or structs) that has it, for the blame rule.
_MEMBERS: dict[str, str] = {}


def kernel_struct(name: str) -> Any:
    """Class decorator: instances model kernel ``struct name``; their members are pointers' targets.

    A routine that reads one of these members through ``None`` dereferences a
    NULL ``struct name *`` (see :func:`oops_of`).
    """

    def mark(cls: C) -> C:
        members = [f.name for f in attrs.fields(cls)] if attrs.has(cls) else []
        members += [n for n in vars(cls) if not n.startswith("_")]
        for member in members:
            _MEMBERS.setdefault(member, name)
        return cls

    return mark


def deref(
    ptr: T | None, struct: str, *, member: str = "", write: bool = False, freed: bool = True
) -> T:
    """Follow a kernel pointer to ``struct``: oops on NULL or (unless ``freed=False``) a freed object.

    Returns ``ptr`` (narrowed to not-None). ``freed=False`` where the kernel
    reads a freed object's poison without following it (what it does next
    with the value is the caller's to model).
    """
    what = f"{struct} *{'->' + member if member else ''}"
    if ptr is None:
        raise KernelOops(0, write=write, what=f"NULL {what}")
    if freed and getattr(ptr, "freed", False):
        raise KernelOops(POISON_POINTER, write=write,
                         what=f"{what} of a freed {struct} (SLUB poison)")
    return ptr


def oops_of(exc: BaseException) -> KernelOops | None:
    """The oops a modelled routine's ``AttributeError`` on ``None`` stands for, if it is one.

    Only when the innermost Python frame is a modelled routine's own body and
    the attribute is a member of a registered kernel struct.
    """
    if not isinstance(exc, AttributeError) or exc.obj is not None:
        return None
    struct = _MEMBERS.get(exc.name or "")
    tb = exc.__traceback__
    if struct is None or tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    if frame_of_code(tb.tb_frame.f_code) is None:
        return None
    return KernelOops(0, what=f"NULL {struct} *->{exc.name}")
