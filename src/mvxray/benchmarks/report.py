"""``results.md`` and plots (FROC curves, error histograms, error vs number of views) from
``results.jsonl``."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = (
    ("detector", "detector", "{}"),
    ("lifter", "lifter", "{}"),
    ("views", "views", "{}"),
    ("size", "size", "{}"),
    ("augment", "aug", "{}"),
    ("recall2d", "2D recall@1FP", "{:.2f}"),
    ("sensitivity_at_1fp", "3D sens@1FP", "{:.2f}"),
    ("cpm", "CPM", "{:.2f}"),
    ("median_center_error_mm", "median err mm", "{:.2f}"),
    ("p95_center_error_mm", "p95 err mm", "{:.2f}"),
    ("mASE", "mASE", "{:.2f}"),
    ("train_s", "train s", "{:.0f}"),
    ("infer_s", "infer s", "{:.1f}"),
)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return spec.format(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown row per cell.

    Example:
        >>> print(markdown_table([{"detector": "oracle", "lifter": "triangulation", "views": 2,
        ...     "size": 256, "augment": False, "recall2d": 1.0, "sensitivity_at_1fp": 0.5, "cpm": 0.4,
        ...     "median_center_error_mm": 0.31, "p95_center_error_mm": float("nan"), "mASE": 0.1,
        ...     "train_s": 0.0, "infer_s": 1.23}]).splitlines()[2])
        | oracle | triangulation | 2 | 256 | False | 1.00 | 0.50 | 0.40 | 0.31 | — | 0.10 | 0 | 1.2 |
    """
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k), f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_report(out: Path) -> None:
    """Rebuild ``results.md`` and the PNG plots in ``out`` from ``out/results.jsonl``."""
    from mvxray.benchmarks.ablation import read_results
    from mvxray.io import atomic_write_text

    rows = read_results(out / "results.jsonl")
    text = "# mvxray ablation results\n\n" + markdown_table(rows) + "\n"
    text += (
        "\n2D recall@1FP: 2D recall at 1 false positive per image (IoU 0.5). 3D sens@1FP and CPM: "
        "LUNA16 FROC (a hit is a predicted centre within the nodule's radius). Errors: centre error "
        "of the found nodules, mm.\n"
    )
    atomic_write_text(out / "results.md", text)
    if rows:
        _plots(rows, out)


def _label(r: dict[str, Any]) -> str:
    return f"{r['detector']}+{r['lifter']} v{r['views']} {r['size']}px{' aug' if r.get('augment') else ''}"


def _legend(ax: Any, size: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=size)


def _plots(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        if r.get("froc_fps"):
            ax.plot(r["froc_fps"], r["froc_sens"], label=_label(r), lw=1)
    ax.set_xscale("symlog", linthresh=0.125)
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per case")
    ax.set_ylabel("sensitivity")
    ax.set_title("FROC")
    _legend(ax, 6)
    fig.tight_layout()
    fig.savefig(out / "froc.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        if r.get("center_errors_mm"):
            ax.hist(r["center_errors_mm"], bins=20, histtype="step", label=_label(r))
    ax.set_xlabel("centre error of found nodules (mm)")
    ax.set_ylabel("nodules")
    _legend(ax, 6)
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=110)
    plt.close(fig)

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        key = f"{r['detector']}+{r['lifter']} {r['size']}px{' aug' if r.get('augment') else ''}"
        series[key].append((r["views"], r["median_center_error_mm"]))
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key)
    ax.set_xlabel("number of views")
    ax.set_ylabel("median centre error (mm)")
    _legend(ax, 7)
    fig.tight_layout()
    fig.savefig(out / "error_vs_views.png", dpi=110)
    plt.close(fig)
