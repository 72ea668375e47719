"""Alerts: tell someone when a run failed, through Apprise URLs and a plain JSON webhook.

An alert says what failed, where (host, repository), why (message, hint, exit code) and shows the
last lines this run logged. Sending one never raises and never changes the outcome of the run: a
target that fails is reported as a warning event naming it (with its secrets masked) and returned.

The JSON webhook gets ``POST`` ``application/json`` with :meth:`Alert.to_json` (schema in the
README's "Alerts" section); any answer other than 2xx is a failure, redirects are not followed,
and a connection error (refused, reset, dropped) is retried once.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .._proc import redact
from .._version import __version__
from ..model import Event, EventSink
from .log import LogSink

EXCERPT_LINES = 20
RETRY_DELAY_S = 0.5
SCHEMA = "safehold.alert/1"


@dataclass(frozen=True)
class Alert:
    """One notification: a failure (exit code set) or a finding such as an RPO breach."""

    what: str  # "backup failed", "RPO breached"
    command: str  # "backup", "restore", "status"
    host: str
    repository: str  # the backup folder (BACKUP_DIR)
    message: str
    hint: str | None = None
    exit_code: int | None = None
    error_type: str | None = None  # the error's class, e.g. "DatabaseMissing"
    log_excerpt: tuple[str, ...] = ()  # the last lines this run logged, oldest first
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def title(self) -> str:
        return f"safehold: {self.what} on {self.host}"

    def text(self) -> str:
        """The human-readable body: facts first, then the log excerpt."""
        rows = [
            ("what", self.what),
            ("command", f"safehold {self.command}".strip()),
            ("host", self.host),
            ("repository", self.repository),
            ("time", _iso(self.at)),
            ("error", self.message),
            ("hint", self.hint),
            ("exit code", None if self.exit_code is None else str(self.exit_code)),
        ]
        lines = [f"{name + ':':12} {value}" for name, value in rows if value]
        if self.log_excerpt:
            lines += ["", "last log lines:", *self.log_excerpt]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "tool": "safehold",
            "version": __version__,
            "what": self.what,
            "command": self.command,
            "host": self.host,
            "repository": self.repository,
            "time": _iso(self.at),
            "message": self.message,
            "hint": self.hint,
            "exit_code": self.exit_code,
            "error_type": self.error_type,
            "log_excerpt": list(self.log_excerpt),
            "title": self.title,
            "text": self.text(),
        }

    def redacted(self, secrets: Iterable[str | None]) -> Alert:
        """A copy with every secret (the database password) replaced by ``***``."""
        hidden = [s for s in secrets if s]
        if not hidden:
            return self

        def clean(text: str) -> str:
            return redact(text, hidden)

        return dataclasses.replace(
            self,
            what=clean(self.what),
            command=clean(self.command),
            repository=clean(self.repository),
            message=clean(self.message),
            hint=None if self.hint is None else clean(self.hint),
            log_excerpt=tuple(clean(line) for line in self.log_excerpt),
        )


class _Ring(io.StringIO):
    """A text stream that keeps only its last lines (secrets masked as they arrive)."""

    def __init__(self, size: int, secrets: Sequence[str]) -> None:
        super().__init__()
        self.kept: deque[str] = deque(maxlen=size)
        self._secrets = secrets

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self.kept.append(redact(line, self._secrets))
        return len(text)


class RecentLines:
    """A sink that keeps the last ``size`` log lines of this run, formatted as in a log file
    (progress throttled the same way), for an alert's excerpt."""

    def __init__(self, size: int = EXCERPT_LINES, secrets: Iterable[str | None] = ()) -> None:
        self._ring = _Ring(size, [s for s in secrets if s])
        self._log = LogSink(self._ring, fmt="text", level="info")

    def __call__(self, event: Event) -> None:
        self._log(event)

    def lines(self) -> tuple[str, ...]:
        return tuple(self._ring.kept)


def send_alert(
    alert: Alert,
    apprise_urls: Sequence[str],
    webhook_url: str,
    timeout: float,
    log: EventSink,
) -> list[str]:
    """Send ``alert`` to the JSON webhook and every Apprise URL; return the targets that failed
    (named with their secrets masked). Never raises; each failure is a warning event."""
    failed: list[str] = []
    sent: list[str] = []
    if webhook_url:
        name = f"webhook {_safe_url(webhook_url)}"
        try:
            post_json(webhook_url, alert.to_json(), timeout)
            sent.append(name)
        except Exception as exc:
            failed.append(name)
            why = redact(_reason(exc), [_password(webhook_url)])
            log(_warning(f"not delivered to {name}: {why}", name))
    if apprise_urls:
        try:
            ok, bad = _notify_apprise(alert, apprise_urls, timeout)
        except Exception as exc:
            ok, bad = [], [("apprise", _reason(exc))]
        sent += ok
        for name, why in bad:
            failed.append(name)
            log(_warning(f"not delivered to {name}: {why}", name))
    if sent:
        log(Event("alert", f"'{alert.what}' sent to {', '.join(sent)}", data={"sent": sent}))
    return failed


def post_json(url: str, payload: dict[str, Any], timeout: float) -> None:
    """POST ``payload`` as JSON; raise ``AlertFailed`` unless the answer is 2xx. A connection
    error (refused, reset, closed without an answer) is retried once; a timeout is not, so one
    target costs at most about twice ``timeout``."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise AlertFailed("not an http:// or https:// URL")
    body = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": f"safehold/{__version__}"}
    opener = urllib.request.build_opener(_NoRedirect)
    for attempt in (1, 2):
        # The scheme was checked above: http or https only.
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with opener.open(request, timeout=timeout) as response:
                response.read()
            return
        except urllib.error.HTTPError as exc:
            raise AlertFailed(f"HTTP {exc.code} {exc.reason}".strip()) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if attempt == 2 or isinstance(reason, TimeoutError | str):
                raise AlertFailed(_reason(reason)) from None
            time.sleep(RETRY_DELAY_S)
        except (OSError, http.client.HTTPException) as exc:
            raise AlertFailed(_reason(exc)) from None


class AlertFailed(Exception):
    """A target did not take the alert."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would become a GET without the alert: a 3xx is a failure instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _notify_apprise(
    alert: Alert, urls: Sequence[str], timeout: float
) -> tuple[list[str], list[tuple[str, str]]]:
    # Imported here: it takes about a second, paid only when there is something to send.
    import apprise

    # Apprise logs through `logging`; with nothing configured, Python would print its messages
    # raw on stderr (with passwords half-masked). What matters comes back as warning events.
    quiet = logging.getLogger("apprise")
    if not any(isinstance(h, logging.NullHandler) for h in quiet.handlers):
        quiet.addHandler(logging.NullHandler())
    secrets = [_password(url) for url in urls]
    bad: list[tuple[str, str]] = []
    hub = apprise.Apprise(asset=apprise.AppriseAsset(storage_mode="memory"))
    for number, url in enumerate(urls, 1):
        if not hub.add(url):
            scheme = urllib.parse.urlsplit(url).scheme or "?"
            bad.append((f"apprise URL #{number} ({scheme}://...)", "not a valid Apprise URL"))
    for service in hub:
        service.socket_connect_timeout = timeout
        service.socket_read_timeout = timeout
    if len(hub) == 0:
        return [], bad
    result = hub.notify(
        body=alert.text(),
        title=alert.title,
        notify_type=apprise.NotifyType.FAILURE,
        body_format=apprise.NotifyFormat.TEXT,
        timeout=2 * timeout + 1,
    )
    ok: list[str] = []
    for outcome in result.results:
        name = outcome.url.split("?", 1)[0]  # apprise's privacy form: passwords and tokens masked
        if outcome:
            ok.append(name)
            continue
        said = [entry.message for entry in outcome.logs() if entry.message]
        bad.append((name, redact(said[-1], secrets) if said else outcome.status.name.lower()))
    return ok, bad


def _warning(message: str, target: str) -> Event:
    return Event("alert", message, "warning", {"target": target})


def _reason(exc: object) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text and not isinstance(exc, AlertFailed) else text


def _safe_url(url: str) -> str:
    """scheme://host:port only: user info, path and query may hold tokens."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    rest = "/..." if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _password(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).password
    except ValueError:
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
