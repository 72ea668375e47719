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
and is gone within ``--catch-up`` seconds after the load.

Side by side with pgBackRest (``--backlog-segments``, default 60; pgBackRest from
scripts/install-bench-deps.sh): on a second throwaway cluster, archiving paused
(``archive_command = ''``: the server keeps every segment marked ready), inserts of
half-compressible rows build a backlog of N ready segments; then the real archive_command is set
and the server reloaded, and the clock runs until none of those N is ``.ready`` any more. One row
per archive_command: safehold's from ``pitr setup``; ``pgbackrest archive-push %p`` (one process
per segment); the same with ``archive-async=y``, a spool path and ``process-max=2`` (what
pgBackRest advises for busy servers). Both tools zstd level 3, each into its own repository,
fsync on. Order rotated per repetition, medians of ``--repeat``; off the clock, every segment of
every run is read back from each archive (``wal.fetch``, ``pgbackrest archive-get``) and compared
by sha256 with the server's file. Results go to bench/results/archiving-*.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import shutil
import signal
import statistics
import sys
import sysconfig
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql

from safehold.operations.pitr import archive as wal
from safehold.operations.pitr import setup as pitr_setup
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import UNPRIVILEGED_USER
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from ._pgbackrest import PgBackRest, own_folder, run, shared_folder

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
    parser.add_argument("--backlog-segments", type=int, default=60, help="0: skip that part")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true", help="only the backlog part")
    args = parser.parse_args()
    # so the finally blocks stop the clusters (a background job ignores SIGINT)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    load_start = os.getloadavg()
    result: dict[str, object] = {}
    if args.backlog_segments:
        if shutil.which("pgbackrest") is None:
            parser.error("pgbackrest is not installed: run scripts/install-bench-deps.sh")
        result["backlog"] = backlog_part(args.backlog_segments, args.repeat)
    if not args.skip_load:
        result["under_load"] = under_load(args)
    result |= {"cores": os.cpu_count(), "load_start": list(load_start)}
    result["load"] = list(os.getloadavg())
    print(f"load average (1/5/15 min): at start {load_start}, at end {os.getloadavg()}")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"archiving-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results in {out}")


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def under_load(args: argparse.Namespace) -> dict[str, object]:
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
    return result | {"clients": args.clients, "row_bytes": args.row_bytes}


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


# ---- the backlog, side by side with pgBackRest ----

SAFEHOLD = "safehold (pitr setup's archive_command)"
PGBR_SYNC = "pgbackrest archive-push %p (sync)"
PGBR_ASYNC = "pgbackrest archive-push %p, archive-async=y, process-max=2"
# Rows of ~1 kB of md5 hex: zstd halves them, about as real WAL compresses (repeat('x') would
# compress to nothing and flatter every tool).
FILL = (
    "INSERT INTO fill (pad) SELECT (SELECT string_agg(md5(random()::text || g || i), '') "
    "FROM generate_series(1, 30) i) FROM generate_series(1, 8000) g"
)


def set_archive_command(conn: psycopg.Connection[Any], command: str) -> None:
    conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
    conn.execute("SELECT pg_reload_conf()")


def ready(data: Path) -> set[str]:
    status = data / "pg_wal" / "archive_status"
    return {n[: -len(".ready")] for n in os.listdir(status) if n.endswith(".ready")}


def build_backlog(conn: psycopg.Connection[Any], data: Path, count: int) -> list[str]:
    """Write WAL until ``count`` segments wait, archiving paused; their names."""
    conn.execute("TRUNCATE fill")
    while len(ready(data)) < count:
        conn.execute(FILL)
    conn.execute("SELECT pg_switch_wal()")
    time.sleep(0.5)  # the .ready of the switched segment
    conn.execute("CHECKPOINT")  # not during the timed drain
    return sorted(ready(data))


def drain(conn: psycopg.Connection[Any], data: Path, names: list[str], command: str) -> float:
    """Seconds from the reload that sets ``command`` until no segment of ``names`` waits."""
    waiting = set(names)
    began = time.perf_counter()
    set_archive_command(conn, command)
    while waiting & ready(data):
        if time.perf_counter() - began > 900:
            raise RuntimeError(f"archiving with {command!r} did not drain in 900 s")
        time.sleep(0.02)
    return time.perf_counter() - began


def backlog_part(count: int, repeat: int) -> dict[str, Any]:
    work = shared_folder("safehold-bench-backlog-")
    cluster = SandboxCluster(fsync=True)
    runs: dict[str, list[float]] = {}
    checked: dict[str, int] = {}
    try:
        target = cluster.start()
        stores = {
            PGBR_SYNC: PgBackRest(cluster, work / "pgbackrest-sync"),
            PGBR_ASYNC: PgBackRest(cluster, work / "pgbackrest-async", asynchronous=True),
        }
        repo = own_folder(work / "safehold-repo")
        commands = {
            SAFEHOLD: pitr_setup.server_settings(server_command(), repo)["archive_command"],
            **{method: store.archive_command() for method, store in stores.items()},
        }
        settings = pitr_setup.server_settings(server_command(), repo) | {"archive_command": ""}
        pitr_setup.apply_settings(target, settings | {"archive_timeout": "0"})
        server_log = str(cluster.root / "server.log")
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", server_log, "-m", "fast", "restart")
        for store in stores.values():
            store("stanza-create")
        for method, command in commands.items():
            log(f"{method}: archive_command = {command}")
        gets = own_folder(work / "got")
        with connect(target, "postgres", autocommit=True) as conn:
            conn.execute("CREATE TABLE fill (id bigserial, pad text)")
            conn.execute("ALTER TABLE fill ALTER pad SET STORAGE EXTERNAL")
            for number in range(repeat):
                for method in rotated(list(commands), number):
                    set_archive_command(conn, "")
                    names = build_backlog(conn, cluster.data, count)
                    took = drain(conn, cluster.data, names, commands[method])
                    runs.setdefault(method, []).append(len(names) / took)
                    log(
                        f"{method}: {len(names)} segments in {took:.2f} s = "
                        f"{len(names) / took:.2f} seg/s (load {os.getloadavg()[0]:.2f})"
                    )
                    # off the clock: the server's files are still in pg_wal until a checkpoint
                    sums = {n: sha256(cluster.data / "pg_wal" / n) for n in names}
                    for name, digest in sums.items():
                        got = gets / name
                        if method == SAFEHOLD:
                            wal.fetch(LocalStorage(repo), name, got, durable=False)
                        else:
                            stores[method].get(name, got)
                        if sha256(got) != digest:
                            raise RuntimeError(f"{method}: {name} differs from the server's")
                        got.unlink()
                    checked[method] = checked.get(method, 0) + len(sums)
            failed = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    return report(runs, checked, count, repeat, int(failed[0]) if failed else -1)


def report(
    runs: dict[str, list[float]], checked: dict[str, int], count: int, repeat: int, failed: int
) -> dict[str, Any]:
    medians = {method: statistics.median(rates) for method, rates in runs.items()}
    print(f"\nbacklog of {count} ready segments, drained after one reload; medians of {repeat}")
    print(f"{'archive_command':<62} {'seg/s':>7} {'runs':>24} {'checked':>8}")
    for method, rates in runs.items():
        shown = " ".join(f"{r:.2f}" for r in rates)
        print(f"{method:<62} {medians[method]:>7.2f} {shown:>24} {checked[method]:>8}")
    print(f"archiver failures: {failed}")
    ratios = {}
    for baseline in (PGBR_ASYNC, PGBR_SYNC):
        ratio = medians[SAFEHOLD] / medians[baseline]
        verdict = "PASS" if ratio >= 1.0 else "FAIL"
        name = "async" if baseline == PGBR_ASYNC else "sync"
        ratios[name] = ratio
        print(f"target: safehold seg/s / pgBackRest {name} seg/s >= 1.0: {ratio:.2f} {verdict}")
    return {
        "segments": count,
        "repeat": repeat,
        "seg_per_s": runs,
        "median_seg_per_s": medians,
        "ratios": ratios,
        "checked": checked,
        "archiver_failures": failed,
        "pgbackrest": run(["pgbackrest", "version"]).strip(),
    }


def rotated(items: list[str], number: int) -> list[str]:
    shift = number % len(items)
    return items[shift:] + items[:shift]


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


if __name__ == "__main__":
    main()
