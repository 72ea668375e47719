"""Folder (volume) backup: safehold's tar + gzip/zstd against `tar czf` and `tar | pigz`.

Run from the project root::

    .venv/bin/python -m bench.bench_tree [--size-mb 300] [--repeat 3] [--levels 1,2,3]

It builds a mixed tree once (cached in .bench/tree-<size>mb, git-ignored): media-like random
files, text and logs, many small JSON files, database-like pages, gzip'd files, symlinks,
hardlinks and empty folders. Each repetition runs every method once (order rotated), writing
to a file on the same disk; the page cache is warm for all of them (a volume being backed up
usually is not, but the tree is read the same way by every method, so the comparison holds).
It prints medians, sizes, ratios and PASS/FAIL against the targets, and writes the numbers to
bench/results/tree-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safehold.compress import ZstdWriter
from safehold.compress.gzip import DEFAULT_GZIP_LEVEL, GzipWriter, open_decompressor
from safehold.operations._pipeline import HashingWriter
from safehold.sources.tree import write_tree

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CORES = len(os.sched_getaffinity(0))
MB = 1_000_000


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    run: Callable[[Path, Path], None]  # (tree, output file)
    diagnostic: bool = False


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the tree ---------------------------------------------------------------------------


def build_tree(root: Path, size_mb: int, seed: int = 7) -> None:
    """About ``size_mb`` MB of content that compresses like a real app's data volume."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
        for _ in range(5000)
    ]
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf-like word frequencies
    corpus = " ".join(rng.choices(words, weights, k=1_500_000)).encode()
    budget = size_mb * MB
    shares = {"media": 0.27, "text": 0.28, "json": 0.12, "db": 0.25, "gz": 0.08}
    for kind, share in shares.items():
        made, index = 0, 0
        while made < budget * share:
            folder = root / kind / f"user{index % 40:02d}" / f"part{index % 7}"
            folder.mkdir(parents=True, exist_ok=True)
            data = _content(kind, rng, corpus, index)
            (folder / f"{kind}-{index:05d}.{_SUFFIX[kind]}").write_bytes(data)
            made += len(data)
            index += 1
    for index in range(60):
        (root / "empty" / f"e{index:02d}").mkdir(parents=True)
    media = sorted((root / "media").rglob("*.bin"))
    for index, path in enumerate(media[:150]):
        os.symlink(os.path.relpath(path, root / "text"), root / "text" / f"link{index:03d}")
    for index, path in enumerate(sorted((root / "json").rglob("*.json"))[:100]):
        os.link(path, root / "json" / f"hard{index:03d}.json")


_SUFFIX = {"media": "bin", "text": "log", "json": "json", "db": "db", "gz": "gz"}


def _content(kind: str, rng: random.Random, corpus: bytes, index: int) -> bytes:
    if kind == "media":
        return rng.randbytes(int(rng.lognormvariate(13.5, 1.0)) % (8 * MB) + 50_000)
    if kind == "text":
        return _text(rng, corpus, int(rng.lognormvariate(11, 1.5)) % (4 * MB) + 2_000)
    if kind == "json":
        fields = ", ".join(
            f'"{rng.choice(["id", "name", "email", "note", "tags", "score"])}{n}": '
            f'"{rng.getrandbits(64):x} {_text(rng, corpus, rng.randint(20, 400)).decode()}"'
            for n in range(rng.randint(3, 30))
        )
        return f'{{"index": {index}, {fields}}}\n'.encode()
    if kind == "db":
        pages = []
        for _ in range(rng.randint(16, 1024)):
            rows = b"".join(
                struct.pack("<QIId", rng.getrandbits(40), rng.randint(0, 999), 17, rng.random())
                + _text(rng, corpus, rng.randint(8, 120))
                for _ in range(rng.randint(5, 30))
            )
            pages.append(rows[:4096].ljust(4096, b"\0"))
        return b"".join(pages)
    return gzip.compress(_text(rng, corpus, rng.randint(50_000, 2 * MB)), 6, mtime=0)


def _text(rng: random.Random, corpus: bytes, size: int) -> bytes:
    out, got = [], 0
    while got < size:
        start = rng.randrange(len(corpus) - 70_000)
        piece = corpus[start : start + rng.randint(200, 60_000)]
        line = f"\n{1_700_000_000 + rng.getrandbits(24)} req={rng.getrandbits(32):08x} ".encode()
        out += [line, piece]
        got += len(piece) + len(line)
    return b"".join(out)[:size]


def tree_size(root: Path) -> tuple[int, int]:
    files = {
        p.lstat().st_ino: p.lstat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    return sum(files.values()), len(files)


# ---- the methods --------------------------------------------------------------------------


def _pipe(producer: list[str], consumer: list[str], out: Path) -> None:
    with out.open("wb") as sink:
        first = subprocess.Popen(producer, stdout=subprocess.PIPE)
        assert first.stdout is not None
        second = subprocess.run(consumer, stdin=first.stdout, stdout=sink, check=False)
        first.stdout.close()
        if first.wait() != 0 or second.returncode != 0:
            raise RuntimeError(f"{producer} | {consumer} failed")


def tar_czf(tree: Path, out: Path) -> None:
    subprocess.run(["tar", "czf", str(out), "-C", str(tree), "."], check=True)


def tar_pigz(tree: Path, out: Path) -> None:
    _pipe(["tar", "cf", "-", "-C", str(tree), "."], ["pigz", "-p", str(CORES)], out)


def tar_cf(tree: Path, out: Path) -> None:
    subprocess.run(["tar", "cf", str(out), "-C", str(tree), "."], check=True)


def safehold(make: Callable[[HashingWriter], Any]) -> Callable[[Path, Path], None]:
    """tree -> tar -> compressor -> sha256 -> file, as a volume backup would run."""

    def run(tree: Path, out: Path) -> None:
        with out.open("wb", buffering=0) as raw:
            hashing = HashingWriter(raw)
            compressor = make(hashing)
            write_tree(tree, compressor)
            compressor.finish()
            hashing.hexdigest()

    return run


class StdlibGzip:
    """The same stream through the standard library's zlib, one thread (the plain choice)."""

    def __init__(self, sink: HashingWriter, level: int) -> None:
        self._sink = sink
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, 31)

    def write(self, data: bytes | memoryview) -> int:
        self._sink.write(self._zlib.compress(data))
        return len(data)

    def finish(self) -> None:
        self._sink.write(self._zlib.flush())


class Plain:
    def __init__(self, sink: HashingWriter) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview) -> int:
        return self._sink.write(data)

    def finish(self) -> None:
        return None


def methods(levels: list[int]) -> list[Method]:
    found = [
        Method("tar_czf", "tar czf (GNU tar + gzip -6, baseline)", tar_czf),
        Method("tar_pigz", f"tar cf - | pigz -p {CORES}", tar_pigz),
    ]
    for level in levels:
        mark = " (default)" if level == DEFAULT_GZIP_LEVEL else ""
        found.append(
            Method(
                f"sh_gzip{level}",
                f"safehold tar + isal gzip L{level}, {CORES} threads{mark}",
                safehold(functools.partial(GzipWriter, level=level)),
                diagnostic=level != DEFAULT_GZIP_LEVEL,
            )
        )
    found += [
        Method("sh_zstd", "safehold tar + zstd -3", safehold(lambda sink: ZstdWriter(sink, 3))),
        Method(
            "sh_gzip_1t",
            f"safehold tar + isal gzip L{DEFAULT_GZIP_LEVEL}, 1 thread",
            safehold(lambda sink: GzipWriter(sink, DEFAULT_GZIP_LEVEL, threads=1)),
            True,
        ),
        Method(
            "sh_zlib6", "safehold tar + stdlib zlib -6", safehold(lambda s: StdlibGzip(s, 6)), True
        ),
        Method(
            "sh_zlib1", "safehold tar + stdlib zlib -1", safehold(lambda s: StdlibGzip(s, 1)), True
        ),
        Method("sh_tar", "safehold tar only (no compression)", safehold(Plain), True),
        Method("tar_cf", "tar cf (no compression)", tar_cf, True),
    ]
    return found


def check_archive(path: Path, key: str, entries: int) -> None:
    """Every output must list with GNU tar and hold the same number of entries."""
    if key in ("sh_tar", "tar_cf"):
        flag = "-tf"
    elif key == "sh_zstd":
        flag = "--zstd -tf" if shutil.which("zstd") else ""
    else:
        flag = "-tzf"
    if not flag:
        with path.open("rb") as raw:
            reader = open_decompressor("zstd", raw)
            while reader.read(1 << 20):
                pass
        return
    listing = subprocess.run(["tar", *flag.split(), str(path)], capture_output=True, check=True)
    count = len(listing.stdout.splitlines())
    if count != entries:
        raise RuntimeError(f"{key}: tar lists {count} entries, expected {entries}")


# ---- timing and report ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_tree", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=300, help="tree content size (MB, 1e6)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument("--levels", default="1,2,3", help="isal gzip levels to time (0-3)")
    parser.add_argument("--only", default="", help="comma list of method keys to run")
    args = parser.parse_args(argv)
    levels = sorted({int(x) for x in args.levels.split(",")} | {DEFAULT_GZIP_LEVEL})
    chosen = [m for m in methods(levels) if not args.only or m.key in args.only.split(",")]

    work = ROOT / ".bench" / f"tree-{args.size_mb}mb"
    tree = work / "tree"
    if not (work / "complete").exists():
        shutil.rmtree(work, ignore_errors=True)
        log(f"building a {args.size_mb} MB tree in {tree}")
        build_tree(tree, args.size_mb)
        (work / "complete").write_text("ok\n")
    content, files = tree_size(tree)
    entries = sum(1 for _ in tree.rglob("*")) + 1
    log(f"tree: {content / MB:.0f} MB in {files} files, {entries} entries; cores {CORES}")
    load_start = os.getloadavg()
    out = work / "out"
    samples: dict[str, list[tuple[float, int]]] = {m.key: [] for m in chosen}
    for rep in range(args.repeat):
        shift = rep % len(chosen)
        for method in chosen[shift:] + chosen[:shift]:
            subprocess.run(["sync"], check=True)
            started = time.perf_counter()
            method.run(tree, out)
            seconds = time.perf_counter() - started
            size = out.stat().st_size
            if rep == 0:
                check_archive(out, method.key, entries)
            out.unlink()
            samples[method.key].append((seconds, size))
            log(f"rep {rep + 1} {method.key:11s} {seconds:7.2f} s {size / MB:8.1f} MB")
    report = render(chosen, samples, content)
    print(report)
    print(
        f"load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end, {CORES} cores"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"tree-{stamp}.json").write_text(
        json.dumps(
            {
                "size_mb": args.size_mb,
                "content_bytes": content,
                "files": files,
                "cores": CORES,
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg(),
                "python": sys.version.split()[0],
                "samples": {
                    k: [{"seconds": round(s, 3), "size": z} for s, z in v]
                    for k, v in samples.items()
                },
            },
            indent=2,
        )
    )
    return 0


def render(chosen: list[Method], samples: dict[str, list[tuple[float, int]]], content: int) -> str:
    med = {
        k: (statistics.median(s for s, _ in v), statistics.median(z for _, z in v))
        for k, v in samples.items()
        if v
    }
    base = med.get("tar_czf")
    head = ("median s", "min", "max", "MB/s", "size MB", "x faster", "size/base")
    lines = [f"{'method':52s} " + " ".join(f"{h:>{max(6, len(h))}s}" for h in head)]
    for m in chosen:
        seconds, size = med[m.key]
        times = [s for s, _ in samples[m.key]]
        faster = f"{base[0] / seconds:8.2f}" if base else "       -"
        ratio = f"{size / base[1]:9.3f}" if base else "        -"
        label = ("[diag] " if m.diagnostic else "") + m.label
        lines.append(
            f"{label:52s} {seconds:8.2f} {min(times):6.2f} {max(times):6.2f} "
            f"{content / MB / seconds:6.0f} {size / MB:7.1f} {faster} {ratio}"
        )
    key = f"sh_gzip{DEFAULT_GZIP_LEVEL}"
    if base and key in med:
        lines.append("")
        targets = [
            ("tar czf time / safehold gzip time >= 3", base[0] / med[key][0], 3.0, False),
            ("safehold gzip size / tar czf size <= 1.10", med[key][1] / base[1], 1.10, True),
        ]
        if "tar_pigz" in med:
            targets.append(
                (
                    "safehold gzip time / pigz time <= 1.0",
                    med[key][0] / med["tar_pigz"][0],
                    1.0,
                    True,
                )
            )
        for name, value, limit, at_most in targets:
            ok = value <= limit if at_most else value >= limit
            lines.append(f"{name:52s} {value:6.2f}  {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
