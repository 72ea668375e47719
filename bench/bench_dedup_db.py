"""Thirty daily dumps of a database that changes 1 % a day: what the chunk store keeps.

Run from the project root::

    .venv/bin/python -m bench.bench_dedup_db [--size-gb 1] [--days 30]

It builds ``bench_real`` (bench/_dataset.py: orders, customers and an audit log with uuids,
jsonb and free text; ~2.2x compressible) on a throwaway cluster, takes one ``pg_dump -Fc``
(gzip, pg_dump's default: the seed's daily file) as the size of "one compressed full", then
for each day changes the database and dumps it with ``pg_dump -Fc -Z0`` (uncompressed, so
unchanged tables cut into the same chunks) into:

- safehold's chunk store (``bench/_dedup_child.py stream``: age-encrypted packs), and
- restic (``restic backup --stdin``), the anchor.

**A day's change (1 % of the rows):** new orders amounting to 0.5 % of the orders table and
audit-log rows amounting to 0.2 % of the audit log (appended, as an application writes them),
and 0.3 % of the orders updated (status and amount), chosen among the newest 10 % (the orders
still in progress). Updated rows move to the end of the table's heap, as PostgreSQL's MVCC
does, so the dump changes where they were and where they land.

It prints, per day and at the end, each repository's size against the one compressed full
(issue 16's target: safehold's 30 days ≤ 2x), the time of each daily backup, and checks on
the last day that the store's export is byte for byte the dump it was given and that
``pg_restore --list`` reads it. Results go to bench/results/dedup-db-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from safehold.sandbox import SandboxCluster
from safehold.sources.postgres import PgTarget, connect

from . import _timed
from ._dataset import build_real
from .bench_dedup import Restic, Safehold, log

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DB = "bench_real"
SIZE_LIMIT = 2.0  # issue 16: 30 daily backups occupy <= 2x one compressed full


def one_day(server: PgTarget, day: int) -> None:
    with connect(server.with_db(DB), autocommit=True) as conn:
        conn.execute("SELECT setseed(%s)", (day / 100,))
        (orders, top) = conn.execute("SELECT count(*), max(id) FROM orders").fetchone() or (0, 0)
        (audits,) = conn.execute("SELECT count(*) FROM audit_log").fetchone() or (0,)
        new = orders * 5 // 1000
        conn.execute(
            "INSERT INTO orders SELECT %(top)s + row_number() OVER (), customer_id, "
            "gen_random_uuid(), now(), 'new', quantity, amount_cents, md5(random()::text), "
            "attributes, note FROM orders WHERE id > %(top)s - %(new)s",
            {"top": top, "new": new},
        )
        conn.execute(
            "INSERT INTO audit_log SELECT now(), gen_random_uuid(), message FROM audit_log "
            "LIMIT %s",
            (audits * 2 // 1000,),
        )
        conn.execute(
            "UPDATE orders SET status = 'shipped', amount_cents = amount_cents + 1 WHERE id IN "
            "(SELECT id FROM orders WHERE id > %(recent)s ORDER BY random() LIMIT %(n)s)",
            {"recent": top - orders // 10, "n": orders * 3 // 1000},
        )
        conn.execute("VACUUM ANALYZE")


def dump_argv(server: PgTarget, level: str) -> list[str]:
    assert server.bin_dir is not None
    return [
        str(server.bin_dir / "pg_dump"),
        "-Fc",
        *([level] if level else []),
        "-h",
        server.host,
        "-p",
        str(server.port),
        "-U",
        server.user,
        DB,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dedup_db", description=__doc__)
    parser.add_argument("--size-gb", type=float, default=1.0, help="bench_real size (GB, 1e9)")
    parser.add_argument("--days", type=int, default=30, help="daily backups")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    cluster = SandboxCluster()
    work = Path(tempfile.mkdtemp(prefix="safehold-bench-dedup-db-"))
    started = datetime.now(UTC)
    try:
        server = dataclasses.replace(cluster.start(), bin_dir=cluster.bin_dir)
        env = {**os.environ, "PGPASSWORD": server.password or ""}
        log(f"building {DB} ({args.size_gb} GB) on port {cluster.port}")
        build_real(server, DB, int(args.size_gb * 1e9), log)
        full = work / "full.dump"
        subprocess.run([*dump_argv(server, ""), "-f", str(full)], env=env, check=True)
        full_size = full.stat().st_size
        log(f"one compressed full (pg_dump -Fc): {full_size / 1e6:.1f} MB")
        restic, safehold = Restic(work), Safehold(work)
        tools: list[Restic | Safehold] = [restic, safehold]
        for tool in tools:
            tool.init()
        days: list[dict[str, Any]] = []
        dump = work / "day.dump"
        for day in range(1, args.days + 1):
            if day > 1:
                one_day(server, day)
            subprocess.run([*dump_argv(server, "-Z0"), "-f", str(dump)], env=env, check=True)
            row: dict[str, Any] = {"day": day, "dump": dump.stat().st_size}
            for tool in tools if day % 2 else reversed(tools):
                os.sync()
                timed = _stream(tool, dump)
                row[tool.name] = {"seconds": timed.seconds, "rss_mb": timed.max_rss_kb / 1024}
                row[tool.name]["size"] = tool.size()
            days.append(row)
            log(
                f"day {day}: dump {row['dump'] / 1e6:.0f} MB; "
                + "; ".join(
                    f"{t.name} {row[t.name]['seconds']:.1f}s, repo "
                    f"{row[t.name]['size'] / full_size:.2f}x full"
                    for t in tools
                )
            )
        _check_export(safehold, dump, work, server)
        report = _report(args, full_size, days, started)
        print(_render(report))
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"dedup-db-{started:%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwritten to {out}")
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _stream(tool: Restic | Safehold, dump: Path) -> _timed.Timed:
    # restic 0.14 has no --stdin-from-command: both read the dump file on standard input.
    if isinstance(tool, Restic):
        argv = [*tool.args(), "backup", "-q", "--stdin", "--stdin-filename", "db.dump"]
        return _timed.run(["sh", "-c", 'exec "$@" < "$0"', str(dump), *argv], env=tool.env)
    return _timed.run(["sh", "-c", 'exec "$@" < "$0"', str(dump), *tool.child("stream", "db")])


def _check_export(store: Safehold, dump: Path, work: Path, server: PgTarget) -> None:
    out = work / "export.dump"
    subprocess.run([*store.child("export", "db"), str(out)], check=True, cwd=ROOT)
    if out.read_bytes() != dump.read_bytes():
        raise RuntimeError("the store's export differs from the last dump it was given")
    assert server.bin_dir is not None
    listed = subprocess.run(
        [str(server.bin_dir / "pg_restore"), "--list", str(out)], capture_output=True, check=True
    )
    log(
        "export of the last day: byte for byte the dump; pg_restore --list: "
        f"{len(listed.stdout.splitlines())} lines"
    )


def _report(
    args: argparse.Namespace, full: int, days: list[dict[str, Any]], started: datetime
) -> dict[str, Any]:
    last = days[-1]
    summary: dict[str, Any] = {"one_compressed_full": full}
    for name in ("safehold", "restic"):
        seconds = [d[name]["seconds"] for d in days[1:]] or [days[0][name]["seconds"]]
        summary[name] = {
            "size": last[name]["size"],
            "size_over_full": last[name]["size"] / full,
            "first_seconds": days[0][name]["seconds"],
            "daily_seconds_median": statistics.median(seconds),
            "peak_rss_mb": max(d[name]["rss_mb"] for d in days),
        }
    ratio = summary["safehold"]["size_over_full"]
    summary["target"] = {"limit": SIZE_LIMIT, "value": ratio, "pass": ratio <= SIZE_LIMIT}
    return {
        "started": started.isoformat(),
        "args": vars(args),
        "days": days,
        "summary": summary,
        "seconds": time.time() - started.timestamp(),
    }


def _render(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"{report['args']['days']} daily dumps of {DB}; one compressed full (pg_dump -Fc) = "
        f"{s['one_compressed_full'] / 1e6:.1f} MB",
        "  tool       repo MB   x full   first s   daily s (median)   peak MB",
    ]
    for name in ("safehold", "restic"):
        t = s[name]
        lines.append(
            f"  {name:<9} {t['size'] / 1e6:8.1f} {t['size_over_full']:8.2f} "
            f"{t['first_seconds']:9.1f} {t['daily_seconds_median']:18.1f} {t['peak_rss_mb']:9.0f}"
        )
    target = s["target"]
    verdict = "PASS" if target["pass"] else "FAIL"
    lines.append(
        f"  target: safehold repo <= {target['limit']}x one full: {target['value']:.2f}  {verdict}"
    )
    return "\n".join(lines)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
