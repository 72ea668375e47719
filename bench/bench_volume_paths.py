"""A Docker volume read and restored two ways: at its host mountpoint, and through the engine's API.

Run from the project root, as root (it starts a private Docker engine)::

    .venv/bin/python -m bench.bench_volume_paths [--size-mb 300] [--repeat 3]

The mixed tree of bench/_tree_data.py (cached in .bench/tree-v<N>-<size>mb, shared with
bench_tree) is copied into the volume ``bench-source`` of a private engine
(``safehold.sandbox.SandboxDockerd``, vfs, on this host). Each repetition times, order rotated:

- read, direct: ``write_tree(mountpoint)`` into a sink that drops the bytes;
- read, API: ``read_volume_tar(client, "bench-source", sink)`` into the same sink (a helper
  container from the empty image, the engine's archive endpoint, headers re-encoded);
- [diag] the engine's archive endpoint drained without parsing: the floor of the API read;
- restore, direct: ``extract_tree(archive, mountpoint of bench-target)``;
- restore, API: ``replace_volume_content(client, "bench-target", archive)`` (checked and
  spooled to a temp file, then unpacked by the engine and swapped in by a busybox helper).

Restores read the uncompressed tar that ``write_tree`` made of the source (a file, page cache
warm) and always replace a target that already holds the whole tree, so both pay for moving
the old content aside and deleting it. ``sync`` runs before every timing, off the clock. The
phases of each restore are split at ``before_swap`` (direct: staged, then swapped; API:
checked and spooled) and, for the API, at the "unpacked" event (the engine's upload and
untar, then the helper's swap and removal of the old content). Before the timings the API
read is checked to give the very bytes ``write_tree`` gives; after every restore the target
is checked to hold exactly the archive. Medians, min, max and ratios are printed and saved in
bench/results/volume-paths-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import docker
from docker.types import Mount

from safehold import _proc
from safehold.model import Event
from safehold.operations.volumes.api import read_volume_tar, replace_volume_content
from safehold.operations.volumes.extract import extract_tree
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.docker.helper_image import ensure_busybox_image, ensure_empty_image
from safehold.sources.tar.tree import CHUNK, write_tree

from ._tree_data import GENERATOR_VERSION, MB, build_tree, tree_stats

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CORES = len(os.sched_getaffinity(0))
SOURCE, TARGET = "bench-source", "bench-target"


@dataclass
class Sample:
    seconds: float
    detail: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    run: Callable[[Bench], Sample]
    diagnostic: bool = False


@dataclass
class Bench:
    client: docker.DockerClient
    source: Path  # mountpoints
    target: Path
    archive: Path
    digest: str  # sha256 of the archive: what every read gives and every restore holds


class Null:
    def write(self, data: bytes | memoryview) -> int:
        return len(data)


class Digest:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        return len(data)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_direct(bench: Bench) -> Sample:
    started = time.perf_counter()
    write_tree(bench.source, Null())
    return Sample(time.perf_counter() - started)


def read_api(bench: Bench) -> Sample:
    started = time.perf_counter()
    read_volume_tar(bench.client, SOURCE, Null())
    return Sample(time.perf_counter() - started)


def engine_raw(bench: Bench) -> Sample:
    """The engine's archive endpoint alone: helper created, stream drained, helper removed."""
    started = time.perf_counter()
    mount = Mount("/v", SOURCE, type="volume", read_only=True, no_copy=True)
    image = ensure_empty_image(bench.client)
    helper = bench.client.containers.create(str(image.id), ["/never-run"], mounts=[mount])
    try:
        chunks, _ = bench.client.api.get_archive(str(helper.id), "/v/.", chunk_size=CHUNK)
        for _ in chunks:
            pass
    finally:
        helper.remove(force=True)
    return Sample(time.perf_counter() - started)


def restore_direct(bench: Bench) -> Sample:
    marks: list[float] = []
    started = time.perf_counter()
    with bench.archive.open("rb") as archive:
        extract_tree(archive, bench.target, before_swap=lambda _: marks.append(time.perf_counter()))
    return _phases(started, marks, "staged_s", "swapped_s")


def restore_api(bench: Bench) -> Sample:
    marks: list[float] = []

    def unpacked(event: Event) -> None:
        if event.message.startswith("unpacked the archive"):
            marks.append(time.perf_counter())

    started = time.perf_counter()
    with bench.archive.open("rb") as archive:
        replace_volume_content(
            bench.client,
            TARGET,
            archive,
            events=unpacked,
            before_swap=lambda _: marks.append(time.perf_counter()),
        )
    return _phases(started, marks, "spooled_s", "unpacked_s", "swapped_s")


def _phases(started: float, marks: list[float], *names: str) -> Sample:
    """Seconds between ``started``, each mark and the end, named in that order."""
    ended = time.perf_counter()
    edges = [started, *marks, ended]
    return Sample(
        ended - started,
        {name: round(b - a, 3) for name, a, b in zip(names, edges[:-1], edges[1:], strict=True)},
    )


METHODS = [
    Method("read_direct", "read, direct: write_tree(mountpoint)", read_direct),
    Method("read_api", "read, API: read_volume_tar (helper container)", read_api),
    Method("engine_raw", "engine archive endpoint drained, no parsing", engine_raw, True),
    Method("restore_direct", "restore, direct: extract_tree(mountpoint)", restore_direct),
    Method("restore_api", "restore, API: replace_volume_content", restore_api),
]
RATIOS = [("read_api", "read_direct"), ("restore_api", "restore_direct")]


def tree_digest(root: Path) -> str:
    digest = Digest()
    write_tree(root, digest)
    return digest.hash.hexdigest()


def cached_tree(size_mb: int) -> Path:
    work = ROOT / ".bench" / f"tree-v{GENERATOR_VERSION}-{size_mb}mb"
    tree = work / "tree"
    if not (work / "complete").exists():
        shutil.rmtree(work, ignore_errors=True)
        log(f"building a {size_mb} MB tree in {tree} (cached for the next runs)")
        build_tree(tree, size_mb * MB)
        (work / "complete").write_text("ok\n")
    return tree


def settle() -> None:
    _proc.run(["sync"], timeout=600)


def prepare(client: docker.DockerClient, tree: Path, scratch: Path) -> Bench:
    source = Path(str(client.volumes.create(name=SOURCE).attrs["Mountpoint"]))
    target = Path(str(client.volumes.create(name=TARGET).attrs["Mountpoint"]))
    copied = _proc.run(["cp", "-a", f"{tree}/.", f"{source}/"], timeout=1800)
    if copied.returncode != 0:
        raise RuntimeError(f"cp -a into the volume failed: {copied.stderr}")
    archive = scratch / "volume.tar"
    with archive.open("wb") as out:
        write_tree(source, out)
    digest = hashlib.file_digest(archive.open("rb"), "sha256").hexdigest()
    bench = Bench(client, source, target, archive, digest)
    started = time.perf_counter()
    ensure_empty_image(client)
    ensure_busybox_image(client)
    log(f"helper images imported in {time.perf_counter() - started:.2f}s (once per engine)")
    api = Digest()
    read_volume_tar(client, SOURCE, api)
    if api.hash.hexdigest() != digest:
        raise RuntimeError("read_volume_tar did not give the bytes write_tree gives")
    log("read_volume_tar gives the very bytes of write_tree(mountpoint)")
    restore_direct(bench)  # the target holds the tree: every timed restore replaces it
    return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_volume_paths")
    parser.add_argument("--size-mb", type=int, default=300, help="tree content size (MB, 1e6)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds: the engine and scratch folder are removed

    signal.signal(signal.SIGTERM, stop)
    tree = cached_tree(args.size_mb)
    stats = tree_stats(tree)
    log(f"tree: {stats.bytes / MB:.0f} MB in {stats.files} files, {stats.dirs} folders, "
        f"{stats.symlinks} symlinks, {stats.hardlinks} hardlinks; {CORES} cores")  # fmt: skip
    scratch = ROOT / ".bench" / "volume-paths-work"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    samples: dict[str, list[Sample]] = {m.key: [] for m in METHODS}
    load_start = os.getloadavg()
    try:
        with SandboxDockerd() as sandbox, contextlib.closing(sandbox.client()) as client:
            engine = str(client.version().get("Version"))
            bench = prepare(client, tree, scratch)
            for rep in range(args.repeat):
                shift = rep % len(METHODS)
                for method in METHODS[shift:] + METHODS[:shift]:
                    settle()
                    sample = method.run(bench)
                    samples[method.key].append(sample)
                    extra = " ".join(f"{k} {v:.2f}" for k, v in sample.detail.items())
                    log(f"rep {rep + 1} {method.key:15s} {sample.seconds:7.2f} s  {extra}")
                    if (
                        method.key.startswith("restore")
                        and tree_digest(bench.target) != bench.digest
                    ):
                        raise RuntimeError(f"{method.key}: the target does not hold the archive")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(render(samples, stats.bytes))
    print(f"engine {engine} (vfs, same host); load average {load_start[0]:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; {CORES} cores")  # fmt: skip
    save(args, samples, stats.to_json(), engine, load_start)
    return 0


def render(samples: dict[str, list[Sample]], content: int) -> str:
    med = {key: statistics.median(s.seconds for s in got) for key, got in samples.items()}
    lines = [f"{'method':54s} {'median s':>8s} {'min':>6s} {'max':>6s} {'MB/s':>6s}  phases"]
    for method in METHODS:
        times = [s.seconds for s in samples[method.key]]
        phases = {
            k: statistics.median(s.detail[k] for s in samples[method.key])
            for k in samples[method.key][0].detail
        }
        label = ("[diag] " if method.diagnostic else "") + method.label
        text = " ".join(f"{k} {v:.2f}" for k, v in phases.items())
        lines.append(
            f"{label:54s} {med[method.key]:8.2f} {min(times):6.2f} {max(times):6.2f} "
            f"{content / MB / med[method.key]:6.0f}  {text}"
        )
    lines.append("")
    for api, direct in RATIOS:
        lines.append(f"{f'{api} / {direct} (time)':54s} {med[api] / med[direct]:8.2f}x")
    return "\n".join(lines)


def save(
    args: argparse.Namespace,
    samples: dict[str, list[Sample]],
    stats: dict[str, int],
    engine: str,
    load_start: tuple[float, float, float],
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {
        "size_mb": args.size_mb,
        "generator_version": GENERATOR_VERSION,
        "tree": stats,
        "engine": engine,
        "storage_driver": "vfs",
        "cores": CORES,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "python": sys.version.split()[0],
        "samples": {
            key: [{"seconds": round(s.seconds, 3), **s.detail} for s in got]
            for key, got in samples.items()
        },
    }
    path = RESULTS / f"volume-paths-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
