"""Figures and HTML: Captum's token heatmap and sequence bar chart, and a heatmap table."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

# Captum's LLMAttributionResult colours: red (negative) through white to blue (positive).
COLORS = [
    "#93003a", "#d0365b", "#f57789", "#ffbdc3", "#ffffff",
    "#a4d6e1", "#73a3ca", "#4772b3", "#00429d",
]


def pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError saying which extra to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'llm-attr[plot]'") from err
    return plt


def token_heatmap(
    token_attr: np.ndarray, input_tokens: Sequence[str], output_tokens: Sequence[str]
) -> tuple[Any, Any]:
    """Captum's plot_token_attr: rows output tokens, columns input tokens, values written in."""
    plt = pyplot()
    from matplotlib.colors import LinearSegmentedColormap

    data = np.asarray(token_attr, dtype=float)
    fig, ax = plt.subplots()
    fig.set_size_inches(max(data.shape[1] * 1.3, 6.4), max(data.shape[0] / 2.5, 4.8))
    bound = float(np.abs(data).max()) if data.size else 1.0
    bound = bound or 1.0
    cmap = LinearSegmentedColormap.from_list(name="colors", colors=COLORS)
    im = ax.imshow(data, vmax=bound, vmin=-bound, cmap=cmap, aspect="auto")
    cbar = fig.colorbar(im, ax=ax)
    cbar.ax.set_ylabel("Token Attribution", rotation=-90, va="bottom")
    ax.set_xticks(np.arange(data.shape[1]), labels=list(input_tokens))
    ax.set_yticks(np.arange(data.shape[0]), labels=list(output_tokens))
    ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
    plt.setp(ax.get_xticklabels(), rotation=-30, ha="right", rotation_mode="anchor")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            val = data[i, j]
            color = "black" if 0.2 < im.norm(val) < 0.8 else "white"
            ax.text(j, i, f"{val:.4f}", ha="center", va="center", color=color)
    return fig, ax


def seq_bars(seq_attr: np.ndarray, input_tokens: Sequence[str]) -> tuple[Any, Any]:
    """Captum's plot_seq_attr: one bar per input token, blue positive, red negative."""
    plt = pyplot()
    data = np.asarray(seq_attr, dtype=float)
    fig, ax = plt.subplots()
    ax.set_xticks(range(data.shape[0]), labels=list(input_tokens))
    ax.set_xlabel("Input Tokens")
    ax.set_ylabel("Sequence Attribution")
    plt.setp(ax.get_xticklabels(), rotation=-30, ha="right", rotation_mode="anchor")
    idx = np.arange(data.shape[0])
    pos = data >= 0
    ax.bar(idx[pos], data[pos], align="center", color=COLORS[-2])
    ax.bar(idx[~pos], data[~pos], align="center", color=COLORS[1])
    return fig, ax


def finish(fig: Any, ax: Any, show: bool) -> Any:
    """Captum's convention: show and return None, or return (fig, ax)."""
    if show:
        pyplot().show()
        return None
    return fig, ax


def cell_color(value: float, bound: float) -> str:
    """The heatmap colour of a value, interpolated in COLORS."""
    t = 0.5 if bound == 0 else min(max((value / bound + 1) / 2, 0.0), 1.0)
    pos = t * (len(COLORS) - 1)
    i = min(int(pos), len(COLORS) - 2)
    frac = pos - i
    a, b = COLORS[i], COLORS[i + 1]
    rgb = [
        round(int(a[k : k + 2], 16) * (1 - frac) + int(b[k : k + 2], 16) * frac)
        for k in (1, 3, 5)
    ]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def html_table(
    rows: Sequence[tuple[str, Sequence[float]]], columns: Sequence[str], caption: str
) -> str:
    """A heatmap table (inline styles, no JavaScript): one row per (label, values)."""
    values = [v for _, vs in rows for v in vs]
    bound = max((abs(v) for v in values), default=0.0)
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for label, vs in rows:
        cells = "".join(
            f'<td style="background:{cell_color(v, bound)};color:'
            f'{"white" if bound and abs(v) > 0.6 * bound else "black"};'
            f'text-align:right">{v:.4f}</td>'
            for v in vs
        )
        body.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    return (
        f"<table><caption>{esc(caption)}</caption><thead><tr><th></th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
