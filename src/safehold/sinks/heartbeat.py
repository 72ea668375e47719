"""Heartbeat pings in the Healthchecks.io convention, so that a schedule that stops running is
noticed by the receiver (an alert cannot report a run that never started).

``<url>/start`` when a run starts, ``<url>`` when it succeeds, ``<url>/fail`` when it fails;
each a ``POST`` whose plain-text body starts with ``exit code N`` (the receiver shows it in its
log), with ``rid=<uuid>`` in the query so the receiver pairs a start with its end and measures
the run. Any service that takes these three URLs works (Healthchecks.io, self-hosted
Healthchecks, Uptime Kuma's push monitors, Cronitor's Healthchecks-compatible API).

A ping never decides the run's outcome: the caller turns a failure into a warning line.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Literal

from .._version import __version__

Signal = Literal["start", "success", "fail"]
TIMEOUT_S = 5.0  # at most: a dead receiver must not hold a backup up for long


class HeartbeatFailed(Exception):
    """The receiver did not take the ping."""


def ping_url(url: str, signal: Signal, rid: str | None = None) -> str:
    """``url`` with ``/start`` or ``/fail`` added to its path (its query kept) and the run id."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if signal != "success":
        path += f"/{signal}"
    query = parts.query
    if rid:
        query = "&".join(q for q in (query, f"rid={urllib.parse.quote(rid)}") if q)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def ping(url: str, signal: Signal, body: str, timeout: float, rid: str | None = None) -> None:
    """POST ``body`` to the ping URL of ``signal``; raise ``HeartbeatFailed`` unless 2xx."""
    target = ping_url(url, signal, rid)
    if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
        raise HeartbeatFailed("not an http:// or https:// URL")
    headers = {"Content-Type": "text/plain; charset=utf-8", "User-Agent": f"safehold/{__version__}"}
    request = urllib.request.Request(  # noqa: S310 (the scheme was checked above)
        target, data=body.encode("utf-8"), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=min(timeout, TIMEOUT_S)) as answer:  # noqa: S310
            answer.read()
    except urllib.error.HTTPError as exc:
        raise HeartbeatFailed(f"HTTP {exc.code} {exc.reason}".strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            raise HeartbeatFailed("timed out") from None
        text = getattr(reason, "strerror", None) or str(reason)
        raise HeartbeatFailed(text) from None


def body(exit_code: int | None, command: str, message: str | None, hint: str | None) -> str:
    lines = [] if exit_code is None else [f"exit code {exit_code}"]
    lines.append(f"safehold {command}".strip())
    lines += [f"error: {message}"] if message else []
    lines += [f"hint: {hint}"] if hint else []
    return "\n".join(lines) + "\n"


def safe_url(url: str) -> str:
    """scheme://host:port only: a ping URL's path is its secret (the check's UUID or key)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}/..."
    except ValueError:
        return "(unparseable URL)"
