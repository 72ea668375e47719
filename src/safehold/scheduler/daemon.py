"""The schedule in the foreground, for containers without cron: one loop, one job at a time.

- The loop sleeps until the earliest due job, runs it, and looks again. Jobs never overlap;
  jobs due together run in the schedule's order (backups, then the archive copy, then drill).
- A job that was due while another ran runs once when that one ends, however many of its runs
  were missed (a job's next time is computed from when it last started). Runs missed while the
  daemon was not running are not made up.
- A failing job is logged with its exit code and the end of its output; the loop goes on.
- Stopping (SIGTERM, SIGINT) happens between jobs. A running job is interrupted the way Ctrl-C
  interrupts it (SIGINT: safehold removes its unfinished file and releases the lock, exit 130),
  and killed if it has not ended ``stop_timeout`` seconds later or on a second signal. Ctrl-C at
  a terminal already reaches the job (same process group), so it is not sent twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from types import FrameType
from typing import Protocol, TextIO

from .. import _proc
from ..model import Event, EventSink
from .invocation import Invocation
from .jobs import Job, next_runs

_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+[A-Z]+\s+")
POLL_S = 0.2  # how often a running job is checked for a stop request
MAX_NAP_S = 60.0  # a sleeping loop looks at the wall clock at least this often


class Stop:
    """A stop request, set from a signal handler (or a test); says what to do with the job."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.interrupt_job = True  # send the running job SIGINT
        self.kill_job = False  # a second request: kill it now

    def request(self, reason: str, *, interrupt_job: bool = True) -> None:
        if self._event.is_set():
            self.kill_job = True
            return
        self.reason, self.interrupt_job = reason, interrupt_job
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(max(0.0, seconds))


class Clock(Protocol):
    def now(self) -> datetime: ...

    def wait(self, seconds: float, stop: Stop) -> None:
        """Return after ``seconds``, or earlier when ``stop`` is requested."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, seconds: float, stop: Stop) -> None:
        # In naps, so a wall clock that jumps (NTP, a suspended host) is noticed.
        stop.wait(min(seconds, MAX_NAP_S))


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    command: str = ""  # the command that failed (shell-quoted), when one did
    detail: str = ""  # the end of its stderr


@dataclass(frozen=True)
class JobRun:
    job: str
    due: datetime
    started: datetime
    finished: datetime
    outcome: Outcome

    @property
    def duration_s(self) -> float:
        return (self.finished - self.started).total_seconds()


Runner = Callable[[Job, Stop], Outcome]


class DaemonLog:
    """The daemon's own lines go to the runtime's sink; a job's stderr lines (already
    timestamped by the job) are copied verbatim to ``raw``. One lock for both: the metrics
    thread may log too."""

    def __init__(self, sink: EventSink, raw: TextIO | None = None) -> None:
        self._sink, self._raw, self._lock = sink, raw, threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._sink(event)

    def line(self, text: str) -> None:
        if self._raw is None:
            return
        with self._lock:
            self._raw.write(text + "\n")
            self._raw.flush()


@dataclass
class SubprocessRunner:
    """Runs a job's commands as child processes (argv lists through ``_proc``), each only when
    the one before succeeded."""

    invocation: Invocation
    log: DaemonLog
    stop_timeout: float = 30.0
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, job: Job, stop: Stop) -> Outcome:
        env = dict(self.invocation.env)
        if self.environ.get("PGPASSWORD"):  # _proc drops it from the inherited environment
            env["PGPASSWORD"] = self.environ["PGPASSWORD"]
        for number, step in enumerate(job.steps):
            argv = self.invocation.argv(step)
            command = shlex.join(argv)
            if number and stop.is_set():
                return Outcome(130, command, "stopped before this command")
            self.log(Event("job", f"{job.name}: running {command}"))
            code, tail = self._run(job, argv, env, stop)
            if code != 0:
                return Outcome(code, command, tail)
        return Outcome(0)

    def _run(self, job: Job, argv: list[str], env: dict[str, str], stop: Stop) -> tuple[int, str]:
        proc = _proc.spawn(argv, env=env, stdout=None)
        assert proc.stderr is not None
        tail = _proc.StderrTail(proc.stderr, on_line=self.log.line)
        asked: float | None = None
        killed = False
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if not stop.is_set() or killed:
                continue
            if asked is None:
                asked = time.monotonic()
                if stop.interrupt_job:
                    proc.send_signal(signal.SIGINT)
                self.log(
                    Event(
                        "daemon",
                        f"{job.name}: stopping ({stop.reason}): waiting up to "
                        f"{self.stop_timeout:g}s for it to end",
                        "warning",
                    )
                )
            elif stop.kill_job or time.monotonic() - asked > self.stop_timeout:
                proc.kill()
                killed = True
                self.log(Event("daemon", f"{job.name}: killed", "warning"))
        return (128 - code if code < 0 else code), tail.text()


class Observer(Protocol):
    def scheduled(self, job: str, due: datetime) -> None: ...

    def finished(self, run: JobRun) -> None: ...


def run_loop(
    jobs: Sequence[Job],
    runner: Runner,
    *,
    clock: Clock,
    stop: Stop,
    log: EventSink,
    zone: tzinfo,
    observer: Observer | None = None,
    max_runs: int | None = None,
) -> list[JobRun]:
    """Run ``jobs`` on their schedule until ``stop`` (or ``max_runs`` runs); returns the runs."""
    order = {job.name: i for i, job in enumerate(jobs)}
    due: dict[str, datetime] = {}
    runs: list[JobRun] = []
    announced: tuple[str, datetime] | None = None

    def schedule(job: Job, after: datetime) -> None:
        due[job.name] = next_runs(job.expression, after, 1, zone)[0].astimezone(UTC)
        if observer is not None:
            observer.scheduled(job.name, due[job.name])

    start = clock.now()
    for job in jobs:
        schedule(job, start)
    while jobs and not stop.is_set() and (max_runs is None or len(runs) < max_runs):
        now = clock.now()
        ready = [job for job in jobs if due[job.name] <= now]
        if not ready:
            first = min(jobs, key=lambda j: (due[j.name], order[j.name]))
            if announced != (first.name, due[first.name]):
                announced = (first.name, due[first.name])
                when = due[first.name].astimezone(zone)
                log(Event("daemon", f"next: {first.name} at {when:%Y-%m-%d %H:%M %Z}"))
            clock.wait((due[first.name] - now).total_seconds(), stop)
            continue
        job = min(ready, key=lambda j: (due[j.name], order[j.name]))
        run = _run_one(job, due[job.name], runner, clock, stop, log, zone)
        runs.append(run)
        schedule(job, run.started)  # missed runs of its own collapse into one catch-up run
        if observer is not None:
            observer.finished(run)
    if stop.is_set():
        log(Event("daemon", f"stopped ({stop.reason})"))
    return runs


def _run_one(
    job: Job, due: datetime, runner: Runner, clock: Clock, stop: Stop, log: EventSink, zone: tzinfo
) -> JobRun:
    started = clock.now()
    late = started - due
    note = (
        f" (due {due.astimezone(zone):%H:%M}, {_took(late)} late)"
        if late > timedelta(minutes=1)
        else ""
    )
    log(Event("job", f"{job.name}: started, {job.what}{note}"))
    try:
        outcome = runner(job, stop)
    except Exception as exc:  # a job that cannot even start must not stop the others
        outcome = Outcome(1, "", f"{type(exc).__name__}: {exc}")
    finished = clock.now()
    run = JobRun(job.name, due, started, finished, outcome)
    took = _took(finished - started)
    if outcome.exit_code == 0:
        log(Event("job", f"{job.name}: ok in {took}"))
    else:
        last = _reason(outcome.detail)
        log(
            Event(
                "job",
                f"{job.name}: failed with exit code {outcome.exit_code} after {took}"
                + (f" in '{outcome.command}'" if outcome.command else "")
                + (f": {last}" if last else ""),
                "error",
                {"job": job.name, "exit_code": outcome.exit_code},
            )
        )
    return run


def _reason(detail: str) -> str:
    """The job's own ``error:`` line (without its timestamp), else its last line."""
    lines = [_STAMP.sub("", line).strip() for line in detail.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


def _took(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"


@contextlib.contextmanager
def stop_on_signals(stop: Stop) -> Iterator[None]:
    """SIGTERM and SIGINT request a stop (a second one kills the running job). Main thread only."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        # Ctrl-C at a terminal reaches the whole foreground process group, the job included.
        stop.request(name, interrupt_job=not (signum == signal.SIGINT and _terminal_foreground()))

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminal_foreground() -> bool:
    for stream in (sys.stdin, sys.stderr):
        try:
            if stream is not None and stream.isatty():
                return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
        except (OSError, ValueError):
            continue
    return False
