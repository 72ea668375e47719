"""Database backup and restore: safehold against pg_dump / pg_restore, side by side.

Run from the project root::

    .venv/bin/python -m bench.bench_database [--size-gb 1.0] [--repeat 3] [--pgbench-scale 50]
    .venv/bin/python -m bench.bench_database --quick      # ~1 minute smoke test

It starts its own throwaway PostgreSQL cluster (removed at the end), builds two databases,
times every method ``--repeat`` times (order rotated per repetition), prints medians, ratios
and PASS/FAIL against the targets, and writes everything to bench/results/database-*.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import zstandard

from safehold import __version__
from safehold.sandbox import SandboxCluster
from safehold.sources import pg_custom_toc
from safehold.sources.postgres import PgTarget, connect, count_rows

from . import _dataset, _report
from ._methods import (
    Bench,
    Sample,
    clock,
    count_all_rows,
    databases_like,
    drop_databases,
    pg_dump,
    pg_dump_zstd_pipe,
    pg_restore,
    safehold_backup,
    safehold_cli_backup,
    safehold_restore,
    safehold_swap_restore,
)
from ._report import BACKUPS, RESTORES, Method, Target, render, summarize

RESULTS = Path(__file__).resolve().parent / "results"
RESTORED = "bench_restored_"  # every database a restore creates starts with this

# Issue 13 (restores as fast as pg_restore of pg_dump's own file): its diagnostic row and its
# targets, added to the shared tables here until bench/_report.py takes them.
FIX_ROW = Method("fix_offsets", "fill in the data offsets of a piped -Z0 dump", True)
RESTORE_TARGETS = [
    Target("safehold restore time / pg_restore -j time", "sh_restore", "pg_restore", 1.05, True),
    Target("safehold zstd restore / pg_restore -j", "sh_restore_zstd", "pg_restore", 1.05, True),
    Target("safehold swap restore time / pg_restore -j", "sh_swap", "pg_restore", 1.05, True),
]


def _register_issue13_rows() -> None:
    if FIX_ROW not in RESTORES:
        RESTORES.append(FIX_ROW)
    replaced = {target.numerator for target in RESTORE_TARGETS}
    kept = [target for target in _report.TARGETS if target.numerator not in replaced]
    _report.TARGETS[:] = kept + RESTORE_TARGETS


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_database", description=__doc__)
    parser.add_argument("--size-gb", type=float, default=1.0, help="bench_real size (GB, 1e9)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument("--pgbench-scale", type=int, default=50, help="pgbench -i -s SCALE")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="pg_restore -j")
    parser.add_argument("--fsync", action="store_true", help="run the server with fsync=on")
    parser.add_argument("--databases", default="real,pgbench", help="comma list of: real, pgbench")
    parser.add_argument("--quick", action="store_true", help="50 MB, scale 2, repeat 1")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_gb, args.pgbench_scale, args.repeat = 0.05, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _register_issue13_rows()
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so the finally below stops the server
    cluster = SandboxCluster(fsync=args.fsync)
    work = Path(tempfile.mkdtemp(prefix="safehold-bench-"))
    started = datetime.now(UTC)
    try:
        server = dataclasses.replace(cluster.start(), bin_dir=cluster.bin_dir)
        quiet_autovacuum(server)
        bench = Bench(server, cluster.bin_dir, work, args.jobs)
        env = environment(bench, args)
        log(f"cluster on port {cluster.port}, fsync={'on' if args.fsync else 'off'}, {env}")
        report: dict[str, Any] = {"started_utc": started.isoformat(), "environment": env}
        report["databases"] = {}
        texts = []
        for kind in [k.strip() for k in args.databases.split(",") if k.strip()]:
            name = build(bench, kind, args)
            facts = database_facts(bench, name)
            log(f"{name}: {facts['size'] / 1e9:.3f} GB, {facts['rows']} rows; measuring")
            runs = measure(bench, name, args.repeat)
            summary = summarize(runs)
            title = (
                f"=== {name}: pg_database_size {facts['size'] / 1e9:.3f} GB, {facts['rows']:,} "
                f"rows, {facts['tables']} tables | repeat {args.repeat}, medians of wall time | "
                f"server fsync={'on' if args.fsync else 'off'}, jobs={args.jobs}"
            )
            texts.append(render(title, runs, summary, args.jobs))
            print("\n" + texts[-1] + "\n", flush=True)
            report["databases"][name] = {
                "facts": facts,
                "summary": summary,
                "raw": {k: [s.to_json() for s in v] for k, v in runs.items()},
            }
            drop_databases(bench, [name])
        report["finished_utc"] = datetime.now(UTC).isoformat()
        report["environment"]["loadavg_end"] = os.getloadavg()
        path = write_json(report, started)
        print("\n\n".join(texts), flush=True)
        log(f"results written to {path}")
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def quiet_autovacuum(server: PgTarget) -> None:
    """Autovacuum would visit each restored copy (they stay until the end of a repetition) at
    a random moment inside a later timed operation; the databases measured are built frozen
    and analyzed, so it has nothing to do for them."""
    with connect(server, "postgres", autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET autovacuum = off")
        conn.execute("SELECT pg_reload_conf()")


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def environment(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    version = subprocess.run(
        [bench.tool("pg_dump"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    zstd_cli = subprocess.run(["zstd", "-V"], capture_output=True, text=True, check=False)
    return {
        "safehold": __version__,
        "pg_dump": version,
        "zstandard": zstandard.__version__,
        "zstd_cli": zstd_cli.stdout.strip(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "fsync": args.fsync,
        "jobs": args.jobs,
        "repeat": args.repeat,
        "size_gb": args.size_gb,
        "pgbench_scale": args.pgbench_scale,
        "timed_via": "public Python API (in-process) except the CLI row; baselines as processes",
        "pg_restore_clock": "includes createdb (safehold creates its staging db on the clock)",
        "autovacuum": "off (restored copies would be vacuumed inside later timings)",
    }


def build(bench: Bench, kind: str, args: argparse.Namespace) -> str:
    clock = time.monotonic()
    if kind == "real":
        name = "bench_real"
        log(f"building {name} (~{args.size_gb} GB)")
        _dataset.build_real(bench.server, name, int(args.size_gb * 1e9), log)
    elif kind == "pgbench":
        name = "bench_pgbench"
        log(f"building {name} (pgbench -i -s {args.pgbench_scale})")
        _dataset.build_pgbench(bench.server, bench.bin_dir, name, args.pgbench_scale)
    else:
        raise SystemExit(f"unknown database kind {kind!r}")
    log(f"built {name} in {time.monotonic() - clock:.0f}s")
    return name


def database_facts(bench: Bench, name: str) -> dict[str, Any]:
    with connect(bench.db(name), autocommit=True) as conn:
        counts = count_rows(conn)
    return {
        "size": _dataset.database_size(bench.server, name),
        "rows": sum(counts.values()),
        "tables": len(counts),
        "rows_per_table": counts,
    }


def measure(bench: Bench, db: str, repeat: int) -> dict[str, list[Sample]]:
    runs: dict[str, list[Sample]] = {m.key: [] for m in BACKUPS + RESTORES}
    expected_rows = database_facts(bench, db)["rows"]
    for rep in range(repeat):
        folder = bench.work / f"{db}-{rep}"
        folder.mkdir()
        try:
            one_repetition(bench, db, rep, folder, runs)
            _check_restored(bench, db, expected_rows)
        finally:
            drop_databases(bench, databases_like(bench, RESTORED))
            shutil.rmtree(folder, ignore_errors=True)
    return runs


def one_repetition(
    bench: Bench, db: str, rep: int, folder: Path, runs: dict[str, list[Sample]]
) -> None:
    where = f"{db} #{rep + 1}"
    dumpfile = folder / "pg_dump.dump"
    gzip_repo, zstd_repo = folder / "repo-gzip", folder / "repo-zstd"
    backups: dict[str, Callable[[], Sample]] = {
        "pg_dump": lambda: pg_dump(bench, db, dumpfile),
        "sh_gzip": lambda: safehold_backup(bench, db, gzip_repo, "gzip"),
        "sh_gzip_cli": lambda: safehold_cli_backup(bench, db, folder / "repo-cli"),
        "sh_zstd": lambda: safehold_backup(bench, db, zstd_repo, "zstd"),
        "pg_dump_z0": lambda: pg_dump(bench, db, folder / "z0.dump", level=0),
        "zstd_pipe": lambda: pg_dump_zstd_pipe(bench, db, folder / "pipe.dump.zst"),
        "count_rows": lambda: count_all_rows(bench, db),
    }
    _run_rotated(backups, rep, runs, where)
    gzip_artifact = str(runs["sh_gzip"][-1].detail["artifact"])
    zstd_artifact = str(runs["sh_zstd"][-1].detail["artifact"])
    name = f"{RESTORED}{db}_"
    restores: dict[str, Callable[[], Sample]] = {
        "pg_restore": lambda: pg_restore(bench, dumpfile, name + "pgr"),
        "sh_restore": lambda: safehold_restore(bench, gzip_repo, gzip_artifact, name + "sh"),
        "sh_restore_zstd": lambda: safehold_restore(bench, zstd_repo, zstd_artifact, name + "shz"),
        "pg_restore_sh": lambda: pg_restore(bench, gzip_repo / gzip_artifact, name + "pgrsh"),
    }
    _run_rotated(restores, rep, runs, where)
    # The swap path: restore over the database safehold just created, which is now "live".
    swap = {"sh_swap": lambda: safehold_swap_restore(bench, gzip_repo, gzip_artifact, name + "sh")}
    _run_rotated(swap, 0, runs, where)
    fix = {"fix_offsets": lambda: offset_fixup(folder / "pipe.dump.zst", folder / "pipe.dump")}
    _run_rotated(fix, 0, runs, where)


def offset_fixup(compressed: Path, plain: Path) -> Sample:
    """What a restore of a zstd artifact does once it has decompressed it: fill in the data
    offsets pg_dump left unset (it wrote to a pipe). Decompressed off the clock."""
    with compressed.open("rb") as source, plain.open("wb") as out:
        zstandard.ZstdDecompressor().copy_stream(source, out)
    try:
        with clock() as took:
            fixed = pg_custom_toc.fix(plain)
        return Sample(took[0], plain.stat().st_size, dataclasses.asdict(fixed))
    finally:
        plain.unlink()


def _run_rotated(
    steps: dict[str, Callable[[], Sample]],
    rep: int,
    runs: dict[str, list[Sample]],
    where: str,
) -> None:
    """Run every step once, starting at a different one each repetition (order bias)."""
    keys = list(steps)
    shift = rep % len(keys)
    for key in keys[shift:] + keys[:shift]:
        sample = steps[key]()
        runs[key].append(sample)
        size = "" if sample.size is None else f", {sample.size / 1e6:.1f} MB"
        log(f"  {where} {key:<16} {sample.seconds:8.2f}s{size}")


def _check_restored(bench: Bench, db: str, expected_rows: int) -> None:
    """Every restored copy must hold all rows (off the clock)."""
    for name in databases_like(bench, f"{RESTORED}{db}_"):
        with connect(bench.db(name), autocommit=True) as conn:
            got = sum(count_rows(conn).values())
        if got != expected_rows:
            raise RuntimeError(f"{name} has {got} rows, the source has {expected_rows}")


def write_json(report: dict[str, Any], started: datetime) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"database-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
