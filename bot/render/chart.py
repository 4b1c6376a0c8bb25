"""Charts → PNG bytes (pure). matplotlib's object API on the Agg canvas: no pyplot, no global
state, so two threads can draw at once and nothing depends on a display."""

from __future__ import annotations

import io
from datetime import date

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from bot.quantities import format_tokens

WIDTH, HEIGHT, DPI = 12, 6, 100  # 1200 × 600 px
# Colour-blind-safe (Okabe–Ito), then grey for the rest.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
REST_COLOUR = "#BBBBBB"
# Not strftime("%a %b"): that follows the process locale.
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def day_label(d: date) -> str:
    return f"{_DAYS[d.weekday()]}\n{d.day:02d} {_MONTHS[d.month - 1]}"


def stacked_chart_png(days: list[date], series: dict[str, list[int]], title: str,
                      rest: str | None = None) -> bytes:
    """A stacked bar per day, one colour per series in the order given; `rest` (if it is a
    key of `series`) is drawn grey. Always exactly 1200×600 px."""
    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(days)))
    bottom = [0] * len(days)
    colours = iter(PALETTE * (1 + len(series) // len(PALETTE)))
    for name, values in series.items():
        vals = [int(v) for v in values[:len(days)]] + [0] * max(0, len(days) - len(values))
        colour = REST_COLOUR if name == rest else next(colours)
        ax.bar(x, vals, bottom=bottom, label=name[:40], color=colour, width=0.8, linewidth=0)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_title(title[:120], fontsize=14)
    ax.set_ylabel("tokens (input + output)")
    ax.set_xticks(x, [day_label(d) for d in days], fontsize=9)
    ax.set_xlim(-0.6, max(len(days), 1) - 0.4)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_tokens(round(v))))
    if max(bottom, default=0) == 0:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no usage in this period", transform=ax.transAxes, ha="center",
                va="center", color="#666666", fontsize=12)
    ax.grid(axis="y", color="#DDDDDD", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.83, top=0.92, bottom=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()
