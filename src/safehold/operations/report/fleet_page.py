"""The fleet page of ``safehold report --fleet``: one self-contained HTML file (the report's
inline CSS; no script, font or link), a summary of every host of the bucket, then a section
per host with each target's newest backup against its RPO and its last drill."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ..._version import __version__
from ...sinks.log import human_bytes
from .fleet import FleetReport, HostStatus
from .svg import CSS, Esc, html_table, html_td, seconds_text, time_text

LEVEL_CLASS = {"ok": "ok", "warning": "warn", "critical": "crit", "unknown": "unk"}
FLEET_CSS = ".badge.unk{background:var(--muted)}.unk-text{color:var(--muted)}"


def render_fleet_html(report: FleetReport, secrets: Iterable[str | None] = ()) -> str:
    esc = Esc(secrets)
    body = [_header(report, esc), _summary(report, esc)]
    body += [_host(report, host, esc) for host in report.hosts]
    body += [f'<p class="note">{esc(note)}</p>' for note in report.notes]
    body.append(
        f'<p class="note">safehold {esc(__version__)} &middot; a self-contained page: no scripts, '
        "no network. Times are UTC. Read from the location: nothing was locked or written.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>safehold fleet {esc(time_text(report.checked_at))} UTC</title>"
        f"<style>{CSS}{FLEET_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _header(report: FleetReport, esc: Esc) -> str:
    goals = report.objectives
    return (
        f'<header><h1>safehold fleet</h1><span id="overall" class="badge big '
        f'{LEVEL_CLASS[report.level]}">{esc(report.level.upper())}</span>'
        f'<p class="meta">{len(report.hosts)} host(s) in <code>{esc(report.where)}</code> '
        f"(location {esc(report.location)}) &middot; checked "
        f"{esc(time_text(report.checked_at, seconds=True))} UTC &middot; exit code "
        f"{report.exit_code}<br>objectives: each host's own when its repository carries them, "
        f"else RPO {esc(seconds_text(goals.rpo_s))} &middot; RTO database "
        f"{goals.rto_database_s / 60:g} min, volumes {goals.rto_volumes_s / 60:g} min</p></header>"
    )


def _summary(report: FleetReport, esc: Esc) -> str:
    rows = []
    for host in report.hosts:
        targets = host.status.targets if host.status else []
        ages = [t.age_s for t in targets if t.age_s is not None]
        drill = host.last_drill
        drilled = "never" if drill is None else f"{time_text(drill.started_at)} {drill.outcome}"
        rows.append(
            [
                f'<td><a href="#host-{esc(host.host)}">{esc(host.host)}</a></td>',
                _badge(host.level, esc),
                html_td(len(targets), esc, "num"),
                html_td(seconds_text(max(ages)) if ages else "-", esc, "num"),
                html_td(drilled, esc, "nowrap"),
                html_td(host.error or "", esc),
            ]
        )
    head = ("host", "state", "targets", "oldest newest backup", "last drill", "why unknown")
    return f'<section id="summary"><h2>Hosts</h2>{html_table(head, rows, esc)}</section>'


def _host(report: FleetReport, host: HostStatus, esc: Esc) -> str:
    title = f"{esc(host.host)} {_badge_span(host.level, esc)}"
    judged = "its own" if host.objectives_from == "repository" else "the reader's"
    meta = (
        f'<p class="meta"><code>s3://{esc(report.bucket)}/{esc(host.prefix)}</code>'
        f" &middot; {host.keys} objects listed in {host.read_s:.2f}s &middot; objectives: "
        f"{judged}</p>"
    )
    if host.status is None:
        why = f'<p class="unk-text">UNKNOWN: {esc(host.error or "not read")}</p>'
        return f'<section id="host-{esc(host.host)}"><h2>{title}</h2>{meta}{why}</section>'
    rows = []
    for t in host.status.targets:
        newest = t.newest
        drill = "-"
        if t.drill is not None:
            took = seconds_text(t.drill_s) if t.drill_s is not None else "failed"
            drill = f"{time_text(t.drill.started_at)} {t.drill.outcome} ({took})"
        why = "".join(f'<div class="{LEVEL_CLASS[t.level]}-text">{esc(r)}</div>' for r in t.reasons)
        rows.append(
            [
                html_td(f"{t.kind} {t.target}", esc),
                _badge(t.level, esc),
                _newest(newest.created, newest.name, esc) if newest else html_td("none", esc),
                html_td("-" if t.age_s is None else seconds_text(t.age_s), esc, "num"),
                html_td("-" if t.rpo_s is None else seconds_text(t.rpo_s), esc, "num"),
                html_td(human_bytes(newest.size) if newest and newest.size else "-", esc, "num"),
                html_td(drill, esc, "nowrap"),
                f"<td>{why}</td>",
            ]
        )
    head = ("target", "state", "newest good backup", "age", "RPO", "size", "last drill", "why")
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in host.status.notes)
    table = html_table(head, rows, esc) if rows else ""
    return f'<section id="host-{esc(host.host)}"><h2>{title}</h2>{meta}{table}{notes}</section>'


def _newest(at: datetime, name: str, esc: Esc) -> str:
    return f'<td class="nowrap">{esc(time_text(at))}<div class="muted">{esc(name)}</div></td>'


def _badge(level: str, esc: Esc) -> str:
    return f"<td>{_badge_span(level, esc)}</td>"


def _badge_span(level: str, esc: Esc) -> str:
    return f'<span class="badge {LEVEL_CLASS[level]}">{esc(level.upper())}</span>'
