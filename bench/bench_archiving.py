"""Does WAL archiving keep up with a busy server? ``safehold wal-push`` as the archive_command
of a cluster under a write load from several clients.

Run from the project root::

    .venv/bin/python -m bench.bench_archiving [--seconds 60] [--clients 2] [--row-bytes 2000]

A throwaway cluster (fsync on, the server as ``nobody`` when root) archives with
``archive_command = '<safehold> wal-push --backup-dir REPO %p'`` (archive_timeout 60 s). The
clients insert rows as fast as the machine allows (autocommit batches of 100 rows); every
second the bench samples the WAL position and the archiver's backlog: segments waiting in
``pg_wal/archive_status/*.ready``. When the load stops it measures how long the archiver takes to
empty the backlog. The verdict: the backlog stays bounded (it does not grow through the run)
and is gone within ``--catch-up`` seconds after the load. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import sys
import sysconfig
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from safehold.operations import pitr_setup
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import UNPRIVILEGED_USER
from safehold.sources.postgres import PgTarget, connect

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SEGMENT = 16 * 1024 * 1024


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def server_command() -> str:
    """The server (nobody, when root) runs the system Python with src + the venv on its path."""
    python = shutil.which("python3.11", path="/usr/bin") if os.geteuid() == 0 else None
    paths = f"{ROOT / 'src'}:{sysconfig.get_paths()['purelib']}"
    return f"env PYTHONPATH={paths} {python or sys.executable} -m safehold"


def lsn(target: PgTarget) -> int:
    with connect(target, "postgres", autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def archiver(target: PgTarget) -> tuple[int, int]:
    with connect(target, "postgres", autocommit=True) as conn:
        row = conn.execute("SELECT archived_count, failed_count FROM pg_stat_archiver").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def backlog(data: Path) -> int:
    return sum(1 for n in os.listdir(data / "pg_wal" / "archive_status") if n.endswith(".ready"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--row-bytes", type=int, default=2000)
    parser.add_argument("--catch-up", type=float, default=30.0, help="seconds allowed after")
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp(prefix="safehold-bench-archiving-"))
    os.chmod(repo, 0o700)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(repo, entry.pw_uid, entry.pw_gid)
    cluster = SandboxCluster(fsync=True)
    try:
        target = cluster.start()
        settings = pitr_setup.server_settings(server_command(), repo)
        pitr_setup.apply_settings(target, settings)
        server_log = str(cluster.root / "server.log")
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", server_log, "-m", "fast", "restart")
        with connect(target, "postgres", autocommit=True) as conn:
            conn.execute("CREATE TABLE load (id bigserial, pad text)")
            # no compression: each row's bytes reach the WAL (repeat('x') would compress away)
            conn.execute("ALTER TABLE load ALTER pad SET STORAGE EXTERNAL")
        log(f"archive_command = {settings['archive_command']}")
        result = run_load(target, cluster.data, args)
    finally:
        cluster.remove()
        shutil.rmtree(repo, ignore_errors=True)
    result |= {"clients": args.clients, "row_bytes": args.row_bytes, "cores": os.cpu_count()}
    result["load"] = list(os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"archiving-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results in {out}")


def run_load(target: PgTarget, data: Path, args: argparse.Namespace) -> dict[str, object]:
    stop = threading.Event()
    rows = [0] * args.clients

    def client(number: int) -> None:
        statement = (
            f"INSERT INTO load (pad) SELECT repeat('x', {args.row_bytes}) "
            "FROM generate_series(1, 100)"
        )
        with connect(target, "postgres", autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(statement)
                rows[number] += 100

    start_lsn, (start_archived, _) = lsn(target), archiver(target)
    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, int, int]] = []
    while time.monotonic() - began < args.seconds:
        time.sleep(1.0)
        samples.append((time.monotonic() - began, lsn(target) - start_lsn, backlog(data)))
    stop.set()
    for thread in threads:
        thread.join()
    load_s = time.monotonic() - began
    end_lsn = lsn(target)
    with connect(target, "postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
    after = time.monotonic()
    while backlog(data) and time.monotonic() - after < 600:
        time.sleep(0.2)
    catch_up = time.monotonic() - after
    archived, failed = archiver(target)
    produced = (end_lsn - start_lsn) / SEGMENT
    backlogs = [b for _, _, b in samples]
    half = len(backlogs) // 2
    growing = statistics.mean(backlogs[half:]) > statistics.mean(backlogs[:half]) + 2
    print()
    print(f"write load: {args.clients} clients, {load_s:.1f} s, {sum(rows):,} rows")
    print(f"WAL produced: {produced:.1f} segments = {produced / load_s:.2f} segments/s")
    print(f"archived during the run and catch-up: {archived - start_archived} ({failed} failed)")
    print(f"archiver throughput needed: {produced / load_s:.2f} seg/s")
    print(f"backlog (.ready files) per second: {backlogs}")
    print(f"backlog max {max(backlogs)}, last {backlogs[-1]}; growing: {growing}")
    print(f"catch-up after the load: {catch_up:.1f} s")
    keeps_up = not growing and catch_up <= args.catch_up and failed == 0
    print(f"verdict: archiving keeps up with this load: {'PASS' if keeps_up else 'FAIL'}")
    return {
        "seconds": load_s,
        "rows": sum(rows),
        "segments_produced": produced,
        "segments_per_s": produced / load_s,
        "archived": archived - start_archived,
        "failed": failed,
        "backlog_samples": samples,
        "backlog_max": max(backlogs),
        "backlog_growing": growing,
        "catch_up_s": catch_up,
        "pass": keeps_up,
    }


if __name__ == "__main__":
    main()
