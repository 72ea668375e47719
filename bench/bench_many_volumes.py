"""Many small volumes: what each volume costs ``safehold backup`` beyond its bytes.

Run from the project root (as root: it starts a private Docker engine)::

    .venv/bin/python -m bench.bench_many_volumes [--volumes 100] [--size-kb 1000] [--repeat 3]

It starts a private engine (``safehold.sandbox.SandboxDockerd``), creates ``--volumes`` volumes
``bench-000``... of ~1 MB each (small JSON/config/log files, database-like pages, one small
binary; bench/_tree_data.py, seeded per volume) and one more, ``solo-all``, holding the same
content (all of it, in one volume), plus a volume ``other-data`` that the pattern must skip.
Each repetition, with a fresh ``--backup-dir`` each time, times through the CLI (a new process,
``DOCKER_HOST`` pointing at the private engine):

- ``safehold backup -q --all --no-database --volume 'bench-*'``; when this safehold has no
  ``--all`` (or it fails), ``safehold backup -q --no-database --volume bench-000 --volume ...``
  with every name, and the output says so;
- ``safehold backup -q --no-database --volume solo-all``: the same bytes in one volume.

The fixed cost of a volume is (many - solo) / (N - 1): both runs move the same bytes and start
Python once, so the difference is N - 1 volumes' worth of per-volume work (Docker look-ups,
lock, manifest, fsyncs, the catalog scan for the ``latest`` links...). Results go to
bench/results/many-volumes-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
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

from safehold import naming
from safehold.sandbox.dockerd import SandboxDockerd

from . import _timed
from ._tree_data import build_tree, tree_stats

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAFEHOLD_CLI = Path(sys.executable).parent / "safehold"
CORES = len(os.sched_getaffinity(0))
PATTERN = "bench-*"
SOLO = "solo-all"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cli_env(docker_host: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "PG", "SAFEHOLD_", "DOCKER_"))
        and k not in ("BACKUP_DIR", "LOG_FILE")
    }
    env["DOCKER_HOST"] = docker_host
    return env


def has_all_flag(env: dict[str, str]) -> bool:
    done = subprocess.run(
        [str(SAFEHOLD_CLI), "backup", "--help"], env=env, capture_output=True, text=True, check=True
    )
    return "--all" in done.stdout


def artifacts(repo: Path) -> list[str]:
    if not repo.is_dir():
        return []
    return sorted(p.name for p in repo.iterdir() if not p.is_symlink() and naming.parse(p.name))


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_many_volumes", description=__doc__)
    parser.add_argument("--volumes", type=int, default=100, help="number of small volumes")
    parser.add_argument("--size-kb", type=int, default=1000, help="content of each (kB, 1e3)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument("--compress", choices=("gzip", "zstd"), default="gzip")
    args = parser.parse_args(argv)
    if not _timed.have_gnu_time():
        parser.error("needs GNU time at /usr/bin/time (apt-get install time)")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    names = [f"bench-{index:03d}" for index in range(args.volumes)]
    scratch = Path(tempfile.mkdtemp(prefix="bench-many-"))
    try:
        with SandboxDockerd() as engine, contextlib.closing(engine.client()) as client:
            env = cli_env(engine.base_url)
            log(f"private Docker engine at {engine.base_url}; creating {len(names)} volumes")
            solo = client.volumes.create(name=SOLO)
            solo_root = Path(str(solo.attrs["Mountpoint"]))
            for index, name in enumerate(names):
                root = Path(str(client.volumes.create(name=name).attrs["Mountpoint"]))
                build_tree(root, args.size_kb * 1000, seed=1000 + index)
                subprocess.run(["cp", "-a", f"{root}/.", str(solo_root / name)], check=True)
            other = Path(str(client.volumes.create(name="other-data").attrs["Mountpoint"]))
            (other / "not-selected.txt").write_text("the pattern must skip this volume\n")
            one = tree_stats(Path(str(client.volumes.get(names[0]).attrs["Mountpoint"])))
            whole = tree_stats(solo_root)
            log(
                f"each volume ~{one.bytes / 1e6:.2f} MB in {one.files} files (the first); all "
                f"together {whole.bytes / 1e6:.1f} MB in {whole.files} files"
            )
            with_all = has_all_flag(env)
            base = [str(SAFEHOLD_CLI), "backup", "-q", "--no-database", "--compress", args.compress]
            many_argv = [*base, "--all", "--volume", PATTERN]
            listed_argv = [*base, *[arg for name in names for arg in ("--volume", name)]]
            notes: list[str] = []
            if not with_all:
                notes.append(
                    "this safehold has no 'backup --all' yet: timed 'safehold backup "
                    f"--no-database --volume {names[0]} ... --volume {names[-1]}' "
                    f"({len(names)} --volume options) instead"
                )
                many_argv = listed_argv
            idle = _timed.run([str(SAFEHOLD_CLI), "backup", "--help"], env=env)
            runs: dict[str, list[dict[str, Any]]] = {"many": [], "solo": []}
            if with_all:
                runs["listed"] = []  # the same volumes named one by one, no --all
            for rep in range(args.repeat):
                order = list(runs)
                shift = rep % len(order)
                for key in order[shift:] + order[:shift]:
                    repo = scratch / f"repo-{key}-{rep}"
                    argv = {"many": many_argv, "listed": listed_argv}.get(
                        key, [*base, "--volume", SOLO]
                    )
                    os.sync()
                    try:
                        timed = _timed.run([*argv, "--backup-dir", str(repo)], env=env, cwd=scratch)
                    except RuntimeError as exc:
                        if key != "many" or many_argv is listed_argv:
                            raise
                        notes.append(
                            f"'backup --all --volume {PATTERN}' failed, so the listed form was "
                            f"timed instead: {str(exc)[-400:]}"
                        )
                        log("  " + notes[-1])
                        many_argv = listed_argv
                        shutil.rmtree(repo, ignore_errors=True)
                        timed = _timed.run(
                            [*many_argv, "--backup-dir", str(repo)], env=env, cwd=scratch
                        )
                    sync_s = _timed.timed_sync()
                    made = artifacts(repo)
                    expected = 1 if key == "solo" else len(names)
                    if len(made) != expected:
                        raise RuntimeError(f"{key}: {len(made)} backups, expected {expected}")
                    size = sum((repo / name).stat().st_size for name in made)
                    runs[key].append(
                        {
                            "seconds": round(timed.seconds, 3),
                            "sync_s": round(sync_s, 3),
                            "max_rss_kb": timed.max_rss_kb,
                            "backups": len(made),
                            "size": size,
                        }
                    )
                    log(
                        f"rep {rep + 1} {key:5s} {timed.seconds:7.2f} s (+sync {sync_s:.2f}) "
                        f"{len(made)} backups, {size / 1e6:.1f} MB, "
                        f"RSS {timed.max_rss_kb / 1024:.1f} MB"
                    )
                    shutil.rmtree(repo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    many = statistics.median(r["seconds"] for r in runs["many"])
    solo_s = statistics.median(r["seconds"] for r in runs["solo"])
    per_volume = (many - solo_s) / (len(names) - 1) if len(names) > 1 else float("nan")
    form = "--all --volume 'bench-*'" if many_argv is not listed_argv else "listed --volume"
    many_runs = [r["seconds"] for r in runs["many"]]
    extra: list[tuple[str, str]] = []
    if runs.get("listed"):
        listed = statistics.median(r["seconds"] for r in runs["listed"])
        extra.append(
            (
                f"[info] safehold backup --volume bench-000 ... (all {len(names)} named)",
                f"{listed:8.2f} s  (fixed cost per volume "
                f"{(listed - solo_s) / max(1, len(names) - 1) * 1000:.1f} ms)",
            )
        )
    rows = [
        (
            f"safehold backup {form}",
            f"{many:8.2f} s  (min {min(many_runs):.2f}, max {max(many_runs):.2f}; peak RSS "
            f"{max(r['max_rss_kb'] for r in runs['many']) / 1024:.1f} MB)",
        ),
        (f"safehold backup --volume {SOLO} (same bytes, 1 volume)", f"{solo_s:8.2f} s"),
        *extra,
        ("safehold backup --help (Python start-up, imports)", f"{idle.seconds:8.2f} s"),
        (f"per volume, all in: many / {len(names)}", f"{many / len(names) * 1000:8.1f} ms"),
        (
            f"fixed cost per volume: (many - solo) / {len(names) - 1}",
            f"{per_volume * 1000:8.1f} ms",
        ),
    ]
    lines = [
        f"{len(names)} volumes of ~{one.bytes / 1e6:.2f} MB ({args.compress}); {CORES} cores; "
        f"medians of {args.repeat}",
        *[f"  NOTE: {note}" for note in notes],
        *[f"  {label:<64} {value}" for label, value in rows],
    ]
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"many-volumes-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "volumes": len(names),
                "size_kb": args.size_kb,
                "volume_tree": one.to_json(),
                "all_volumes_tree": whole.to_json(),
                "compress": args.compress,
                "cores": CORES,
                "has_all_flag": with_all,
                "many_argv": " ".join(many_argv[1:][:12]) + (" ..." if len(many_argv) > 13 else ""),
                "notes": notes,
                "idle_cli": {"seconds": idle.seconds, "max_rss_kb": idle.max_rss_kb},
                "runs": runs,
                "median_many_s": many,
                "median_solo_s": solo_s,
                "per_volume_all_in_s": many / len(names),
                "fixed_cost_per_volume_s": per_volume,
                "loadavg_end": os.getloadavg(),
            },
            indent=2,
        )
    )
    print(f"  results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
