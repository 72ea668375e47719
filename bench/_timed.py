"""Run a command (or a two-stage pipeline) timed, with each process's peak RSS.

Peak memory comes from GNU time (``/usr/bin/time -f %M``: the wait4 ``ru_maxrss`` of the
command, which covers the children it waited for, e.g. the gzip that ``tar czf`` starts). It
is not read from a direct child of this Python process: with vfork/exec, Linux carries the
parent's high-water mark into the child's ``ru_maxrss``. ``time`` itself is a small C
program, so what it reports is the command's own peak.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Timed:
    seconds: float  # wall time, perf_counter around start to exit
    max_rss_kb: int  # largest peak RSS of the processes (a pipeline: their sum)
    stdout: str


def have_gnu_time() -> bool:
    return os.access(GNU_TIME, os.X_OK)


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout_file: Path | None = None,
) -> Timed:
    """Run ``argv`` to the end; raise with its stderr when it fails."""
    with tempfile.TemporaryDirectory(prefix="bench-timed-") as scratch:
        rss = Path(scratch) / "rss"
        err = Path(scratch) / "err"
        out = stdout_file or Path(scratch) / "out"
        with out.open("wb") as sink, err.open("wb") as errors:
            started = time.perf_counter()
            done = subprocess.run(
                [GNU_TIME, "-f", "%M", "-o", str(rss), *argv],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=errors,
                check=False,
            )
            seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited with {done.returncode}:\n{err.read_text()[-3000:]}"
            )
        text = "" if stdout_file else out.read_text(errors="replace")
        return Timed(seconds, _rss(rss), text)


def pipeline(first: list[str], second: list[str], out: Path, *, cwd: Path | None = None) -> Timed:
    """``first | second > out``; the RSS is the sum of both peaks (they run together)."""
    with tempfile.TemporaryDirectory(prefix="bench-timed-") as scratch:
        rss1, rss2 = Path(scratch) / "rss1", Path(scratch) / "rss2"
        with out.open("wb") as sink:
            started = time.perf_counter()
            producer = subprocess.Popen(
                [GNU_TIME, "-f", "%M", "-o", str(rss1), *first],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
            assert producer.stdout is not None
            consumer = subprocess.run(
                [GNU_TIME, "-f", "%M", "-o", str(rss2), *second],
                stdin=producer.stdout,
                stdout=sink,
                check=False,
            )
            producer.stdout.close()
            status = producer.wait()
            seconds = time.perf_counter() - started
        if status != 0 or consumer.returncode != 0:
            raise RuntimeError(f"{first} | {second} failed ({status}, {consumer.returncode})")
        return Timed(seconds, _rss(rss1) + _rss(rss2), "")


def timed_sync() -> float:
    """Seconds ``sync`` takes: the dirty pages a method left for the kernel to write."""
    started = time.perf_counter()
    os.sync()
    return time.perf_counter() - started


def tool_version(argv: list[str]) -> str:
    """First line of a tool's version output, or why there is none."""
    if shutil.which(argv[0]) is None:
        return "not installed"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def _rss(path: Path) -> int:
    # GNU time writes "Command exited with non-zero status N" first when it fails.
    lines = path.read_text().strip().splitlines()
    return int(lines[-1]) if lines else 0
