"""Speedup bar charts: each backend vs the unpatched baseline, linear axis, higher is better."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Panel:
    """One axes: x groups, and per backend one bar per group.

    ``speedups[backend][i]``: speedup of group i (None: no bar, ``missing[backend][i]`` is written
    instead, e.g. ``n/s``); ``failed[backend][i]``: the configuration failed its equivalence check;
    ``notes[backend]``: appended to the backend's legend entry.
    """

    title: str
    groups: list[str]
    speedups: dict[str, list[float | None]]
    missing: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, list[bool]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


#: one colour per backend in every figure
COLORS = {"auto": "C4", "flash": "C0", "sdpa": "C1", "triton": "C2", "cuda": "C3"}


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (no plots then; the JSON can be re-plotted)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def speedup_figure(path: Path, title: str, panels: list[Panel], baseline: str = "unpatched (naive)") -> str | None:
    """Write one PNG with one row per panel; returns its file name, or None without matplotlib."""
    plt = _pyplot()
    if plt is None or not panels:
        return None
    widest = max(len(p.groups) * max(1, len(p.speedups)) for p in panels)
    wrap = max(len(p.groups) for p in panels) <= 10  # few groups: horizontal (multi-line) labels
    width_in = max(7.0, 0.2 * widest + 2.5, 1.1 * max(len(p.groups) for p in panels) + 2.5 if wrap else 0.0)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, 3.6 * len(panels)), squeeze=False, layout="constrained")
    any_failed = False
    for ax, panel in zip(axes[:, 0], panels):
        backends = sorted(panel.speedups, key=lambda b: list(COLORS).index(b) if b in COLORS else len(COLORS))
        width = 0.8 / max(1, len(backends))
        top = max([v for vs in panel.speedups.values() for v in vs if v is not None and math.isfinite(v)] + [1.0])
        for bi, backend in enumerate(backends):
            values = panel.speedups[backend]
            xs = [i + (bi - (len(backends) - 1) / 2) * width for i in range(len(panel.groups))]
            heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
            label = backend + (f" ({panel.notes[backend]})" if backend in panel.notes else "")
            bars = ax.bar(xs, heights, width, color=COLORS.get(backend), label=label)
            for i, (bar, v) in enumerate(zip(bars, values)):
                failed = panel.failed.get(backend, [False] * len(values))[i]
                any_failed |= failed
                if failed:
                    bar.set_hatch("xx")
                text = f"{v:.2f}" if heights[i] else panel.missing.get(backend, [""] * len(values))[i]
                ax.text(
                    bar.get_x() + width / 2,
                    heights[i] + 0.01 * top,
                    text,
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=6,
                )
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label=f"{baseline} = 1")
        ax.set_xticks(range(len(panel.groups)))
        ax.set_xticklabels(panel.groups, rotation=0 if wrap else 30, ha="center" if wrap else "right", fontsize=7)
        ax.set_xlim(-0.6, len(panel.groups) - 0.4)
        ax.set_ylim(0, top * 1.18)
        ax.set_ylabel(f"speedup vs {baseline}\n(higher is better)", fontsize=8)
        ax.set_title(panel.title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.suptitle(title + ("\nhatched bars failed the equivalence check (not valid)" if any_failed else ""), fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name
