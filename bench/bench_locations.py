"""Encryption and copy locations: what they cost.

Run from the project root::

    .venv/bin/python -m bench.bench_locations [--db-gb 0.5] [--tree-mb 500] [--repeat 3]

One run measures, on a throwaway PostgreSQL cluster (the realistic bench database) and a
generated volume-like tree (bench/_tree_data.py):

- database backup plain vs encrypted (age, one X25519 recipient), gzip and zstd;
- folder backup plain vs encrypted (gzip);
- copying the folder backup to a local S3 server (SeaweedFS ``weed mini`` on loopback, streamed
  multipart) vs to another folder on local disk, both through ``copy_backups`` (sha256 checked).

Medians of ``--repeat`` runs, order alternated per repetition; the issue's target is
encryption under 10% extra wall time. Results go to bench/results/locations-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from safehold.crypto import EncryptionKey, generate_keypair
from safehold.operations.copy import Location, copy_backups
from safehold.operations.database.backup import BackupOptions, backup_database
from safehold.operations.volumes.folder import backup_tree
from safehold.sandbox import SandboxCluster
from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage

from . import _dataset, _tree_data

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent.parent / ".bench"
TARGET_OVERHEAD = 1.10
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(run: Callable[[], T]) -> tuple[float, T]:
    began = time.perf_counter()
    result = run()
    os.sync()  # every method fsyncs its own output; count the page cache flush for all alike
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-gb", type=float, default=0.5)
    parser.add_argument("--tree-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="safehold-bench-loc-"))
    tree = CACHE / f"tree-v2-{args.tree_mb}mb"
    if not tree.exists():
        log(f"generating the {args.tree_mb} MB tree")
        _tree_data.build_tree(tree, args.tree_mb * _tree_data.MB)
    public = generate_keypair(work / "identity.txt")
    key = EncryptionKey(recipients=(public,))
    cluster = SandboxCluster(fsync=True)
    s3 = SandboxS3()
    runs: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    try:
        server = cluster.start()
        log(f"building the bench database (~{args.db_gb} GB)")
        _dataset.build_real(server, "bench", int(args.db_gb * 1e9), log)
        target = replace(server, dbname="bench")
        s3.start()
        bucket = s3.bucket()
        methods: dict[str, Callable[[LocalStorage], int]] = {}

        def database_method(opts: BackupOptions) -> Callable[[LocalStorage], int]:
            return lambda repo: backup_database(target, repo, opts).size

        def tree_method(encrypt: EncryptionKey | None) -> Callable[[LocalStorage], int]:
            return lambda repo: backup_tree(tree, "benchtree", repo, encryption=encrypt).size

        for compression in ("gzip", "zstd"):
            for encrypted in (False, True):
                opts = BackupOptions(compression, encryption=key if encrypted else None)
                methods[f"db {compression}{' +age' if encrypted else ''}"] = database_method(opts)
        for encrypted in (False, True):
            methods[f"tree gzip{' +age' if encrypted else ''}"] = tree_method(
                key if encrypted else None
            )
        for number in range(args.repeat):
            order = list(methods) if number % 2 == 0 else list(reversed(methods))
            for name in order:
                repo = LocalStorage(work / f"repo-{number}-{name.replace(' ', '_')}")
                took, size = timed(partial(methods[name], repo))
                runs.setdefault(name, []).append(took)
                sizes[name] = size
                log(f"{name}: {took:.2f}s, {size} bytes")
            source = LocalStorage(work / f"repo-{number}-tree_gzip")
            artifact = next(k for k in source.list() if k.endswith(".tar.gz"))
            s3_repo = Location("s3", s3.storage(bucket, f"run-{number}"))
            disk = Location("disk", LocalStorage(work / f"copy-{number}"))
            for place in (disk, s3_repo) if number % 2 == 0 else (s3_repo, disk):
                took, _ = timed(partial(copy_backups, source, place, [artifact]))
                runs.setdefault(f"copy to {place.name}", []).append(took)
                log(f"copy to {place.name}: {took:.2f}s ({source.size(artifact)} bytes)")
            sizes["copy"] = source.size(artifact)
    finally:
        s3.remove()
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(times) for name, times in runs.items()}
    verdicts = {}
    for plain in ("db gzip", "db zstd", "tree gzip"):
        ratio = medians[f"{plain} +age"] / medians[plain]
        verdicts[f"{plain}: encrypted / plain time"] = (ratio, ratio <= TARGET_OVERHEAD)
    copy_ratio = medians["copy to s3"] / medians["copy to disk"]
    print(f"\n{'method':<28}{'median s':>10}{'min':>8}{'max':>8}{'MB':>10}{'MB/s':>9}")
    for name, times in runs.items():
        megabytes = sizes.get(name, sizes["copy"]) / 1e6
        print(
            f"{name:<28}{medians[name]:>10.2f}{min(times):>8.2f}{max(times):>8.2f}"
            f"{megabytes:>10.1f}{megabytes / medians[name]:>9.1f}"
        )
    print()
    for label, (ratio, ok) in verdicts.items():
        print(f"{label:<40}{ratio:>8.3f}   <= {TARGET_OVERHEAD}  {'PASS' if ok else 'FAIL'}")
    print(f"{'copy to S3 / copy to local disk (time)':<40}{copy_ratio:>8.3f}   (information)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"locations-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "runs": runs,
                "medians": medians,
                "sizes": sizes,
                "verdicts": {k: {"ratio": r, "pass": ok} for k, (r, ok) in verdicts.items()},
                "copy_s3_over_disk": copy_ratio,
                "cores": os.cpu_count(),
                "load": os.getloadavg(),
            },
            indent=2,
        )
        + "\n"
    )
    log(f"results in {out}")


if __name__ == "__main__":
    main()
