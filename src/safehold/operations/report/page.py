"""The page of ``safehold report``: one self-contained HTML file (inline CSS and SVG; no script,
font, image or link to anything outside it), readable in light and dark mode."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from ..._version import __version__
from ...errors import StorageError, UsageError
from ...sinks.log import human_bytes
from ...storage.local import fsync_dir
from .gather import BackupPoint, Report
from .svg import (
    CSS,
    DrillPoint,
    Esc,
    Point,
    drill_chart,
    html_table,
    html_td,
    rpo_chart,
    seconds_text,
    series_chart,
    time_text,
)

MAX_TARGETS = 60  # charts per section; the rest are named
MAX_ROWS = 50
NEWEST_BACKUPS = 20
LEVEL_CLASS = {"ok": "ok", "warning": "warn", "critical": "crit"}


def render_html(report: Report, secrets: Iterable[str | None] = ()) -> str:
    """The whole page as text; ``secrets`` (the database password) never appear in it."""
    esc = Esc(secrets)
    body = [_header(report, esc), _status(report, esc)]
    if report.empty:
        body.append(
            '<div class="empty" id="nothing"><strong>Nothing yet.</strong> This repository '
            "holds no backups, drills or verify records"
            + ("" if not report.days else f" from the last {report.days} days")
            + ". Run <code>safehold backup</code>, then <code>safehold verify</code> and "
            "<code>safehold drill</code>; this page fills in as they run.</div>"
        )
    else:
        body += [
            _failures(report, esc),
            _rpo(report, esc),
            _targets(report, esc),
            _drills(report, esc),
            _sets(report, esc),
            _newest(report, esc),
        ]
    body.append(
        f'<p class="note">safehold {esc(__version__)} &middot; a self-contained page: no scripts, '
        "no network. Times are UTC. Hover a point for its details.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>safehold report {esc(time_text(report.generated_at))} UTC</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_html(path: Path, text: str) -> Path:
    """Atomically (temp file beside it, fsync, rename); 0644: a report holds no secrets."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder", hint="give a file name, e.g. report.html")
    folder = path.absolute().parent
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:
        raise StorageError(
            f"cannot write the report into {folder}: {exc.strerror}",
            hint="choose a folder that exists and is writable",
        ) from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode())
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), 0o644)
        os.replace(temp, path)
        fsync_dir(folder)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise StorageError(
            f"cannot write the report {path}: {exc.strerror}", hint="check free space"
        ) from None
    return path


def _header(report: Report, esc: Esc) -> str:
    level = report.status.level
    goals = report.objectives
    window = (
        f"last {report.days} days (since {time_text(report.since)})"
        if report.days
        else "the whole history"
    )
    return (
        f'<header><h1>safehold report</h1><span id="overall" class="badge big '
        f'{LEVEL_CLASS[level]}">{esc(level.upper())}</span>'
        f'<p class="meta">repository <code>{esc(report.repository)}</code> &middot; generated '
        f"{esc(time_text(report.generated_at, seconds=True))} UTC &middot; window: {esc(window)}"
        f"<br>objectives: RPO {esc(seconds_text(goals.rpo_s))} &middot; RTO database "
        f"{goals.rto_database_s / 60:g} min, volumes {goals.rto_volumes_s / 60:g} min, full "
        f"system {goals.rto_full_s / 60:g} min</p></header>"
    )


def _badge(level: str, esc: Esc) -> str:
    return f'<td><span class="badge {LEVEL_CLASS.get(level, "crit")}">{esc(level)}</span></td>'


def _status(report: Report, esc: Esc) -> str:
    rows = []
    for t in report.status.targets:
        newest = t.newest
        verify = "-" if t.verify is None else f"{t.verify.outcome} ({t.verify.level})"
        drill = "-"
        if t.drill is not None:
            drill = seconds_text(t.drill_s) if t.drill_s is not None else "failed"
        why = "".join(f'<div class="{LEVEL_CLASS[t.level]}-text">{esc(r)}</div>' for r in t.reasons)
        why += "".join(f'<div class="muted">{esc(n)}</div>' for n in t.notes)
        rows.append(
            [
                html_td(f"{t.kind} {t.target}", esc),
                _badge(t.level, esc),
                html_td(time_text(newest.created) if newest else "none", esc, "nowrap"),
                html_td("-" if t.age_s is None else seconds_text(t.age_s), esc, "num"),
                html_td(human_bytes(newest.size) if newest and newest.size else "-", esc, "num"),
                html_td(verify, esc),
                html_td(drill, esc, "num"),
                f"<td>{why}</td>",
            ]
        )
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in report.status.notes)
    head = ("target", "state", "newest good backup", "age", "size", "verify", "drill", "why")
    return f'<section id="status"><h2>Status now</h2>{html_table(head, rows, esc)}{notes}</section>'


def _failures(report: Report, esc: Esc) -> str:
    if not report.failures:
        text = "None in this window: no failed runs, verifies or drills, no damaged backups."
        return _section("failures", "Latest failures", f'<p class="muted">{esc(text)}</p>')
    rows = [
        [
            html_td(time_text(f.at), esc, "nowrap"),
            _badge(f.severity, esc),
            html_td(f.what, esc),
            html_td(f.subject, esc),
            html_td(f.detail, esc),
        ]
        for f in report.failures[:MAX_ROWS]
    ]
    more = len(report.failures) - MAX_ROWS
    tail = f'<p class="note">and {more} older (see --json)</p>' if more > 0 else ""
    table = html_table(("when (UTC)", "severity", "what", "subject", "detail"), rows, esc)
    return f'<section id="failures"><h2>Latest failures</h2>{table}{tail}</section>'


def _rpo(report: Report, esc: Esc) -> str:
    rpo_s = report.objectives.rpo_s
    cards = []
    for track in report.rpo[:MAX_TARGETS]:
        if track.compliant_share is None:
            facts = "no good backup yet"
        else:
            facts = (
                f"within the RPO {track.compliant_share:.1%} of the time shown &middot; longest "
                f"gap {esc(seconds_text(track.longest_gap_s or 0))} &middot; "
                f"{len(track.over)} period(s) over the RPO"
            )
        chart = rpo_chart(track, rpo_s, esc)
        cards.append(
            f'<div class="card"><h3>{esc(track.kind)} {esc(track.target)}</h3>'
            f'<div class="muted">{facts}</div>{chart}</div>'
        )
    legend = (
        '<p class="legend muted"><span>line: age of the newest good backup</span><span>'
        '<i class="sw" style="background:var(--over)"></i>newest backup older than the RPO</span>'
        '<span><i class="sw" style="background:var(--none)"></i>no good backup yet</span></p>'
    )
    return (
        f'<section id="rpo"><h2>RPO compliance</h2>{legend}<div class="grid2">{"".join(cards)}'
        f"</div>{_more(report.targets, esc)}</section>"
    )


def _more(targets: Sequence[tuple[str, str]], esc: Esc) -> str:
    rest = targets[MAX_TARGETS:]
    if not rest:
        return ""
    return f'<p class="note">not drawn: {esc(", ".join(f"{k} {t}" for k, t in rest))}</p>'


def _targets(report: Report, esc: Esc) -> str:
    cards = []
    for kind, target in report.targets[:MAX_TARGETS]:
        mine = [b for b in report.backups if b.kind == kind and b.target == target]
        head = f"<h3>{esc(kind)} {esc(target)}</h3>"
        if not mine:
            cards.append(
                f'<div class="card">{head}<p class="muted">no backups in this window</p></div>'
            )
            continue
        t0, t1 = mine[0].created, report.generated_at
        span = (t1 - t0) * 0.04
        t0 -= span
        failed = {v.artifact for v in report.verifies if v.outcome == "failed"}
        sizes = [_point(b, b.size, human_bytes(b.size or 0), failed) for b in mine]
        times = [_point(b, b.duration_s, seconds_text(b.duration_s or 0), failed) for b in mine]
        good = [b for b in mine if b.status == "ok"]
        facts = f"{len(mine)} backup(s), {len(good)} good"
        if good and good[-1].size is not None:
            facts += f"; newest {human_bytes(good[-1].size)}"
        size_chart = series_chart(
            sizes, f"size of {kind} {target}", esc, kind="bytes", t0=t0, t1=t1
        )
        time_chart = series_chart(
            times, f"duration of {kind} {target}", esc, kind="seconds", t0=t0, t1=t1
        )
        cards.append(
            f'<div class="card">{head}<div class="muted">{esc(facts)}</div>'
            f'<div class="muted">size</div>{size_chart}<div class="muted">duration</div>'
            f"{time_chart}</div>"
        )
    return (
        '<section id="targets"><h2>Backups per target</h2><div class="grid2">'
        f"{''.join(cards)}</div>{_more(report.targets, esc)}</section>"
    )


def _point(b: BackupPoint, value: float | None, shown: str, failed: set[str]) -> Point:
    """A red cross when the file is not good, or its last verify failed."""
    state = "verify failed" if b.name in failed else b.status
    title = f"{b.name} ({time_text(b.created, seconds=True)} UTC): {shown}, {state}"
    good = b.status == "ok" and b.name not in failed
    return Point(b.created, None if value is None else float(value), good, title)


def _drills(report: Report, esc: Esc) -> str:
    if not report.drills:
        text = "No drills in this window: recoverability unproven. Run 'safehold drill'."
        return _section("drills", "Restore drills", f'<p class="muted">{esc(text)}</p>')
    points: list[DrillPoint] = []
    rows = []
    for d in report.drills:
        parts = []
        for m in d.members:
            ok = m.get("outcome") == "ok"
            seconds = float(m.get("seconds", 0.0)) if ok else None
            what = f"{m.get('kind')} {m.get('target')}"
            shown = seconds_text(seconds) if seconds is not None else "failed"
            parts.append(f"{what}: {shown}")
            title = f"{what} ({m.get('artifact')}), {time_text(d.started_at)} UTC: {shown}"
            points.append(DrillPoint(d.started_at, seconds, str(m.get("kind")), title))
        if d.set_id and d.outcome == "ok":
            title = f"set {d.set_id} as a whole, {time_text(d.started_at)} UTC: "
            points.append(
                DrillPoint(d.started_at, d.recovery_s, "full", title + seconds_text(d.recovery_s))
            )
        rows.append(
            [
                html_td(time_text(d.started_at), esc, "nowrap"),
                html_td(d.subject, esc),
                _badge("ok" if d.outcome == "ok" else "critical", esc),
                html_td(seconds_text(d.recovery_s) if d.outcome == "ok" else "-", esc, "num"),
                html_td("; ".join(parts) + (f" - {d.error}" if d.error else ""), esc),
            ]
        )
    legend = (
        '<p class="legend muted"><span><i class="sw" style="background:var(--db)"></i>database'
        '</span><span><i class="sw" style="background:var(--vol)"></i>volume</span><span><i '
        'class="sw" style="background:var(--full)"></i>full-system set (total)</span><span '
        'class="crit-text">&#x2715; failed</span><span>log scale; dashed lines: RTO</span></p>'
    )
    chart = drill_chart(points, report.objectives, esc)
    table = html_table(
        ("when (UTC)", "drill of", "outcome", "recovery", "per backup"),
        reversed(rows[-MAX_ROWS:]),
        esc,
    )
    return (
        f'<section id="drills"><h2>Restore drills</h2>{legend}<div class="card">{chart}</div>'
        f"{table}</section>"
    )


def _sets(report: Report, esc: Esc) -> str:
    if not report.sets:
        return ""
    rows = [
        [
            html_td(s.id, esc),
            html_td(time_text(s.started_at), esc, "nowrap"),
            html_td("-" if s.duration_s is None else seconds_text(s.duration_s), esc, "num"),
            html_td(s.members, esc, "num"),
            _badge("ok" if s.status == "ok" else "critical", esc),
            html_td("" if s.status == "ok" else s.status, esc),
        ]
        for s in reversed(report.sets[-MAX_ROWS:])
    ]
    head = ("set", "started (UTC)", "took", "members", "state", "")
    return _section("sets", "Full-system sets", html_table(head, rows, esc))


def _newest(report: Report, esc: Esc) -> str:
    verified = {v.artifact: v for v in report.verifies}
    rows = []
    for b in reversed(report.backups[-NEWEST_BACKUPS:]):
        v = verified.get(b.name)
        check = "-" if v is None else f"{v.outcome} ({v.level}, {_short(v.checked_at)})"
        level = (
            "ok"
            if b.status == "ok"
            else "warning"
            if b.status == "unverified/foreign"
            else "critical"
        )
        rows.append(
            [
                html_td(time_text(b.created), esc, "nowrap"),
                html_td(f"{b.kind} {b.target or '?'}", esc),
                html_td(b.name, esc),
                html_td(human_bytes(b.size) if b.size is not None else "-", esc, "num"),
                html_td("-" if b.duration_s is None else seconds_text(b.duration_s), esc, "num"),
                f'<td><span class="badge {LEVEL_CLASS[level]}">{esc(b.status)}</span></td>',
                html_td(check, esc),
                html_td(b.set_id or "", esc),
            ]
        )
    head = ("created (UTC)", "target", "file", "size", "took", "status", "verify", "set")
    return f'<section id="backups"><h2>Newest backups</h2>{html_table(head, rows, esc)}</section>'


def _section(anchor: str, title: str, inner: str) -> str:
    return f'<section id="{anchor}"><h2>{title}</h2>{inner}</section>'


def _short(moment: datetime) -> str:
    return time_text(moment)[5:]
