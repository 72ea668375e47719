"""Alerts through real receivers: an HTTP server and an SMTP server on loopback, the real CLI.

Every test looks at what the receiver got (or that it got nothing), never at a mock.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from rich.console import Console

from safehold import config
from safehold.cli.runtime import Runtime
from safehold.errors import DatabaseMissing
from safehold.model import Event
from safehold.sinks import fan_out
from safehold.sinks.alerts import Alert, RecentLines, send_alert
from safehold.sources.postgres import PgTarget

from .conftest import CliRunner

PASSWORD = "pw-Xq81-never-shown"

# apprise itself imports the deprecated imghdr module
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode()))


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST. It answers ``status``, after
    closing the first ``drop`` connections without any answer."""

    status: int = 200
    drop: int = 0
    requests: list[Request] = field(default_factory=list)
    attempts: int = 0
    url: str = ""

    def start(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.attempts += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.drop > 0:
                    receiver.drop -= 1
                    self.close_connection = True
                    return  # no answer at all: the client sees the connection close
                receiver.requests.append(Request(self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return server


class Receivers:
    """Starts receivers for one test and stops them after it."""

    def __init__(self) -> None:
        self._servers: list[ThreadingHTTPServer] = []

    def serve(self, status: int = 200, drop: int = 0) -> Receiver:
        receiver = Receiver(status=status, drop=drop)
        self._servers.append(receiver.start())
        return receiver

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    started = Receivers()
    yield started
    started.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def closed_url() -> str:
    """An address where nothing listens: every connection is refused."""
    return f"http://127.0.0.1:{free_port()}/hook"


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Mailbox]]:
    """A real SMTP server (aiosmtpd) on loopback: no TLS, no authentication."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


def sample_alert(**changes: Any) -> Alert:
    values: dict[str, Any] = {
        "what": "backup failed",
        "command": "backup",
        "host": "db-host-1",
        "repository": "/srv/backups",
        "message": 'database "nope" does not exist',
        "hint": "check DB_NAME",
        "exit_code": 3,
        "error_type": "DatabaseMissing",
        "log_excerpt": ("2024-12-01T02:00:00Z INFO    backup: starting", "line two"),
        "at": datetime(2024, 12, 1, 2, 0, 5, tzinfo=UTC),
    }
    return Alert(**{**values, **changes})


# ---- the JSON webhook ----


def test_webhook_gets_the_alert_as_json(receivers: Receivers) -> None:
    hook = receivers.serve()
    events: list[Event] = []
    failed = send_alert(sample_alert(), (), hook.url + "/hooks/safehold", 5, events.append)
    assert failed == []
    [got] = hook.requests
    assert got.path == "/hooks/safehold"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("safehold/")
    body = got.json()
    assert body == {
        "schema": "safehold.alert/1",
        "tool": "safehold",
        "version": body["version"],
        "what": "backup failed",
        "command": "backup",
        "host": "db-host-1",
        "repository": "/srv/backups",
        "time": "2024-12-01T02:00:05Z",
        "message": 'database "nope" does not exist',
        "hint": "check DB_NAME",
        "exit_code": 3,
        "error_type": "DatabaseMissing",
        "log_excerpt": ["2024-12-01T02:00:00Z INFO    backup: starting", "line two"],
        "title": "safehold: backup failed on db-host-1",
        "text": body["text"],
    }
    assert 'error:       database "nope" does not exist' in body["text"]
    assert body["text"].endswith(
        "last log lines:\n2024-12-01T02:00:00Z INFO    backup: starting\nline two"
    )
    assert [e.level for e in events] == ["info"]
    assert "sent to webhook " + hook.url + "/..." in events[0].message


def test_webhook_connection_dropped_once_is_retried(receivers: Receivers) -> None:
    hook = receivers.serve(drop=1)
    events: list[Event] = []
    assert send_alert(sample_alert(), (), hook.url, 5, events.append) == []
    assert hook.attempts == 2
    [got] = hook.requests
    assert got.json()["message"] == 'database "nope" does not exist'
    assert [e.level for e in events] == ["info"]


def test_webhook_dropping_every_connection_fails_after_one_retry(
    receivers: Receivers,
) -> None:
    hook = receivers.serve(drop=5)
    events: list[Event] = []
    assert send_alert(sample_alert(), (), hook.url, 5, events.append) == [f"webhook {hook.url}"]
    assert hook.attempts == 2
    assert hook.requests == []
    [warning] = events
    assert warning.level == "warning"
    assert warning.message.startswith(f"not delivered to webhook {hook.url}: ")


def test_webhook_answering_500_or_down_is_a_warning_naming_it(receivers: Receivers) -> None:
    broken = receivers.serve(status=500)
    events: list[Event] = []
    failed = send_alert(sample_alert(), (), broken.url + "/x?token=T0KEN", 5, events.append)
    assert failed == [f"webhook {broken.url}/..."]
    [got] = broken.requests  # it did get the alert, and answered 500: not retried
    assert got.json()["what"] == "backup failed"
    [warning] = events
    assert warning.message == (
        f"not delivered to webhook {broken.url}/...: HTTP 500 Internal Server Error"
    )
    assert "T0KEN" not in warning.message

    down = closed_url()
    events.clear()
    failed = send_alert(sample_alert(), (), down, 2, events.append)
    assert failed == [f"webhook {down.removesuffix('/hook')}/..."]
    assert "Connection refused" in events[0].message
    assert events[0].level == "warning"


def test_webhook_that_never_answers_times_out_without_retry() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        events: list[Event] = []
        started = time.monotonic()
        assert send_alert(sample_alert(), (), url, 1, events.append) == [f"webhook {url}"]
        assert time.monotonic() - started < 1.9  # one attempt of 1 s: a timeout is not retried
    assert events[0].message == f"not delivered to webhook {url}: timed out"


# ---- Apprise ----


def test_apprise_json_and_form_urls_get_title_and_body(receivers: Receivers) -> None:
    as_json, as_form = receivers.serve(), receivers.serve()
    urls = [
        as_json.url.replace("http://", "json://") + "/notify",
        as_form.url.replace("http://", "form://") + "/notify",
    ]
    events: list[Event] = []
    assert send_alert(sample_alert(), urls, "", 5, events.append) == []
    sent = as_json.requests[0].json()
    assert sent["title"] == "safehold: backup failed on db-host-1"
    assert sent["type"] == "failure"
    assert 'error:       database "nope" does not exist' in sent["message"]
    assert "hint:        check DB_NAME" in sent["message"]
    assert "repository:  /srv/backups" in sent["message"]
    assert sent["message"].endswith("backup: starting\nline two")
    form = as_form.requests[0].form()
    assert form["title"] == "safehold: backup failed on db-host-1"
    assert "exit code:   3" in form["message"]
    assert [e.level for e in events] == ["info"]
    assert events[0].message.count("://127.0.0.1:") == 2


def test_apprise_mailto_is_delivered_by_a_real_smtp_server(smtp: tuple[int, Mailbox]) -> None:
    port, mailbox = smtp
    url = f"mailto://127.0.0.1:{port}?from=safehold@example.com&to=ops@example.com"
    events: list[Event] = []
    assert send_alert(sample_alert(), [url], "", 5, events.append) == []
    [envelope] = mailbox.envelopes
    assert envelope.mail_from == "safehold@example.com"
    assert envelope.rcpt_tos == ["ops@example.com"]
    assert isinstance(envelope.content, bytes)
    mail = message_from_bytes(envelope.content, policy=policy.default)
    assert mail["Subject"] == "safehold: backup failed on db-host-1"
    text = mail.get_body(("plain",))
    assert text is not None
    content = text.get_content().replace("\r\n", "\n")
    assert 'error:       database "nope" does not exist' in content
    assert "last log lines:\n2024-12-01T02:00:00Z INFO    backup: starting\nline two" in content


def test_failing_apprise_targets_are_warnings_and_the_rest_still_get_it(
    receivers: Receivers,
) -> None:
    good, broken = receivers.serve(), receivers.serve(status=500)
    down_port = free_port()
    urls = [
        good.url.replace("http://", "json://"),
        broken.url.replace("http://", "json://"),
        f"mailto://alerts:{PASSWORD}@127.0.0.1:{down_port}?from=a@example.com&to=ops@example.com",
        f"nosuchservice://{PASSWORD}@x",
    ]
    events: list[Event] = []
    failed = send_alert(sample_alert(), urls, "", 3, events.append)
    assert good.requests[0].json()["title"] == "safehold: backup failed on db-host-1"
    assert broken.requests[0].json()["title"] == "safehold: backup failed on db-host-1"
    assert len(failed) == 3
    assert "apprise URL #4 (nosuchservice://...)" in failed
    assert f"json://127.0.0.1:{broken.url.rsplit(':', 1)[1]}/" in failed
    assert any(name.startswith("mailto://alerts:") and str(down_port) in name for name in failed)
    warnings = [e.message for e in events if e.level == "warning"]
    assert len(warnings) == 3
    assert all(w.startswith("not delivered to ") for w in warnings)
    assert not any(PASSWORD in e.message or PASSWORD in str(e.data) for e in events)
    assert any("500" in w for w in warnings)


# ---- the excerpt, and the runtime hook ----


def test_recent_lines_keeps_the_last_lines_as_logged_and_masks_secrets() -> None:
    recent = RecentLines(size=3, secrets=[PASSWORD, None])
    for n in range(5):
        recent(Event("backup", f"step {n}"))
    recent(Event("backup", "debug noise", "debug"))
    recent(Event("pg", f"password={PASSWORD} rejected", "warning"))
    lines = recent.lines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO    backup: step 3",
        "INFO    backup: step 4",
        "WARNING pg: password=*** rejected",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[0].split(" ")[0])


def runtime_for(tmp_path: Path, alerts: str, events: list[Event]) -> Runtime:
    (tmp_path / "safehold.toml").write_text(
        f'backup_dir = "{tmp_path / "backups"}"\n[alerts]\n{alerts}\n', encoding="utf-8"
    )
    settings = config.load(tmp_path / "safehold.toml", env={"PGPASSWORD": PASSWORD})
    recent = RecentLines(secrets=[settings.password])
    sink = fan_out(events.append, recent)
    return Runtime(settings, sink, False, Console(), [], None, recent, "backup")


def test_runtime_failure_alerts_with_excerpt_and_no_password(
    tmp_path: Path, receivers: Receivers
) -> None:
    hook = receivers.serve()
    events: list[Event] = []
    rt = runtime_for(tmp_path, f'webhook_url = "{hook.url}"\ntimeout = 5', events)
    failure = DatabaseMissing(f'database "nope" does not exist ({PASSWORD})', hint="check DB_NAME")
    with pytest.raises(DatabaseMissing) as caught, rt:
        rt.sink_info(f"connecting with {PASSWORD}")
        raise failure
    assert caught.value is failure  # the original error, untouched: main() maps it to exit 3
    [got] = hook.requests
    assert PASSWORD.encode() not in got.body
    body = got.json()
    assert body["what"] == "backup failed"
    assert body["command"] == "backup"
    assert body["exit_code"] == 3
    assert body["error_type"] == "DatabaseMissing"
    assert body["message"] == 'database "nope" does not exist (***)'
    assert body["repository"] == str(tmp_path / "backups")
    assert body["host"] == socket.gethostname()
    assert body["log_excerpt"][0].endswith("INFO    info: connecting with ***")
    assert body["log_excerpt"][-1].endswith(
        'ERROR   error: database "nope" does not exist (***) (hint: check DB_NAME)'
    )


def test_runtime_keeps_the_error_when_every_target_fails(
    tmp_path: Path, receivers: Receivers
) -> None:
    broken = receivers.serve(status=500)
    events: list[Event] = []
    alerts = (
        f'webhook_url = "{closed_url()}"\n'
        f'apprise_urls = ["{broken.url.replace("http://", "json://")}", "bogus://x"]\n'
        "timeout = 2"
    )
    rt = runtime_for(tmp_path, alerts, events)
    with pytest.raises(DatabaseMissing, match="nope"), rt:
        raise DatabaseMissing('database "nope" does not exist')
    assert broken.requests[0].json()["title"].startswith("safehold: backup failed on ")
    warnings = [e.message for e in events if e.level == "warning"]
    assert len(warnings) == 3
    assert any("webhook http://127.0.0.1:" in w and "Connection refused" in w for w in warnings)
    assert any("bogus://" in w for w in warnings)


def test_runtime_alert_is_public_and_silent_without_targets(
    tmp_path: Path, receivers: Receivers
) -> None:
    hook = receivers.serve()
    events: list[Event] = []
    rt = runtime_for(tmp_path, f'webhook_url = "{hook.url}"', events)
    rt.sink_info("newest backup is 30.0 h old")
    assert rt.alert("RPO breached", "newest backup is 30.0 h old (objective 24 h)") == []
    body = hook.requests[0].json()
    assert (body["what"], body["exit_code"], body["hint"]) == ("RPO breached", None, None)
    assert body["log_excerpt"][-1].endswith("info: newest backup is 30.0 h old")

    (tmp_path / "q").mkdir()
    quiet = runtime_for(tmp_path / "q", "", [])
    assert quiet.alert("RPO breached", "x") == []
    assert len(hook.requests) == 1


def test_runtime_does_not_alert_for_other_commands_or_interrupts(
    tmp_path: Path, receivers: Receivers
) -> None:
    hook = receivers.serve()
    rt = runtime_for(tmp_path, f'webhook_url = "{hook.url}"', [])
    rt.command = "list"
    with pytest.raises(DatabaseMissing), rt:
        raise DatabaseMissing("nope")
    rt = runtime_for(tmp_path, f'webhook_url = "{hook.url}"', [])
    with pytest.raises(KeyboardInterrupt), rt:
        raise KeyboardInterrupt
    assert hook.requests == []


# ---- end to end: the real command line ----


def _errors(stderr: str) -> list[str]:
    """The error and hint lines, without their timestamps."""
    return [
        re.sub(r"^\S+Z ERROR\s+", "", line)
        for line in stderr.splitlines()
        if re.search(r"\b(error|hint): ", line)
    ]


def test_cli_backup_failure_alerts_and_keeps_exit_code(
    run_cli: CliRunner, db: PgTarget, receivers: Receivers
) -> None:
    hook = receivers.serve()
    plain = run_cli("backup", env={"DB_NAME": "nope"})
    alerted = run_cli(
        "backup", env={"DB_NAME": "nope", "SAFEHOLD_ALERTS_WEBHOOK_URL": hook.url + "/h"}
    )
    assert plain.returncode == 3, plain.stderr
    assert alerted.returncode == plain.returncode
    assert _errors(alerted.stderr) == _errors(plain.stderr)
    assert _errors(plain.stderr)
    [got] = hook.requests
    assert db.password and db.password.encode() not in got.body
    body = got.json()
    assert body["what"] == "backup failed"
    assert body["command"] == "backup"
    assert body["exit_code"] == 3
    assert "nope" in body["message"]
    assert f"error: {body['message']}" in alerted.stderr
    assert body["log_excerpt"] and "nope" in body["log_excerpt"][-1]
    assert "alert: 'backup failed' sent to webhook" in alerted.stderr


def test_cli_failing_alert_targets_are_logged_and_change_nothing(
    run_cli: CliRunner, receivers: Receivers
) -> None:
    broken = receivers.serve(status=500)
    down = closed_url()
    result = run_cli(
        "backup",
        env={
            "DB_NAME": "nope",
            "SAFEHOLD_ALERTS_WEBHOOK_URL": down,
            "SAFEHOLD_ALERTS_APPRISE_URLS": broken.url.replace("http://", "json://"),
            "SAFEHOLD_ALERTS_TIMEOUT": "3",
        },
    )
    plain = run_cli("backup", env={"DB_NAME": "nope"})
    assert result.returncode == plain.returncode == 3, result.stderr
    assert _errors(result.stderr) == _errors(plain.stderr)
    assert "error: database 'nope' does not exist" in result.stderr, result.stderr
    assert broken.requests[0].json()["title"].startswith("safehold: backup failed on ")
    warnings = [line for line in result.stderr.splitlines() if "WARNING alert:" in line]
    assert len(warnings) == 2, result.stderr
    assert any(down.removesuffix("/hook") in w for w in warnings)
    assert any(f"json://127.0.0.1:{broken.url.rsplit(':', 1)[1]}" in w for w in warnings)


def test_cli_success_sends_no_alert(run_cli: CliRunner, receivers: Receivers) -> None:
    hook = receivers.serve()
    result = run_cli("backup", env={"SAFEHOLD_ALERTS_WEBHOOK_URL": hook.url})
    assert result.returncode == 0, result.stderr
    assert "db_backup_" in result.stdout
    assert hook.requests == []
    assert "alert" not in result.stderr
