"""The chunk store against restic: first and second backup, full and one-file restore.

Run from the project root::

    .venv/bin/python -m bench.bench_dedup [--size-mb 2048] [--repeat 3] [--change 0.01]

The tree is bench/_tree_data.py's mixed tree (cached in .bench/, git-ignored), copied into a
scratch folder per repetition. Each repetition, with the order of the two tools rotated:

1. **first backup** into a new repository (created off the clock): restic's default settings
   (compression auto, encrypted), safehold's chunk store (age-encrypted packs);
2. ``--change`` of the files are changed (a 4 KiB stretch overwritten at a random place in half
   of them, 1 KiB appended to the others; same change for both tools, off the clock);
3. **second backup** of the changed tree; "added" is what the repository grew by;
4. **full restore** of the newest snapshot into an empty folder, beside ``tar xzf`` of the
   seed's archive of the same tree (``tar czf``, made off the clock); every restore is
   compared with the tree (``diff -r --no-dereference``), off the clock;
5. **one-file restore** of one small file deep in the tree.

safehold runs each step as a process of its own (``bench/_dedup_child.py``; Python start-up
included) so GNU time gives its peak RSS; the backup opens the store with the id key and the
public recipient only, the restore with the age identity only. Medians of ``--repeat`` runs
and the ratios against issue 16's targets are printed and written to
bench/results/dedup-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import _timed
from ._timed import Timed
from ._tree_data import MB
from .bench_tree import cached_tree, du, environment, restic_env

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / ".bench" / "dedup"
PYTHON = sys.executable
PEAK_RSS_LIMIT_MB = 200


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    seconds: float
    rss_mb: float
    size: int | None = None  # bytes the repository holds (backups) / grew by (second backup)


def sample(timed: Timed, size: int | None = None) -> Sample:
    return Sample(timed.seconds, timed.max_rss_kb / 1024, size)


# ---- the tools --------------------------------------------------------------------------------


class Restic:
    name = "restic"

    def __init__(self, work: Path) -> None:
        self.repo, self.cache = work / "restic-repo", work / "restic-cache"
        self.env = restic_env()

    def args(self) -> list[str]:
        return ["restic", "-r", str(self.repo), "--cache-dir", str(self.cache)]

    def init(self) -> None:
        subprocess.run([*self.args(), "init", "-q"], env=self.env, check=True, capture_output=True)

    def backup(self, source: Path) -> Timed:
        return _timed.run([*self.args(), "backup", "-q", "."], env=self.env, cwd=source)

    def restore(self, dest: Path, include: str | None = None) -> Timed:
        argv = [*self.args(), "restore", "-q", "latest", "--target", str(dest)]
        return _timed.run([*argv, "--include", f"/{include}"] if include else argv, env=self.env)

    def size(self) -> int:
        return du(self.repo)


class Safehold:
    name = "safehold"

    def __init__(self, work: Path) -> None:
        self.repo, self.keys = work / "safehold-repo", work / "safehold-keys"

    def child(self, *argv: str) -> list[str]:
        return [
            PYTHON,
            "-m",
            "bench._dedup_child",
            argv[0],
            str(self.repo),
            str(self.keys),
            *argv[1:],
        ]

    def init(self) -> None:
        subprocess.run(self.child("init"), check=True, cwd=ROOT)

    def backup(self, source: Path) -> Timed:
        return _timed.run(self.child("backup", str(source), "tree"), cwd=ROOT)

    def restore(self, dest: Path, include: str | None = None) -> Timed:
        extra = [include] if include else []
        return _timed.run(self.child("restore", "tree", str(dest), *extra), cwd=ROOT)

    def size(self) -> int:
        return du(self.repo)


class SafeholdPlain(Safehold):
    """The same chunk store with packs left unencrypted (``_dedup_child``'s measurement switch):
    the "plain" figures beside the age-encrypted ones, showing what encryption costs."""

    name = "plain"

    def __init__(self, work: Path) -> None:
        self.repo, self.keys = work / "plain-repo", work / "plain-keys"
        self.env = {**os.environ, "SAFEHOLD_BENCH_PLAIN": "1"}

    def init(self) -> None:
        subprocess.run(self.child("init"), check=True, cwd=ROOT, env=self.env)

    def backup(self, source: Path) -> Timed:
        return _timed.run(self.child("backup", str(source), "tree"), cwd=ROOT, env=self.env)

    def restore(self, dest: Path, include: str | None = None) -> Timed:
        extra = [include] if include else []
        argv = self.child("restore", "tree", str(dest), *extra)
        return _timed.run(argv, cwd=ROOT, env=self.env)


# ---- one repetition ---------------------------------------------------------------------------


def change_files(root: Path, fraction: float, seed: int) -> int:
    """Change ``fraction`` of the regular files (sorted, then a seeded sample): half get a 4 KiB
    stretch overwritten at a random place, the others 1 KiB appended. Returns how many."""
    rng = random.Random(seed)
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_nlink == 1
    )
    chosen = rng.sample(files, max(1, round(len(files) * fraction)))
    for number, path in enumerate(chosen):
        size = path.stat().st_size
        with path.open("r+b") as f:
            if number % 2 == 0 and size > 4096:
                f.seek(rng.randrange(0, size - 4096))
                f.write(rng.randbytes(4096))
            else:
                f.seek(0, os.SEEK_END)
                f.write(rng.randbytes(1024))
    return len(chosen)


def one_small_file(root: Path) -> str:
    """The deepest small file (by name order among the deepest): what a user asks back."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    small = [p for p in files if p.stat().st_size < 64 * 1024] or files
    deepest = max(len(p.relative_to(root).parts) for p in small)
    return str(min(p for p in small if len(p.relative_to(root).parts) == deepest).relative_to(root))


def same_tree(expected: Path, got: Path, what: str) -> None:
    done = subprocess.run(
        ["diff", "-r", "--no-dereference", str(expected), str(got)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what}: the restored tree differs:\n{done.stdout[-2000:]}")


def repetition(tree: Path, number: int, change: float, runs: dict[str, list[Sample]]) -> None:
    work = WORK / f"rep{number}"
    shutil.rmtree(work, ignore_errors=True)
    source = work / "source"
    work.mkdir(parents=True)
    subprocess.run(["cp", "-a", f"{tree}/.", str(source)], check=True)
    tools: list[Restic | Safehold] = [Restic(work), Safehold(work), SafeholdPlain(work)]
    tools = tools[number % 3 :] + tools[: number % 3]  # each tool first once in three
    log(f"repetition {number}: order {', '.join(t.name for t in tools)}")

    def timed(key: str, result: Timed, size: int | None = None) -> None:
        runs.setdefault(key, []).append(sample(result, size))
        log(f"  {key}: {result.seconds:.2f}s, peak {result.max_rss_kb / 1024:.0f} MB")

    first: dict[str, int] = {}
    for tool in tools:
        tool.init()
        os.sync()
        result = tool.backup(source)
        first[tool.name] = tool.size()
        timed(f"{tool.name}_first", result, first[tool.name])
    changed = change_files(source, change, seed=number)
    log(f"  changed {changed} files")
    for tool in tools:
        os.sync()
        result = tool.backup(source)
        timed(f"{tool.name}_second", result, tool.size() - first[tool.name])
    archive = work / "seed.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(source), "."], check=True)
    order: list[Restic | Safehold | None] = [*tools]
    order.insert(number % 4, None)  # None: tar xzf of the seed's archive
    for restorer in order:
        key = "tar_xzf" if restorer is None else f"{restorer.name}_restore"
        dest = work / key
        os.sync()
        if restorer is None:
            dest.mkdir()
            result = _timed.run(["tar", "xzf", str(archive), "-C", str(dest)])
        else:
            result = restorer.restore(dest)
        timed(key, result)
        same_tree(source, dest, key)
    wanted = one_small_file(source)
    for tool in tools:
        dest = work / f"{tool.name}_one"
        key = f"{tool.name}_one_file"
        os.sync()
        timed(key, tool.restore(dest, wanted))
        if (dest / wanted).read_bytes() != (source / wanted).read_bytes():
            raise RuntimeError(f"{key}: {wanted} came back different")
    shutil.rmtree(work)


# ---- report -----------------------------------------------------------------------------------

TARGETS = [
    ("first backup: safehold / restic (time)", "safehold_first", "restic_first", "seconds", 1.0),
    ("second backup: safehold / restic (time)", "safehold_second", "restic_second", "seconds", 1.0),
    (
        "second backup: safehold / restic (bytes added)",
        "safehold_second",
        "restic_second",
        "size",
        1.2,
    ),
    (
        "full restore: safehold / restic restore",
        "safehold_restore",
        "restic_restore",
        "seconds",
        1.0,
    ),
    ("full restore: safehold / tar xzf", "safehold_restore", "tar_xzf", "seconds", 1.0),
]


def median(samples: list[Sample], field: str) -> float | None:
    values = [getattr(s, field) for s in samples if getattr(s, field) is not None]
    return statistics.median(values) if values else None


def summarize(runs: dict[str, list[Sample]]) -> dict[str, Any]:
    medians = {
        key: {f: median(samples, f) for f in ("seconds", "rss_mb", "size")}
        for key, samples in runs.items()
    }
    targets = []
    for name, num, den, field, limit in TARGETS:
        a, b = medians.get(num, {}).get(field), medians.get(den, {}).get(field)
        value = a / b if a is not None and b else None
        targets.append(
            {
                "name": name,
                "value": value,
                "limit": limit,
                "pass": None if value is None else value <= limit,
            }
        )
    one = medians.get("safehold_one_file", {}).get("seconds")
    targets.append(
        {
            "name": "one-file restore (s)",
            "value": one,
            "limit": 1.0,
            "pass": None if one is None else one < 1.0,
        }
    )
    peak = max(
        (s.rss_mb for key, ss in runs.items() if key.startswith("safehold") for s in ss),
        default=None,
    )
    targets.append(
        {
            "name": "safehold peak RSS (MB)",
            "value": peak,
            "limit": PEAK_RSS_LIMIT_MB,
            "pass": None if peak is None else peak <= PEAK_RSS_LIMIT_MB,
        }
    )
    for what, key in (("first backup", "first"), ("second backup", "second")):
        targets.append(_ratio(medians, f"{what}: age / plain (time)", key, "seconds"))
    targets.append(_ratio(medians, "full restore: age / plain (time)", "restore", "seconds"))
    targets.append(_ratio(medians, "second backup: age / plain (bytes added)", "second", "size"))
    return {"medians": medians, "targets": targets}


def _ratio(medians: dict[str, dict[str, Any]], name: str, step: str, field: str) -> dict[str, Any]:
    """What encryption costs: no target, reported beside the ones issue 16 sets."""
    a = medians.get(f"safehold_{step}", {}).get(field)
    b = medians.get(f"plain_{step}", {}).get(field)
    return {
        "name": name,
        "value": a / b if a is not None and b else None,
        "limit": None,
        "pass": None,
    }


def render(summary: dict[str, Any], runs: dict[str, list[Sample]]) -> str:
    lines = ["", "  MEDIANS            seconds   peak MB   repo/added MB"]
    for key, m in summary["medians"].items():
        size = "" if m["size"] is None else f"{m['size'] / MB:.1f}"
        lines.append(f"  {key:<18} {m['seconds']:8.2f} {m['rss_mb']:9.0f} {size:>14}")
    lines.append("  TARGETS")
    for t in summary["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        limit = "" if t["limit"] is None else t["limit"]
        verdict = verdict if t["limit"] is not None else "(info)"
        lines.append(f"  {t['name']:<50} {value:>9} {limit:>7}  {verdict}")
    lines.append("  raw (seconds, peak MB, MB)")
    for key, samples in runs.items():
        for n, s in enumerate(samples, 1):
            size = "" if s.size is None else f"{s.size / MB:.1f}"
            lines.append(f"    {key:<18} #{n} {s.seconds:8.2f} {s.rss_mb:6.0f} {size:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dedup", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=2048, help="tree content size (MB, 1e6)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument("--change", type=float, default=0.01, help="share of files changed")
    args = parser.parse_args(argv)
    if shutil.which("restic") is None or not _timed.have_gnu_time():
        raise SystemExit("needs restic and GNU time (scripts/install-bench-deps.sh)")
    tree = cached_tree(args.size_mb)
    started = datetime.now(UTC)
    runs: dict[str, list[Sample]] = {}
    for number in range(args.repeat):
        repetition(tree, number, args.change, runs)
    summary = summarize(runs)
    print(f"chunk store vs restic on a {args.size_mb} MB tree, {args.repeat} repetition(s)")
    print(render(summary, runs))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"dedup-{started:%Y%m%dT%H%M%SZ}.json"
    report = {
        "started": started.isoformat(),
        "args": vars(args),
        "environment": environment(),
        "summary": summary,
        "runs": {k: [asdict(s) for s in v] for k, v in runs.items()},
        "seconds": time.time() - started.timestamp(),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
