"""Inline SVG charts for ``safehold report``: drawn here, in Python, so the page needs no script,
font or network. Colours are CSS classes the page defines (light and dark); every text passes
through ``Esc`` (secrets redacted, then HTML-escaped).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ...model import Objectives
from ...sinks.log import human_bytes
from .gather import RpoTrack

W, H = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 14, 30
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
_DAY = 86400
_LOG_TICKS = (0.001, 0.01, 0.1, 1, 10, 60, 600, 6 * 3600, _DAY, 7 * _DAY)  # + the RTO lines


class Esc:
    """Text for the page: secrets replaced, then HTML-escaped (also safe in attributes)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, value: object) -> str:
        text = str(value)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return html.escape(text, quote=True)


def seconds_text(value: float) -> str:
    if value < 10:
        return f"{value:.2g} s" if value < 1 else f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 2 * 3600:
        return f"{value / 60:.0f} min" if value >= 600 else f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h" if value < 2 * _DAY else f"{value / _DAY:.1f} d"


def time_text(moment: datetime, seconds: bool = False) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""))


def _ts(moment: datetime) -> float:
    return moment.timestamp()


@dataclass
class Plot:
    """A frame with a time x axis and a linear or logarithmic y axis; shapes collect in
    ``parts`` and ``svg()`` wraps them."""

    t0: float
    t1: float
    y0: float
    y1: float
    esc: Esc
    log: bool = False
    height: int = H
    width: int = W
    parts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.t1 - self.t0 < 1:
            self.t0, self.t1 = self.t0 - 1800, self.t1 + 1800
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1

    def x(self, t: float) -> float:
        return round(LEFT + (t - self.t0) / (self.t1 - self.t0) * (self.width - LEFT - RIGHT), 1)

    def y(self, v: float) -> float:
        lo, hi, v = self.y0, self.y1, min(max(v, self.y0), self.y1)
        if self.log:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
        bottom = self.height - BOTTOM
        return round(bottom - (v - lo) / (hi - lo) * (bottom - TOP), 1)

    def frame(self, y_ticks: Sequence[tuple[float, str]]) -> None:
        bottom, e, right = self.height - BOTTOM, self.esc, self.width - RIGHT
        last = math.inf
        for value, label in y_ticks:
            y = self.y(value)
            if abs(last - y) < 13:  # the labels would overlap
                continue
            last = y
            self.parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{right}" y2="{y}"/>')
            self.parts.append(
                f'<text class="lbl" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{e(label)}</text>'
            )
        for t, label in time_ticks(self.t0, self.t1):
            x = self.x(t)
            self.parts.append(f'<line class="grid" x1="{x}" y1="{TOP}" x2="{x}" y2="{bottom}"/>')
            if x + len(label) * 3.3 > self.width:  # would be cut at the edge: grid line only
                continue
            self.parts.append(
                f'<text class="lbl" x="{x}" y="{bottom + 16}" text-anchor="middle">'
                f"{e(label)}</text>"
            )
        self.parts.append(f'<path class="axis" d="M{LEFT},{TOP} V{bottom} H{right}" fill="none"/>')

    def band(self, t_from: float, t_to: float, cls: str, title: str) -> None:
        x0, x1 = self.x(t_from), self.x(t_to)
        self.parts.append(
            f'<rect class="{cls}" x="{x0}" y="{TOP}" width="{max(x1 - x0, 1.5)}" '
            f'height="{self.height - BOTTOM - TOP}"><title>{self.esc(title)}</title></rect>'
        )

    def hline(self, value: float, cls: str, label: str, at: float = 1.0) -> None:
        """A horizontal line, its label ending at ``at`` (0..1) of the plot's width."""
        y, right = self.y(value), self.width - RIGHT
        x = round(LEFT + (right - LEFT) * at - 4, 1)
        self.parts.append(
            f'<line class="{cls}" x1="{LEFT}" y1="{y}" x2="{right}" y2="{y}"/>'
            f'<text class="{cls}-lbl" x="{x}" y="{y - 4}" text-anchor="end">'
            f"{self.esc(label)}</text>"
        )

    def path(self, points: Sequence[tuple[float, float] | None], cls: str) -> None:
        """A line through (time, value) points; ``None`` lifts the pen."""
        commands, pen = [], False
        for point in points:
            if point is None:
                pen = False
                continue
            commands.append(f"{'L' if pen else 'M'}{self.x(point[0])},{self.y(point[1])}")
            pen = True
        if commands:
            self.parts.append(f'<path class="{cls}" fill="none" d="{" ".join(commands)}"/>')

    def marker(self, t: float, v: float, shape: str, cls: str, title: str, dx: float = 0) -> None:
        x, y, tip = self.x(t) + dx, self.y(v), f"<title>{self.esc(title)}</title>"
        if shape == "square":
            body = f'<rect class="{cls}" x="{x - 4}" y="{y - 4}" width="8" height="8">'
            self.parts.append(body + tip + "</rect>")
        elif shape == "diamond":
            d = f"M{x},{y - 5.5} L{x + 5.5},{y} L{x},{y + 5.5} L{x - 5.5},{y} Z"
            self.parts.append(f'<path class="{cls}" d="{d}">{tip}</path>')
        elif shape == "cross":
            a, b, c, d_ = x - 4.5, x + 4.5, y - 4.5, y + 4.5
            d = f"M{a},{c} L{b},{d_} M{a},{d_} L{b},{c}"
            self.parts.append(f'<path class="{cls} cross" d="{d}">{tip}</path>')
        else:
            self.parts.append(f'<circle class="{cls}" cx="{x}" cy="{y}" r="3.5">{tip}</circle>')

    def svg(self, label: str) -> str:
        return (
            f'<svg class="chart" viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
            f'height="{self.height}" role="img" aria-label="{self.esc(label)}">'
            f"<title>{self.esc(label)}</title>" + "".join(self.parts) + "</svg>"
        )


def time_ticks(t0: float, t1: float, most: int = 6) -> list[tuple[float, str]]:
    span = t1 - t0
    steps = [*_TIME_STEPS, *(d * _DAY for d in (1, 2, 7, 14, 30, 91, 182, 365))]
    step = next((s for s in steps if span / s <= most), steps[-1])
    fmt = "%H:%M:%S" if step < 60 else "%m-%d %H:%M" if step < _DAY else "%Y-%m-%d"
    first = math.ceil(t0 / step) * step
    ticks, t = [], float(first)
    while t <= t1:
        ticks.append((t, datetime.fromtimestamp(t, UTC).strftime(fmt)))
        t += step
    return ticks


def linear_ticks(
    top: float, fmt: Callable[[float], str], unit: float = 1.0
) -> list[tuple[float, str]]:
    """0 and nice steps (1, 2, 5 x 10^n of ``unit``) up to ``top``."""
    span = max(top / unit, 1e-9)
    raw = span / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw) * unit
    count = int(top / step + 1e-9)
    return [(i * step, fmt(i * step)) for i in range(count + 1)]


def byte_unit(top: float) -> float:
    unit = 1.0
    while top / unit >= 1024 and unit < 1024**4:
        unit *= 1024
    return unit


# The page's style (the charts' classes included): light, or dark when the reader prefers it.
CSS = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1f2328;--muted:#59636e;--grid:#e6e9ed;
--card:#f6f8fa;--line:#c9d1d9;--ok:#1a7f37;--warn:#9a6700;--crit:#cf222e;--db:#0969da;
--vol:#0f8a7e;--full:#8250df;--size:#0969da;--time:#bc4c00;--over:rgba(207,34,46,.22);
--none:rgba(110,119,129,.16)}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;
--grid:#232a33;--card:#151b23;--line:#3d444d;--ok:#3fb950;--warn:#d29922;--crit:#f85149;
--db:#4493f8;--vol:#39c5bb;--full:#ab7df8;--size:#4493f8;--time:#f0883e;
--over:rgba(248,81,73,.28);--none:rgba(145,152,161,.16)}}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 48px;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
h1{font-size:24px;margin:0 12px 0 0;display:inline-block;vertical-align:middle}
h2{font-size:18px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:0 0 6px}
.meta,.muted,.note{color:var(--muted)}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:700;color:#fff;
font-size:13px;vertical-align:middle}
.badge.big{font-size:18px;padding:4px 16px}
.badge.ok{background:var(--ok)}.badge.warn{background:var(--warn)}.badge.crit{background:var(--crit)}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.nowrap{white-space:nowrap}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(580px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px}
.empty{background:var(--card);border:1px dashed var(--line);border-radius:8px;padding:24px;
font-size:16px}
.legend span{margin-right:14px;white-space:nowrap}
.sw{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
svg.chart{max-width:100%;height:auto;display:block;margin-top:6px}
.chart .grid{stroke:var(--grid)}.chart .axis{stroke:var(--line)}
.chart .lbl{fill:var(--muted);font-size:11px}
.chart .line{stroke-width:1.8}.chart .dot{stroke:none}
.chart .s-size{stroke:var(--size)}.chart .dot.s-size{fill:var(--size)}
.chart .s-time{stroke:var(--time)}.chart .dot.s-time{fill:var(--time)}
.chart .age{stroke:var(--fg)}
.chart .bad{stroke:var(--crit);stroke-width:2.4;fill:none}
.chart .over{fill:var(--over)}.chart .none{fill:var(--none)}
.chart .rpo{stroke:var(--crit);stroke-width:1.5;stroke-dasharray:6 4}
.chart .rpo-lbl{fill:var(--crit);font-size:11px;font-weight:600}
.chart .rto-db{stroke:var(--db);stroke-dasharray:6 4}.chart .rto-db-lbl{fill:var(--db)}
.chart .rto-vol{stroke:var(--vol);stroke-dasharray:6 4}.chart .rto-vol-lbl{fill:var(--vol)}
.chart .rto-full{stroke:var(--full);stroke-dasharray:6 4}.chart .rto-full-lbl{fill:var(--full)}
.chart [class$="-lbl"]{font-size:11px;font-weight:600}
.chart .d-database{fill:var(--db)}.chart .d-volume{fill:var(--vol)}.chart .d-full{fill:var(--full)}
.crit-text{color:var(--crit)}.warn-text{color:var(--warn)}
"""


# --- the charts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    at: datetime
    value: float | None
    good: bool
    title: str


def series_chart(
    points: Sequence[Point], label: str, esc: Esc, *, kind: str, t0: datetime, t1: datetime
) -> str:
    """Size (``kind="bytes"``) or duration (``"seconds"``) of one target's backups over time:
    good ones joined by a line, the others as red crosses."""
    values = [p.value for p in points if p.value is not None]
    top = max(values, default=1.0) * 1.15 or 1.0
    unit = byte_unit(top) if kind == "bytes" else 1.0
    fmt: Callable[[float], str] = (
        (lambda v: human_bytes(int(v))) if kind == "bytes" else seconds_text
    )
    ticks = linear_ticks(top, fmt, unit)
    plot = Plot(_ts(t0), _ts(t1), 0.0, max(top, ticks[-1][0]), esc, height=170)
    plot.frame(ticks)
    good = [(_ts(p.at), p.value) for p in points if p.good and p.value is not None]
    plot.path(good, "line " + ("s-size" if kind == "bytes" else "s-time"))
    for p in points:
        if p.value is None:
            continue
        if p.good:
            plot.marker(
                _ts(p.at),
                p.value,
                "circle",
                "dot " + ("s-size" if kind == "bytes" else "s-time"),
                p.title,
            )
        else:
            plot.marker(_ts(p.at), p.value, "cross", "bad", p.title)
    return plot.svg(label)


def rpo_chart(track: RpoTrack, rpo_s: float, esc: Esc) -> str:
    """Age of the newest good backup over time (a sawtooth), the RPO line, the periods over it
    shaded red, and the time before any good backup shaded grey."""
    ages = [(e - n).total_seconds() for _, e, n in track.segments if n is not None]
    top = max(rpo_s * 1.3, min(max(ages, default=0.0), rpo_s * 3)) * 1.05
    unit = 3600.0 if top >= 3 * 3600 else 60.0
    name = "h" if unit == 3600 else "min"
    ticks = linear_ticks(top, lambda v: f"{v / unit:g} {name}", unit)
    plot = Plot(_ts(track.start), _ts(track.end), 0.0, top, esc, height=180)
    for begin, end, newest in track.segments:
        if newest is None:
            plot.band(_ts(begin), _ts(end), "none", f"no good backup until {time_text(end)}")
    for begin, end in track.over:
        tip = f"over the RPO from {time_text(begin)} to {time_text(end)} UTC"
        plot.band(_ts(begin), _ts(end), "over", tip)
    plot.frame(ticks)
    points: list[tuple[float, float] | None] = []
    for begin, end, newest in track.segments:
        if newest is None:
            points.append(None)
            continue
        base = _ts(newest)
        points.append((_ts(begin), _ts(begin) - base))
        if _ts(end) - base > top > _ts(begin) - base:  # clipped: flat along the top
            points.append((base + top, top))
        points.append((_ts(end), _ts(end) - base))
    plot.path(points, "line age")
    plot.hline(rpo_s, "rpo", f"RPO {seconds_text(rpo_s)}", at=0.2)
    return plot.svg(f"RPO compliance of {track.kind} {track.target}")


@dataclass(frozen=True)
class DrillPoint:
    at: datetime
    seconds: float | None  # None: failed
    series: str  # database, volume, full
    title: str


SHAPES = {"database": ("circle", -6), "volume": ("square", 0), "full": ("diamond", 6)}


def drill_chart(points: Sequence[DrillPoint], goals: Objectives, esc: Esc) -> str:
    """Measured recovery times (log scale) against the RTO lines; failed drills as red crosses
    on the bottom edge."""
    times = [_ts(p.at) for p in points]
    t0, t1 = min(times), max(times)
    pad = max((t1 - t0) * 0.06, 1800.0)
    values = [p.seconds for p in points if p.seconds is not None]
    low = min([0.1, *(v / 2 for v in values if v > 0)])
    high = max([goals.rto_full_s * 1.4, *(v * 1.5 for v in values)])
    plot = Plot(t0 - pad, t1 + pad, low, high, esc, log=True, height=300, width=1100)
    plot.frame([(v, seconds_text(v)) for v in _LOG_TICKS if low <= v <= high])
    lines = (
        (goals.rto_database_s, "rto-db", "database", 0.4),
        (goals.rto_volumes_s, "rto-vol", "volumes", 0.7),
        (goals.rto_full_s, "rto-full", "full system", 1.0),
    )
    for value, cls, what, at in lines:  # labels staggered: the lines lie close on a log scale
        plot.hline(value, cls, f"RTO {what} {value / 60:g} min", at)
    for p in points:
        if p.seconds is None:
            plot.marker(_ts(p.at), low, "cross", "bad", p.title)
        else:
            shape, dx = SHAPES.get(p.series, ("circle", 0))  # side by side within one drill
            plot.marker(_ts(p.at), max(p.seconds, low), shape, f"dot d-{p.series}", p.title, dx)
    return plot.svg("drill recovery times against the RTO lines")


def html_table(head: Sequence[str], rows: Iterable[Sequence[str]], esc: Esc) -> str:
    """``rows`` hold ready HTML (escaped by the caller)."""
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    lines = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{lines}</tbody></table>"


def html_td(text: object, esc: Esc, cls: str = "") -> str:
    return f'<td class="{cls}">{esc(text)}</td>' if cls else f"<td>{esc(text)}</td>"
