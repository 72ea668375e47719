"""The only place safehold starts programs: argv lists, explicit environments, captured stderr.

Secrets travel in the environment (``PGPASSWORD``), never in argv, and every message built from a
program's output goes through ``redact`` first.

Interruption: ``handle_interrupts`` (the CLI calls it at start-up) turns the first SIGTERM or
SIGINT into ``Interrupted``, an exception that unwinds like Ctrl-C's KeyboardInterrupt so every
``finally`` runs (unfinished files removed, containers started again, the lock released). The
children started by ``spawn`` are sent SIGTERM at once, so a thread or a wait blocked on one
of them ends too; they share our process group, so a terminal's Ctrl-C reaches them as well.
Later signals are noted, never raised: they cannot abort the clean-up half-way. Code that must
not be cut in two (starting stopped containers again) runs ``shielded``: a signal arriving
inside is raised when the block ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from .errors import ToolError

STDERR_TAIL_LINES = 40
PIPE_SIZE = 1 << 20


def find_tool(name: str, bin_dir: Path | None = None) -> str:
    """Return the path of ``name``, preferring ``bin_dir``; a missing tool is a clear error."""
    if bin_dir is not None:
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise ToolError(
            f"{name} not found in {bin_dir}",
            hint="check pg_bin_dir in the config (SAFEHOLD_DATABASE_PG_BIN_DIR)",
        )
    found = shutil.which(name)
    if found is None:
        raise ToolError(
            f"{name} is not installed or not on PATH",
            hint="install the PostgreSQL client tools (Debian/Ubuntu: apt-get install "
            "postgresql-client) or set pg_bin_dir in the config",
        )
    return found


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Tools must speak plainly so their messages can be matched and shown.
    env["LC_MESSAGES"] = "C"
    env.pop("PGPASSWORD", None)
    if extra:
        env.update(extra)
    return env


def redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    input_file: IO[bytes] | None = None,
) -> Completed:
    """Run to completion and capture output as text. Never raises on a non-zero exit."""
    try:
        proc = subprocess.run(
            list(argv),
            env=child_env(env),
            stdin=input_file if input_file is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    return Completed(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


class StderrTail:
    """Drains a pipe in a thread so the child never blocks on a full stderr, keeping the tail."""

    def __init__(self, stream: IO[bytes], on_line: Callable[[str], None] | None = None) -> None:
        self._lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._on_line = on_line
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._lines.append(line)
            if self._on_line is not None:
                self._on_line(line)
        stream.close()

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self._lines)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start a streaming child whose stderr the caller drains with ``StderrTail``."""
    try:
        proc = subprocess.Popen(
            list(argv), env=child_env(env), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE
        )
    except FileNotFoundError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    with _children_guard:
        for pid in [pid for pid, child in _children.items() if child.returncode is not None]:
            del _children[pid]
        _children[proc.pid] = proc
    if _state.caught is not None:
        proc.terminate()  # started by a thread that did not hear of the interruption yet
    if proc.stdout is not None:
        widen_pipe(proc.stdout.fileno())
    return proc


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: far fewer wake-ups between a fast producer and us."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    for size in (PIPE_SIZE, 256 * 1024):
        try:
            fcntl.fcntl(fd, set_size, size)
            return
        except OSError:
            continue  # above /proc/sys/fs/pipe-max-size for this user: try smaller


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate a child we started (and only it), escalating to SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process exists (signal 0); one owned by another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- interruption (SIGTERM, SIGINT) ----

_children: dict[int, subprocess.Popen[bytes]] = {}
_children_guard = threading.RLock()  # re-entrant: the handler may run while spawn holds it


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: unwinds like Ctrl-C, so every ``finally`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _State:
    caught: int | None = None  # the first signal received
    depth: int = 0  # nesting of ``shielded`` blocks in the main thread
    pending: bool = False  # caught inside a shielded block: raise when it ends
    stopped: list[str] = field(default_factory=list)  # programs the signal stopped


_state = _State()


def handle_interrupts() -> None:
    """Install the SIGTERM/SIGINT handlers (main thread only; the CLI does this at start-up)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _state.caught is not None:
        note = f"safehold: {name} again: still cleaning up (SIGKILL stops without cleaning up)\n"
        with contextlib.suppress(OSError):
            os.write(2, note.encode())  # not through sys.stderr: it may be mid-write
        return
    _state.caught = signum
    _state.stopped = [_program(child) for child in terminate_children()]
    if _state.depth > 0:
        _state.pending = True
        return
    raise Interrupted(signum)


def caught_signal() -> int | None:
    """The signal that interrupted this process, if one did."""
    return _state.caught


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run the block to its end even when SIGTERM/SIGINT arrives; the interruption is raised
    after it. (Only the main thread is ever interrupted: elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if _state.depth == 0 and _state.pending and _state.caught is not None:
        _state.pending = False
        raise Interrupted(_state.caught)


def terminate_children() -> list[subprocess.Popen[bytes]]:
    """Send SIGTERM to every child ``spawn`` started that still runs; returns them."""
    with _children_guard:
        running = [child for child in _children.values() if child.poll() is None]
    for child in running:
        with contextlib.suppress(OSError):
            child.terminate()
    return running


def stop_children(grace: float = 5.0) -> list[str]:
    """Stop every child still running (SIGTERM, SIGKILL after ``grace``); the programs stopped.
    Called as an interrupted process ends: none of its children may outlive it."""
    names = []
    for child in terminate_children():
        stop(child, grace)
        names.append(_program(child))
    return names


def stopped_children() -> list[str]:
    """The programs the interrupting signal stopped (their names)."""
    return list(_state.stopped)


def _program(child: subprocess.Popen[bytes]) -> str:
    args = child.args if isinstance(child.args, list) else [child.args]
    return Path(str(args[0])).name


def shell_word(text: str) -> str:
    """``text`` as one word of a command line PostgreSQL runs through ``sh -c`` (archive and
    restore commands): bare when it is plain, else double-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./=:@+-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'
