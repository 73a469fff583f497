"""The dashboard chart as inline SVG, computed on the server: no script, no chart library.

Stacked bars, one per hour or day, one colour per decision. Each bar segment has a
``<title>`` (the browser's own tooltip) and the same numbers are in a table below the chart
for screen readers. Colours come from CSS classes in the static style sheet (SVG presentation
attributes would also work; classes keep the palette in one place).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dsguard.web.stats import Window

# (css class, label, decisions counted in it), bottom of the stack first.
SERIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("refused", "Refused", ("refused",)),
    ("quarantined", "Quarantined", ("quarantined",)),
    ("audited", "Audited (let through)", ("audited",)),
    ("accepted", "Accepted", ("accepted", "delivered", "tagged")),
    ("tempfail", "Temporary failure", ("tempfail",)),
)
WIDTH = 960
HEIGHT = 260
LEFT = 44  # room for the y-axis labels
BOTTOM = 26  # room for the x-axis labels
TOP = 10


@dataclass(frozen=True, slots=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass(frozen=True, slots=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class LegendItem:
    css: str
    label: str
    total: int


@dataclass(frozen=True, slots=True)
class Row:
    start: datetime
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    plot_left: int
    plot_bottom: float
    segments: list[Segment]
    y_labels: list[Label]
    x_labels: list[Label]
    legend: list[LegendItem]
    rows: list[Row]  # buckets with at least one attempt, for the table
    total: int


def build_chart(counts: list[tuple[datetime, str, int]], window: Window) -> Chart:
    step = timedelta(hours=1) if window.bucket == "hour" else timedelta(days=1)
    starts: list[datetime] = []
    at = window.since
    while at < window.until:
        starts.append(at)
        at += step
    index = {start: i for i, start in enumerate(starts)}
    series_of = {d: s for s, (_css, _label, decisions) in enumerate(SERIES) for d in decisions}
    grid = [[0] * len(SERIES) for _ in starts]
    for start, decision, n in counts:
        i = index.get(start)
        s = series_of.get(decision)
        if i is not None and s is not None:
            grid[i][s] += n
    peak = max((sum(row) for row in grid), default=0)
    scale_max, step_value = _axis(peak)
    plot_height = HEIGHT - TOP - BOTTOM
    plot_width = WIDTH - LEFT - 4
    slot = plot_width / max(len(starts), 1)
    bar_width = max(slot * 0.8, 1.0)
    days = len(starts) > 24 and window.bucket == "hour"
    fmt = "%a %d %b" if days or window.bucket == "day" else "%H:%M"
    segments: list[Segment] = []
    for i, row in enumerate(grid):
        x = LEFT + i * slot + (slot - bar_width) / 2
        y: float = TOP + plot_height
        when = starts[i].strftime("%Y-%m-%d %H:%M UTC")
        for s, n in enumerate(row):
            if n == 0:
                continue
            height = plot_height * n / scale_max
            y -= height
            css, label, _decisions = SERIES[s]
            segments.append(Segment(x, y, bar_width, height, css, f"{when}: {n} {label.lower()}"))
    y_labels = [
        Label(LEFT - 6, TOP + plot_height - plot_height * v / scale_max, str(v))
        for v in range(0, scale_max + 1, step_value)
    ]
    x_labels = [
        Label(LEFT + i * slot + slot / 2, HEIGHT - 8, start.strftime(fmt))
        for i, start in enumerate(starts)
        if _labelled(i, start, len(starts), window.bucket)
    ]
    legend = [
        LegendItem(css, label, sum(row[s] for row in grid))
        for s, (css, label, _decisions) in enumerate(SERIES)
    ]
    rows = [Row(starts[i], tuple(row)) for i, row in enumerate(grid) if any(row)]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=LEFT,
        plot_bottom=TOP + plot_height,
        segments=segments,
        y_labels=y_labels,
        x_labels=x_labels,
        legend=legend,
        rows=rows,
        total=sum(sum(row) for row in grid),
    )


def _labelled(i: int, start: datetime, count: int, bucket: str) -> bool:
    """Label about eight bars: midnights when hourly bars span days, else every n-th."""
    if bucket == "hour" and count > 24:
        return start.hour == 0
    return i % max(count // 8, 1) == 0


def _axis(value: int) -> tuple[int, int]:
    """(maximum, step) of a y axis with at most five round steps (1, 2 or 5 x 10^k) that
    reaches ``value``."""
    if value <= 0:
        return 4, 1
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            count = -(-value // step)  # ceiling division
            if count <= 5:
                return count * step, step
        magnitude *= 10
