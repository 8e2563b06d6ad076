"""Failure reports as a kernel developer reads them: oops-style text, and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fuzzer._model import Model
from fuzzer._steps import Step

if TYPE_CHECKING:
    from fuzzer._engine.records import Finding

CUT = "------------[ cut here ]------------"


def _banner(model: Model) -> str:
    run = model.run
    page = "64K" if run.page_shift == 16 else "4K"
    smp = " SMP" if run.enabled("CONFIG_SMP") else ""
    if run.arch != "powerpc":
        return f"{run.arch}{smp} NR_CPUS={run.cpus} PAGE_SIZE={page} MMU={model.mmu.name} (model)"
    return f"LE PAGE_SIZE={page} MMU={model.mmu.name.capitalize()}{smp} NR_CPUS={run.cpus} PowerNV (model)"


def format_trace(failure: Finding) -> list[str]:
    lines = ["Call Trace (modelled, innermost first):"]
    width = max((len(f.function) for f in failure.trace), default=0)
    for i, frame in enumerate(failure.trace):
        mark = "  (inlined)" if frame.inlined else ""
        where = frame.file
        if i == 0 and failure.at.startswith(frame.file + ":"):
            where = failure.at
        lines.append(f" {frame.function:<{width}}  {where}{mark}")
    if not failure.trace:
        lines.append(" (no modelled kernel frame)")
    return lines


def format_failure(failure: Finding, model: Model, steps: Sequence[Step]) -> str:
    """The oops a kernel would print (after the WARNINGs it printed and went on from, as its
    log shows them), then the kernel, config and minimal reproduction."""
    run = model.run
    out: list[str] = []
    for i, warning in enumerate(failure.warned):
        out += _oops(warning, model, tainted=i > 0)
    out += _oops(failure, model, tainted=bool(failure.warned))
    out.append("")
    out.append(f"Kernel: {run.kernel} ({model.version.description})")
    out.append(f"MMU: {model.mmu.name}    CPUs: {run.cpus}")
    out.append(f"Config: {run.config.describe()}")
    if failure.warned:
        out.append(f"Panic on warn: {run.option('panic_on_warn')} (the kernel went on after"
                   f" {len(failure.warned)} WARNING{'s' if len(failure.warned) != 1 else ''} above)")
    out.append(f"Signature: {failure.signature}")
    out.append("")
    out.append(f"Minimal reproduction ({len(steps)} step{'s' if len(steps) != 1 else ''}):")
    for i, step in enumerate(steps, 1):
        out.append(f"  {i}. {step.describe()}")
    return "\n".join(out)


def _oops(failure: Finding, model: Model, *, tainted: bool) -> list[str]:
    """One report as the kernel prints it, cut line to end trace. ``tainted``: a WARNING
    came before (``Tainted: G        W``, as ``__warn`` leaves TAINT_WARN)."""
    run = model.run
    out: list[str] = []
    cpu = failure.cpu if failure.cpu is not None else "?"
    task = failure.task or "PID: ? Comm: ?"
    taint = "Tainted: G        W" if tainted else "Not tainted"
    if failure.kind == "BUG":
        out += [CUT, failure.message, "Oops: Exception in kernel mode, sig: 5 [#1]", _banner(model)]
        out.append(f"CPU: {cpu} {task} {taint} ({run.kernel}, modelled)")
    elif failure.kind == "WARNING":
        fn = failure.signature.function
        out += [CUT, f"WARNING: CPU: {cpu} {task.split(' Comm')[0]} at {failure.at} {fn}", _banner(model)]
        out.append(f"CPU: {cpu} {task} {taint} ({run.kernel}, modelled)")
    elif failure.kind == "OOPS":  # die() from __bad_page_fault: no cut line
        fn = failure.signature.function or "?"
        out += [failure.kuap] if failure.kuap else []
        out += [failure.message, f"Faulting instruction address: in {fn} (modelled)",
                "Oops: Kernel access of bad area, sig: 11 [#1]", _banner(model)]
        out.append(f"CPU: {cpu} {task} {taint} ({run.kernel}, modelled)")
    else:
        out += [CUT, failure.message, _banner(model)]
        out.append(f"CPU: {cpu} {task} ({run.kernel}, modelled)")
    detail = failure.detail
    if detail and detail not in failure.message:
        out.append(f"Detail: {detail}")
    ctx = failure.context
    if ctx:
        out.append(
            f"IRQs {'on' if ctx.get('irqs_enabled') else 'off'},"
            f" {'in interrupt' if ctx.get('in_interrupt') else 'process context'}"
        )
    out += format_trace(failure)
    out.append("---[ end trace 0000000000000000 ]---")
    return out


def failure_json(failure: Finding, model: Model, steps: Sequence[Step]) -> dict[str, Any]:
    run = model.run
    sig = failure.signature
    return {
        "schema": 1,
        "kind": failure.kind,
        "message": failure.message,
        "signature": {"kind": sig.kind, "function": sig.function, "location": sig.location},
        "detail": failure.detail,
        "cpu": failure.cpu,
        "task": failure.task,
        "trace": [
            {"function": f.function, "file": f.file, "inlined": f.inlined} for f in failure.trace
        ],
        "kernel": run.kernel,
        "mmu": run.mmu,
        "cpus": run.cpus,
        "config": {k: v for k, v in run.config.values.items()},
        "warned": [{"message": w.message, "signature": {"kind": w.signature.kind,
                    "function": w.signature.function, "location": w.signature.location},
                    "cpu": w.cpu, "task": w.task} for w in failure.warned],
        "steps": [s.to_json() for s in steps],
        "text": format_failure(failure, model, steps),
    }


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
