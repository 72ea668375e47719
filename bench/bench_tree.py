"""Volume/folder backup and restore: safehold against tar, pigz and restic on the same tree.

Run from the project root::

    .venv/bin/python -m bench.bench_tree [--size-mb 2048] [--repeat 3] [--in-volume] [--diag]

It builds a mixed tree once (bench/_tree_data.py; cached in .bench/tree-v2-<size>mb,
git-ignored). With ``--in-volume`` it starts a private Docker engine
(``safehold.sandbox.SandboxDockerd``), copies the tree into a volume of it and backs up the
volume, the way ``safehold backup --volume`` runs for real; without it, the tree is a plain
folder backed up with ``safehold backup --path``.

Each repetition runs every backup method once, then every restore method once (order rotated
per repetition); each one's output is its own. Restored trees are removed when their
repetition ends, and a restore phase waits until ``--settle-s`` (65 s) have passed since then:
see ``SETTLE_S`` for why. safehold runs as a user runs it: the CLI in a
new process (Python start-up included) for backups, ``safehold restore --volume`` for
restores into a new volume, or for a plain folder ``restore_tree`` in a process of its own
(the CLI has no folder restore). Peak RSS of every command comes from GNU time. After each
timed operation ``sync`` is timed separately: safehold fsyncs its artifact, tar does not.
It prints medians, sizes, peak memory, ratios and PASS/FAIL against issue 3's targets, and
writes everything to bench/results/tree-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from safehold import naming
from safehold.compress import ZstdWriter
from safehold.compress.gzip import DEFAULT_GZIP_LEVEL, GzipWriter
from safehold.operations._pipeline import HashingWriter
from safehold.sources.tar.tree import write_tree

from . import _timed
from ._timed import Timed
from ._tree_data import GENERATOR_VERSION, MB, TreeStats, build_tree, tree_stats

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CORES = len(os.sched_getaffinity(0))
SAFEHOLD_CLI = Path(sys.executable).parent / "safehold"
VOLUME = "bench-tree"
RESTIC_PASSWORD = "bench-not-secret"  # noqa: S105 - a throwaway local repository
PEAK_RSS_LIMIT_MB = 150
# ext4 without a journal (this machine's disk) avoids reusing an inode freed less than 60 s ago
# (``recently_deleted``; 360 s while its inode-table block is dirty): each create then scans
# past every such inode of its block group, in kernel time. A restore timed right after the
# previous tree was removed paid for that removal (seconds, depending on what came before it,
# not on the tool). So restored trees stay until their repetition ends, and a restore phase
# starts only this long after the last removal, which is synced first.
SETTLE_S = 65.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Sample:
    seconds: float
    sync_s: float = 0.0
    size: int | None = None
    rss_kb: int | None = None  # peak RSS (GNU time); None for in-process diagnostics
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "sync_s": round(self.sync_s, 3),
            "size": self.size,
            "max_rss_kb": self.rss_kb,
            "detail": self.detail,
        }


@dataclass
class Rep:
    """One repetition: the source tree, a scratch folder, and what the backups produced."""

    source: Path
    work: Path
    stats: TreeStats
    engine: Engine | None
    artifacts: dict[str, Path] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)  # restored volumes, removed at the end


@dataclass(frozen=True)
class Engine:
    """The private Docker engine of ``--in-volume``."""

    docker_host: str
    mountpoint: Callable[[str], Path]
    remove_volume: Callable[[str], None]


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    phase: str  # "backup" or "restore"
    run: Callable[[Rep], Sample]
    diagnostic: bool = False
    needs: str = ""  # restore: the backup method whose output it restores
    safehold: bool = False  # counts toward the peak-memory target


# ---- backups --------------------------------------------------------------------------------


def _sample(timed: Timed, size: int | None = None, **detail: Any) -> Sample:
    return Sample(timed.seconds, size=size, rss_kb=timed.max_rss_kb, detail=detail)


def tar_czf(rep: Rep) -> Sample:
    out = rep.work / "tar_czf.tar.gz"
    timed = _timed.run(["tar", "czf", str(out), "-C", str(rep.source), "."])
    rep.artifacts["tar_czf"] = out
    return _sample(timed, out.stat().st_size)


def tar_pigz(rep: Rep) -> Sample:
    out = rep.work / "tar_pigz.tar.gz"
    timed = _timed.pipeline(
        ["tar", "cf", "-", "-C", str(rep.source), "."], ["pigz", "-p", str(CORES)], out
    )
    rep.artifacts["tar_pigz"] = out
    return _sample(timed, out.stat().st_size)


def cli_env(rep: Rep) -> dict[str, str]:
    """The environment a user's shell would have, minus anything that points safehold
    elsewhere (a config, a repository, another Docker engine)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "PG", "SAFEHOLD_", "DOCKER_"))
        and k not in ("BACKUP_DIR", "LOG_FILE")
    }
    if rep.engine is not None:
        env["DOCKER_HOST"] = rep.engine.docker_host
    return env


def safehold_backup(compression: str) -> Callable[[Rep], Sample]:
    def run(rep: Rep) -> Sample:
        repo = rep.work / f"repo-{compression}"
        what = ["--volume", VOLUME] if rep.engine else ["--path", str(rep.source)]
        argv = [str(SAFEHOLD_CLI), "backup", "-q", "--no-database", *what]
        argv += ["--compress", compression, "--backup-dir", str(repo)]
        timed = _timed.run(argv, env=cli_env(rep), cwd=rep.work)
        artifact = _artifact(repo)
        rep.artifacts[f"sh_{compression}"] = artifact
        return _sample(timed, artifact.stat().st_size, argv=" ".join(argv[1:]))

    return run


def _artifact(repo: Path) -> Path:
    found = [p for p in repo.iterdir() if not p.is_symlink() and naming.parse(p.name)]
    if len(found) != 1:
        raise RuntimeError(f"expected one backup in {repo}, found {found}")
    return found[0]


def restic_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
    env["RESTIC_PASSWORD"] = RESTIC_PASSWORD
    return env


def restic_args(rep: Rep) -> list[str]:
    return ["restic", "-r", str(rep.work / "restic-repo"), "--cache-dir", str(rep.work / "rc")]


def restic_backup(rep: Rep) -> Sample:
    """First backup into a new repository (created off the clock), default settings."""
    subprocess.run(
        [*restic_args(rep), "init", "-q"], env=restic_env(), check=True, capture_output=True
    )
    timed = _timed.run([*restic_args(rep), "backup", "-q", "."], env=restic_env(), cwd=rep.source)
    rep.artifacts["restic"] = rep.work / "restic-repo"
    return _sample(timed, du(rep.work / "restic-repo"))


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# ---- restores -------------------------------------------------------------------------------


def tar_xzf(rep: Rep) -> Sample:
    target = _empty(rep, "restore-tar")
    timed = _timed.run(["tar", "xzf", str(rep.artifacts["tar_czf"]), "-C", str(target)])
    _check_restore(rep, "tar_xzf", target)
    return _sample(timed)


def safehold_restore(compression: str) -> Callable[[Rep], Sample]:
    def run(rep: Rep) -> Sample:
        artifact = rep.artifacts[f"sh_{compression}"]
        repo = artifact.parent
        if rep.engine is not None:
            volume = f"bench-restore-{compression}"
            argv = [str(SAFEHOLD_CLI), "restore", "-q", "--no-safety-backup"]
            argv += ["--volume", f"{volume}:{artifact.name}", "--backup-dir", str(repo)]
            timed = _timed.run(argv, env=cli_env(rep), cwd=rep.work)
            _check_restore(rep, f"sh_restore_{compression}", rep.engine.mountpoint(volume))
            rep.volumes.append(volume)
        else:
            target = _empty(rep, f"restore-{compression}")
            argv = [sys.executable, "-m", "bench._tree_child", "restore"]
            argv += [str(repo), artifact.name, str(target)]
            timed = _timed.run(argv, cwd=ROOT)
            _check_restore(rep, f"sh_restore_{compression}", target)
        return _sample(timed, argv=" ".join(argv[1:]))

    return run


def restic_restore(rep: Rep) -> Sample:
    target = _empty(rep, "restore-restic")
    argv = [*restic_args(rep), "restore", "-q", "latest", "--target", str(target)]
    timed = _timed.run(argv, env=restic_env())
    _check_restore(rep, "restic_restore", target, strict=False)
    return _sample(timed)


def _empty(rep: Rep, name: str) -> Path:
    target = rep.work / name
    target.mkdir()
    return target


def _check_restore(rep: Rep, key: str, target: Path, *, strict: bool = True) -> None:
    """Off the clock: the restored tree must hold what the source holds. It stays until the
    repetition ends (see ``settle``)."""
    if not rep.artifacts.get("_checked_" + key):
        got = tree_stats(target)
        if got != rep.stats:
            message = f"{key}: restored {got}, source has {rep.stats}"
            if strict:
                raise RuntimeError(message)
            log("  warning: " + message)
        rep.artifacts["_checked_" + key] = target


# ---- in-process diagnostics (--diag): the engine alone, no CLI, no repository ----------------


def in_process(make: Callable[[HashingWriter], Any]) -> Callable[[Rep], Sample]:
    """tree -> tar -> compressor -> sha256 -> file, in this process."""

    def run(rep: Rep) -> Sample:
        out = rep.work / "diag.out"
        started = time.perf_counter()
        with out.open("wb", buffering=0) as raw:
            hashing = HashingWriter(raw)
            compressor = make(hashing)
            write_tree(rep.source, compressor)
            compressor.finish()
            hashing.hexdigest()
        seconds = time.perf_counter() - started
        size = out.stat().st_size
        out.unlink()
        return Sample(seconds, size=size)

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


def tar_cf(rep: Rep) -> Sample:
    out = rep.work / "diag.tar"
    timed = _timed.run(["tar", "cf", str(out), "-C", str(rep.source), "."])
    size = out.stat().st_size
    out.unlink()
    return _sample(timed, size)


def methods(levels: list[int]) -> list[Method]:
    main = [
        Method("tar_czf", "tar czf (GNU tar + gzip -6, baseline)", "backup", tar_czf),
        Method("tar_pigz", f"tar cf - | pigz -p {CORES}", "backup", tar_pigz),
        Method(
            "sh_gzip",
            "safehold backup (CLI, gzip = default)",
            "backup",
            safehold_backup("gzip"),
            safehold=True,
        ),
        Method(
            "sh_zstd",
            "safehold backup --compress zstd (CLI)",
            "backup",
            safehold_backup("zstd"),
            safehold=True,
        ),
        Method("restic", "restic backup (first, new local repo)", "backup", restic_backup),
        Method(
            "tar_xzf",
            "tar xzf into an empty folder (baseline)",
            "restore",
            tar_xzf,
            needs="tar_czf",
        ),
        Method(
            "sh_restore_gzip",
            "safehold restore of the gzip backup",
            "restore",
            safehold_restore("gzip"),
            needs="sh_gzip",
            safehold=True,
        ),
        Method(
            "sh_restore_zstd",
            "safehold restore of the zstd backup",
            "restore",
            safehold_restore("zstd"),
            needs="sh_zstd",
            safehold=True,
        ),
        Method(
            "restic_restore",
            "restic restore latest into an empty folder",
            "restore",
            restic_restore,
            needs="restic",
        ),
    ]
    diag = [
        Method(
            f"api_gzip{level}",
            f"library write_tree + isal gzip L{level}, {CORES} threads",
            "backup",
            in_process(functools.partial(GzipWriter, level=level)),
            diagnostic=True,
        )
        for level in levels
    ]
    diag += [
        Method(
            "api_gzip_1t",
            f"library write_tree + isal gzip L{DEFAULT_GZIP_LEVEL}, 1 thread",
            "backup",
            in_process(lambda sink: GzipWriter(sink, DEFAULT_GZIP_LEVEL, threads=1)),
            diagnostic=True,
        ),
        Method(
            "api_zstd",
            "library write_tree + zstd -3",
            "backup",
            in_process(lambda sink: ZstdWriter(sink, 3)),
            diagnostic=True,
        ),
        Method(
            "api_zlib6",
            "library write_tree + stdlib zlib -6, 1 thread",
            "backup",
            in_process(lambda sink: StdlibGzip(sink, 6)),
            diagnostic=True,
        ),
        Method(
            "api_tar",
            "library write_tree, no compression",
            "backup",
            in_process(Plain),
            diagnostic=True,
        ),
        Method("tar_cf", "tar cf, no compression", "backup", tar_cf, diagnostic=True),
    ]
    return main + diag


# ---- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    numerator: str
    denominator: str
    limit: float
    at_most: bool  # True: value <= limit passes (strict < when ``strict``); False: value >= limit
    field: str = "seconds"
    strict: bool = False


TARGETS = [
    Target("tar czf time / safehold gzip time", "tar_czf", "sh_gzip", 3.0, False),
    Target("safehold gzip size / tar czf size", "sh_gzip", "tar_czf", 1.10, True, "size"),
    Target("safehold gzip time / pigz time", "sh_gzip", "tar_pigz", 1.0, True),
    Target("safehold zstd time / restic first backup", "sh_zstd", "restic", 1.0, True, strict=True),
]
INFO = [
    ("safehold zstd size / tar czf size", "sh_zstd", "tar_czf", "size"),
    ("restic repo size / tar czf size", "restic", "tar_czf", "size"),
    ("safehold zstd time / tar czf time", "sh_zstd", "tar_czf", "seconds"),
    ("safehold gzip restore / tar xzf", "sh_restore_gzip", "tar_xzf", "seconds"),
    ("safehold zstd restore / tar xzf", "sh_restore_zstd", "tar_xzf", "seconds"),
    ("restic restore / tar xzf", "restic_restore", "tar_xzf", "seconds"),
    ("safehold zstd restore / restic restore", "sh_restore_zstd", "restic_restore", "seconds"),
    ("tar czf time+sync / safehold gzip time+sync", "tar_czf", "sh_gzip", "total"),
    ("safehold gzip time+sync / pigz time+sync", "sh_gzip", "tar_pigz", "total"),
    ("safehold zstd time+sync / restic time+sync", "sh_zstd", "restic", "total"),
    ("safehold gzip restore+sync / tar xzf+sync", "sh_restore_gzip", "tar_xzf", "total"),
]


def median(samples: list[Sample], field_name: str) -> float | None:
    if field_name == "total":
        values: list[float] = [s.seconds + s.sync_s for s in samples]
    else:
        values = [v for s in samples if (v := getattr(s, field_name)) is not None]
    return float(statistics.median(values)) if values else None


def ratio(runs: dict[str, list[Sample]], num: str, den: str, field_name: str) -> float | None:
    top = median(runs.get(num, []), field_name)
    bottom = median(runs.get(den, []), field_name)
    return None if top is None or not bottom else top / bottom


def verdicts(runs: dict[str, list[Sample]], chosen: list[Method], idle_kb: int) -> dict[str, Any]:
    targets: list[dict[str, Any]] = []
    for target in TARGETS:
        value = ratio(runs, target.numerator, target.denominator, target.field)
        passed = None
        if value is not None:
            if target.at_most:
                passed = value < target.limit if target.strict else value <= target.limit
            else:
                passed = value >= target.limit
        limit = (
            "< " if target.strict else "<= " if target.at_most else ">= "
        ) + f"{target.limit:g}"
        targets.append({"name": target.name, "value": value, "limit": limit, "pass": passed})
    peaks = {
        m.key: max(s.rss_kb or 0 for s in runs[m.key]) for m in chosen if m.safehold and runs[m.key]
    }
    if peaks:
        worst = max(peaks.values())
        targets.append(
            {
                "name": f"safehold peak RSS, MB (max of {len(peaks)} commands x repeats)",
                "value": worst / 1024,
                "limit": f"< {PEAK_RSS_LIMIT_MB}",
                "pass": worst / 1024 < PEAK_RSS_LIMIT_MB,
                "per_method_kb": peaks,
                "growth_over_idle_cli_mb": (worst - idle_kb) / 1024,
            }
        )
    info = {name: ratio(runs, num, den, f) for name, num, den, f in INFO}
    return {"targets": targets, "info": info}


def render(
    chosen: list[Method], runs: dict[str, list[Sample]], stats: TreeStats, result: dict[str, Any]
) -> str:
    head = f"  {'method':<56} {'median s':>8} {'min':>6} {'max':>6} {'+sync':>6} {'MB/s':>5}"
    head += f" {'size MB':>8} {'RSS MB':>7} {'x faster':>8} {'size/base':>9}"
    lines: list[str] = []
    for phase, base_key in (("backup", "tar_czf"), ("restore", "tar_xzf")):
        rows = [m for m in chosen if m.phase == phase and runs.get(m.key)]
        if not rows:
            continue
        base = runs.get(base_key)
        base_s = median(base, "seconds") if base else None
        base_size = median(base, "size") if base else None
        lines += [f"  {phase.upper()}", head]
        for m in rows:
            samples = runs[m.key]
            seconds = median(samples, "seconds") or 0.0
            times = [s.seconds for s in samples]
            size = median(samples, "size")
            rss = max((s.rss_kb or 0) for s in samples)
            label = ("[diag] " if m.diagnostic else "") + m.label
            lines.append(
                f"  {label:<56} {seconds:8.2f} {min(times):6.2f} {max(times):6.2f} "
                f"{median(samples, 'total') or 0:6.2f} {stats.bytes / MB / seconds:5.0f} "
                + (f"{size / MB:8.1f}" if size else f"{'':8}")
                + (f" {rss / 1024:7.1f}" if rss else f" {'':7}")
                + (f" {base_s / seconds:8.2f}" if base_s else f" {'':8}")
                + (f" {size / base_size:9.3f}" if size and base_size else "")
            )
        lines.append("")
    lines.append("  TARGETS (ratios of medians; time = the command's wall time, without the sync)")
    for target in result["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[target["pass"]]
        value = "n/a" if target["value"] is None else f"{target['value']:.3f}"
        lines.append(f"  {target['name']:<58} {value:>9} {target['limit']:>7}  {verdict}")
    lines.append("  other ratios (information)")
    for name, value in result["info"].items():
        lines.append(f"  {name:<58} {'n/a' if value is None else f'{value:.3f}':>9}")
    lines += ["", "  raw per repetition (seconds, +sync, MB, peak RSS MB)"]
    for key, samples in runs.items():
        for number, sample in enumerate(samples, 1):
            size_text = "" if sample.size is None else f"{sample.size / MB:.1f}"
            rss_text = "" if sample.rss_kb is None else f"{sample.rss_kb / 1024:.1f}"
            lines.append(
                f"    {key:<16} #{number} {sample.seconds:8.2f} {sample.sync_s:6.2f} "
                f"{size_text:>8} {rss_text:>7}"
            )
    return "\n".join(lines)


def cached_tree(size_mb: int) -> Path:
    work = ROOT / ".bench" / f"tree-v{GENERATOR_VERSION}-{size_mb}mb"
    tree = work / "tree"
    if not (work / "complete").exists():
        shutil.rmtree(work, ignore_errors=True)
        log(f"building a {size_mb} MB tree in {tree} (cached for the next runs)")
        started = time.perf_counter()
        build_tree(tree, size_mb * MB)
        (work / "complete").write_text("ok\n")
        log(f"  built in {time.perf_counter() - started:.0f}s")
    return tree


@contextlib.contextmanager
def in_volume(tree: Path, work: Path) -> Iterator[tuple[Path, Engine, str]]:
    """A private engine with the tree copied into its volume ``bench-tree``."""
    from safehold.sandbox.dockerd import SandboxDockerd, engine_version

    with SandboxDockerd() as sandbox, contextlib.closing(sandbox.client()) as client:

        def mountpoint(name: str) -> Path:
            return Path(str(client.volumes.get(name).attrs["Mountpoint"]))

        def remove_volume(name: str) -> None:
            client.volumes.get(name).remove(force=True)

        client.volumes.create(name=VOLUME)
        source = mountpoint(VOLUME)
        log(f"private Docker engine at {sandbox.base_url}; copying the tree into volume {VOLUME}")
        subprocess.run(["cp", "-a", f"{tree}/.", str(source)], check=True)
        dockerd = shutil.which("dockerd", path=os.environ.get("PATH", "") + ":/usr/sbin") or ""
        version = ".".join(map(str, engine_version(dockerd))) if dockerd else "?"
        yield source, Engine(sandbox.base_url, mountpoint, remove_volume), version


def environment() -> dict[str, str]:
    import isal
    import zstandard

    from safehold._version import __version__

    versions = {
        "safehold": __version__,
        "python": sys.version.split()[0],
        "isal": getattr(isal, "__version__", "?"),
        "zstandard": zstandard.__version__,
        "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "tar": _timed.tool_version(["tar", "--version"]),
        "gzip": _timed.tool_version(["gzip", "--version"]),
        "pigz": _timed.tool_version(["pigz", "--version"]),
        "restic": _timed.tool_version(["restic", "version"]),
    }
    return {k: str(v) for k, v in versions.items()}


def restic_settings(work: Path) -> dict[str, Any]:
    """What ``restic init`` makes by default here: repository version and compression."""
    probe = Rep(work, work, TreeStats(0, 0, 0, 0, 0), None)
    work.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [*restic_args(probe), "init", "-q"], env=restic_env(), check=True, capture_output=True
        )
        config = subprocess.run(
            [*restic_args(probe), "cat", "config"],
            env=restic_env(),
            check=True,
            capture_output=True,
            text=True,
        )
        version = json.loads(config.stdout).get("version")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "repository_version": version,
        "compression": "auto (the default; zstd, skipped for data that does not compress)"
        if version == 2
        else "none (repository v1)",
        "flags": "restic -r REPO --cache-dir FRESH backup -q . (defaults otherwise)",
        "gomaxprocs": os.environ.get("GOMAXPROCS", f"default ({CORES} cores)"),
    }


def settle(removed_at: float, seconds: float) -> None:
    """Wait until ``seconds`` have passed since the last removal of a tree (``SETTLE_S``)."""
    left = removed_at + seconds - time.monotonic()
    if left > 0:
        log(f"waiting {left:.0f}s: inodes freed by the last removal are still recent to ext4")
        time.sleep(left)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_tree", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=2048, help="tree content size (MB, 1e6)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument(
        "--in-volume", action="store_true", help="put the tree in a volume of a private engine"
    )
    parser.add_argument("--diag", action="store_true", help="also time the in-process variants")
    parser.add_argument("--levels", default="1,2,3", help="isal gzip levels for --diag (0-3)")
    parser.add_argument("--only", default="", help="comma list of method keys to run")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=SETTLE_S,
        help="seconds between removing a repetition's trees and the next restore phase",
    )
    args = parser.parse_args(argv)
    if not _timed.have_gnu_time():
        parser.error("needs GNU time at /usr/bin/time (apt-get install time)")
    for tool in ("pigz", "restic"):
        if shutil.which(tool) is None:
            parser.error(f"needs {tool} (apt-get install {tool})")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    levels = sorted({int(x) for x in args.levels.split(",")})
    every = methods(levels)
    chosen = [m for m in every if args.diag or not m.diagnostic]
    if args.only:
        keys = set(args.only.split(","))
        chosen = [m for m in chosen if m.key in keys]
    keys = {m.key for m in chosen}
    chosen = [m for m in chosen if not m.needs or m.needs in keys]

    tree = cached_tree(args.size_mb)
    scratch = ROOT / ".bench" / "tree-work"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    versions = environment()
    restic = restic_settings(scratch / "probe")
    idle = _timed.run(
        [str(SAFEHOLD_CLI), "backup", "--help"],
        env=cli_env(Rep(tree, scratch, TreeStats(0, 0, 0, 0, 0), None)),
    )
    log(f"restic: {versions['restic']}; {restic}")
    log(
        f"safehold CLI idle (backup --help): {idle.max_rss_kb / 1024:.1f} MB RSS, "
        f"{idle.seconds:.2f}s"
    )
    stack = contextlib.ExitStack()
    try:
        if args.in_volume:
            source, engine, engine_ver = stack.enter_context(in_volume(tree, scratch))
            versions["dockerd"] = engine_ver
        else:
            source, engine = tree, None
        stats = tree_stats(source)
        log(
            f"source {source}: {stats.bytes / MB:.0f} MB in {stats.files} files, "
            f"{stats.hardlinks} hardlinks, {stats.symlinks} symlinks, {stats.dirs} folders; "
            f"{CORES} cores"
        )
        load_start = os.getloadavg()
        os.sync()
        removed_at = time.monotonic()  # the scratch folder was emptied at the start
        runs: dict[str, list[Sample]] = {m.key: [] for m in chosen}
        for rep_number in range(args.repeat):
            work = scratch / f"rep{rep_number + 1}"
            work.mkdir()
            rep = Rep(source, work, stats, engine)
            for phase in ("backup", "restore"):
                group = [m for m in chosen if m.phase == phase]
                if phase == "restore" and group:
                    settle(removed_at, args.settle_s)
                shift = rep_number % len(group) if group else 0
                for method in group[shift:] + group[:shift]:
                    os.sync()
                    sample = method.run(rep)
                    sample.sync_s = _timed.timed_sync()
                    runs[method.key].append(sample)
                    size = "" if sample.size is None else f" {sample.size / MB:8.1f} MB"
                    rss = "" if sample.rss_kb is None else f" RSS {sample.rss_kb / 1024:6.1f} MB"
                    log(
                        f"rep {rep_number + 1} {method.key:16s} {sample.seconds:7.2f} s "
                        f"(+sync {sample.sync_s:5.2f}){size}{rss}"
                    )
            shutil.rmtree(work)
            for volume in rep.volumes:
                assert engine is not None
                engine.remove_volume(volume)
            os.sync()
            removed_at = time.monotonic()
        load_end = os.getloadavg()
    finally:
        stack.close()
        shutil.rmtree(scratch, ignore_errors=True)

    result = verdicts(runs, chosen, idle.max_rss_kb)
    mode = (
        f"Docker volume of a private engine (dockerd {versions.get('dockerd')}, vfs)"
        if args.in_volume
        else "plain folder"
    )
    title = (
        f"tree of {stats.bytes / MB:.0f} MB, {stats.files} files ({mode}); {CORES} cores; "
        f"medians of {args.repeat}; safehold CLI idle RSS {idle.max_rss_kb / 1024:.1f} MB"
    )
    print(title)
    print(render(chosen, runs, stats, result))
    print(f"  load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"tree-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "size_mb": args.size_mb,
                "mode": mode,
                "generator_version": GENERATOR_VERSION,
                "tree": stats.to_json(),
                "cores": CORES,
                "repeat": args.repeat,
                "loadavg_start": load_start,
                "loadavg_end": load_end,
                "versions": versions,
                "restic": restic,
                "safehold_cli_idle": {"max_rss_kb": idle.max_rss_kb, "seconds": idle.seconds},
                "methods": {m.key: m.label for m in chosen},
                "samples": {k: [s.to_json() for s in v] for k, v in runs.items()},
                "result": result,
            },
            indent=2,
            default=str,
        )
    )
    print(f"  results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
