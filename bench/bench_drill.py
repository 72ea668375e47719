"""Restore drills on the bench database: the measured recovery time an operator would get.

Run from the project root::

    .venv/bin/python -m bench.bench_drill [--size-gb 1.0] [--repeat 3]

Starts a throwaway PostgreSQL cluster, builds the realistic bench database (bench/_dataset.py),
backs it up with safehold (gzip, the default, and zstd), then runs ``--repeat`` drills of each
backup (restore into a scratch database, rows checked against the manifest, dropped) and prints
the median recovery time against the 30-minute database RTO. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from safehold.operations.checks.drill import drill
from safehold.operations.database.backup import BackupOptions, backup_database
from safehold.sandbox import SandboxCluster
from safehold.storage import LocalStorage

from . import _dataset

RESULTS = Path(__file__).resolve().parent / "results"
RTO_DATABASE_S = 30 * 60


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="safehold-bench-drill-"))
    cluster = SandboxCluster(fsync=True)
    results: dict[str, object] = {"size_gb": args.size_gb, "repeat": args.repeat}
    try:
        server = cluster.start()
        log(f"building the bench database (~{args.size_gb} GB)")
        _dataset.build_real(server, "bench", int(args.size_gb * 1e9), log)
        size = _dataset.database_size(server, "bench")
        results["database_bytes"] = size
        target = replace(server, dbname="bench")
        for compression in ("gzip", "zstd"):
            storage = LocalStorage(work / compression)
            manifest = backup_database(target, storage, BackupOptions(compression=compression))
            log(
                f"{compression}: backup {manifest.artifact} {manifest.size} bytes "
                f"in {manifest.duration_s:.1f}s"
            )
            times = []
            for number in range(args.repeat):
                record = drill(storage, manifest.artifact, server=server, live_database="bench")
                times.append(record.recovery_s)
                log(
                    f"{compression}: drill {number + 1}: {record.recovery_s:.1f}s, "
                    f"{record.members[0]['rows']} rows in {record.members[0]['tables']} tables"
                )
            median = statistics.median(times)
            results[compression] = {
                "backup_bytes": manifest.size,
                "backup_s": manifest.duration_s,
                "drill_s": times,
                "median_s": median,
                "rto_s": RTO_DATABASE_S,
                "within_rto": median <= RTO_DATABASE_S,
            }
            log(
                f"{compression}: median measured recovery time {median:.1f}s "
                f"({median / RTO_DATABASE_S:.1%} of the 30 min RTO)"
            )
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"drill-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results in {out}")


if __name__ == "__main__":
    main()
