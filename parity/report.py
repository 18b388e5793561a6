"""`pytest parity --parity-report out.md`: every tensor's error on the GPT-2-124M-shaped case.

Tests that run that fixed case append `(title, Comparison)` to `RECORDED`; at the end of the
session `write` turns them into Markdown: per run, the worst relative error of each tensor kind
against its tolerance, then the full table of every tensor.
"""

from pathlib import Path

from npgpt.weights.atomic import atomic_write_text
from parity.tolerances import KINDS, kind, tolerance

RECORDED = []


def kind_summary(comparison):
    worst = comparison.max_rel_by_kind(kind)
    first = {k: next(row.name for row in comparison.rows if kind(row.name) == k) for k in worst}
    lines = [
        "| tensor kind | worst max rel err | tolerance | |",
        "|---|---|---|---|",
    ]
    for k in KINDS:
        if k in worst:
            tol = tolerance(comparison.mode, first[k])
            verdict = "ok" if worst[k] <= tol else "FAIL"
            lines.append(f"| {k} | {worst[k]:.3e} | {tol:.0e} | {verdict} |")
    return "\n".join(lines)


def render(recorded):
    parts = ["# Parity report: the GPT-2-124M-shaped case", ""]
    if not recorded:
        parts.append("No GPT-2-124M-shaped parity test ran in this session (deselected?).")
    for title, comparison in recorded:
        parts += [f"## {title}", "", f"mode `{comparison.mode}`", "", kind_summary(comparison), ""]
    for title, comparison in recorded:
        parts += [f"## Every tensor: {title}", "", comparison.table(), ""]
    return "\n".join(parts)


def write(path, recorded=None):
    atomic_write_text(Path(path), render(RECORDED if recorded is None else recorded))
