"""The plots the scenarios draw (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]

_PLAIN = FuncFormatter(lambda v, _: f"{v:,.10g}")
"""Plain numbers on log axes (1,000 rather than 10^3)."""


def _axes(ax: Axes, *, logx: bool, logy: bool) -> None:
    """Log or linear scales with plain tick labels; linear y axes start at zero."""
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PLAIN)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    else:
        ax.set_ylim(bottom=0)


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def latency_cdf(
    path: Path,
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "latency (ms, log scale)",
) -> str:
    """Cumulative distribution of latencies (ms) per contender, log x axis, the tail
    stretched (y is the percentile on a 'nines' scale)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, (name, values) in enumerate(series.items()):
        arr = np.sort(np.asarray(values, dtype=float))
        if not arr.size:
            continue
        arr = np.maximum(arr, 1e-3)
        frac = (np.arange(1, arr.size + 1) - 0.5) / arr.size
        nines = -np.log10(1 - frac)  # 0.9 -> 1, 0.99 -> 2
        ax.plot(arr, nines, label=name, color=COLORS[i % len(COLORS)], lw=1.8)
    ax.set_xscale("log")
    ticks = [0, 1, 2, 3]
    ax.set_yticks(ticks, ["0 %", "90 %", "99 %", "99.9 %"])
    ax.set_ylim(0, 3.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of requests faster")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def bars(
    path: Path,
    groups: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    *,
    title: str,
    ylabel: str,
    log: bool = False,
    hline: tuple[float, str] | None = None,
) -> str:
    """Grouped bars: for each group, one bar per series, (median, min, max) with the range
    drawn as an error bar."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series)) / 2), 4.6))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        med = np.array([v[0] for v in vals], dtype=float)
        lo = np.array([v[0] - v[1] for v in vals], dtype=float)
        hi = np.array([v[2] - v[0] for v in vals], dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, med, width, label=name, color=COLORS[i % len(COLORS)],
               yerr=[np.nan_to_num(lo), np.nan_to_num(hi)], capsize=3)  # fmt: skip
    if hline is not None:
        ax.axhline(hline[0], color="black", ls="--", lw=1)
        ax.text(len(groups) - 0.5, hline[0], " " + hline[1], va="bottom", ha="right", fontsize=8)
    ax.set_xticks(x, groups, fontsize=8)
    _axes(ax, logx=False, logy=log)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def lines(
    path: Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    ref: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """One line per series over ``x``; ``ref`` series are drawn dashed (limits)."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for i, (name, ys) in enumerate(series.items()):
        ax.plot(x, ys, marker="o", label=name, color=COLORS[i % len(COLORS)])
    for name, ys in (ref or {}).items():
        ax.plot(x, ys, ls="--", color="gray", label=name)
    _axes(ax, logx=logx, logy=logy)
    ax.set_xticks(list(x), [f"{v:g}" for v in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def panels(
    path: Path,
    x: Sequence[float],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    refs: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    logx: bool = False,
    logy: bool = False,
) -> str:
    """Side-by-side line plots, one per panel, sharing the x axis."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False)
    for ax, (pname, series) in zip(axes[0], panels.items(), strict=True):
        for i, (name, ys) in enumerate(series.items()):
            ax.plot(x, ys, marker="o", label=name, color=COLORS[i % len(COLORS)])
        for name, ys in ((refs or {}).get(pname) or {}).items():
            ax.plot(x, ys, ls="--", color="gray", label=name)
        _axes(ax, logx=logx, logy=logy)
        ax.set_xticks(list(x), [f"{v:g}" for v in x])
        ax.set_title(pname, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    return _save(fig, path)
