"""PITR: safehold against pgBackRest on the same archiving cluster, in one run.

Run from the project root (pgBackRest from scripts/install-bench-deps.sh)::

    .venv/bin/python -m bench.bench_pitr [--size-gb 1.0] [--repeat 3] [--segments 20]

On a throwaway PostgreSQL cluster holding the realistic bench database (bench/_dataset.py),
archiving to both tools at once (``archive_command = 'safehold wal-push ... %p && pgbackrest
archive-push %p'``), it measures through the command lines, as an operator runs them:

1. base backup: ``safehold pitr base-backup`` (pg_basebackup into zstd -3, 2 threads) vs
   ``pgbackrest backup --type=full`` with ``compress-type=zst`` level 3 and with ``lz4``
   (``process-max=2``, ``start-fast=y``): wall time and stored size;
2. restore to a time between two committed batches: ``safehold pitr restore --to-time T``
   vs ``pgbackrest restore --type=time --target=T`` + ``pg_ctl start``, both until the server
   is promoted; each restored server is checked (first batch there, second not, every order);
3. wal-push throughput: N sequential ``safehold wal-push`` vs ``pgbackrest archive-push``
   processes on copies of real 16 MiB segments, each into an empty archive (and, as a
   diagnostic, N ``safehold wal-push --help``: the start-up cost alone).

Medians of ``--repeat`` runs, order rotated per repetition; the issue's target is safehold
within 1.2x of pgBackRest's time for backup, and for restore within 1.0x of its zst-3
(1.2x of its lz4). Results go to
bench/results/pitr-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import psycopg

from safehold import _proc
from safehold._version import __version__
from safehold.operations.pitr import archive as wal
from safehold.operations.pitr import setup as pitr_setup
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import UNPRIVILEGED_USER, free_port
from safehold.sources.postgres import PgTarget, connect

from . import _dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 1.2
RESTORE_TARGET = 1.0  # issue 13: restore to a time no slower than pgBackRest zst-3
STANZA = "bench"
RUN_AS = UNPRIVILEGED_USER if os.geteuid() == 0 else None
SAFEHOLD = "safehold (zstd-3)"
PGBR_ZST = "pgBackRest zst-3"
PGBR_LZ4 = "pgBackRest lz4"
STARTUP = "[diag] safehold start-up"  # `wal-push --help`: Python and the imports, no work
POLL_S = 0.3  # how often both restores ask pg_is_in_recovery() (safehold's own interval)
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def server_command() -> str:
    """How the server (user nobody when we are root) runs safehold: the venv's interpreter may
    sit under a folder that user cannot enter, so as root use the system Python 3.11 with the
    project and the venv's packages on PYTHONPATH (as tests/test_pitr.py does)."""
    python = shutil.which("python3.11", path="/usr/bin") if RUN_AS else None
    paths = f"{ROOT / 'src'}:{sysconfig.get_paths()['purelib']}"
    return f"env PYTHONPATH={paths} {python or sys.executable} -m safehold"


def own(path: Path) -> Path:
    """Give ``path`` to the server's OS user (it writes archives, runs restores)."""
    if RUN_AS is not None:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def own_folder(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return own(path)


def shared_folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o700)
    return own(folder)


def run(
    argv: list[str],
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run ``argv`` to the end; raise with its output when it fails."""
    proc = subprocess.run(
        argv,
        env=env if env is not None else _proc.child_env(),
        user=user,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {proc.returncode}:\n"
            f"{proc.stderr[-3000:]}{proc.stdout[-2000:]}"
        )
    return proc.stdout


def timed(action: Callable[[], T]) -> tuple[float, T]:
    began = time.perf_counter()
    result = action()
    os.sync()  # both tools fsync what they write; count the page-cache flush for all alike
    return time.perf_counter() - began, result


def rotated(items: list[str], number: int) -> list[str]:
    shift = number % len(items)
    return items[shift:] + items[:shift]


class Bench:
    def __init__(self, cluster: SandboxCluster, work: Path, size_gb: float) -> None:
        self.cluster = cluster
        self.work = work
        self.repo = own_folder(work / "safehold-repo")
        self.conf = work / "pgbackrest.conf"
        self.bin_dir = cluster.bin_dir
        self.batch_rows = max(50_000, int(500_000 * size_gb))
        self.running: list[Path] = []  # data folders of restored servers we started
        self.scratch: list[Path] = []  # restore folders to remove

    @property
    def target(self) -> PgTarget:
        return self.cluster.target

    def sql(self, statement: str, db: str = "bench") -> list[tuple[Any, ...]]:
        with connect(self.target.with_db(db), autocommit=True) as conn:
            cur = conn.execute(statement)
            return list(cur.fetchall()) if cur.description else []

    def safehold_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG", "SAFEHOLD_"))}
        env.update(
            BACKUP_DIR=str(self.repo),
            DB_HOST=self.target.host,
            DB_PORT=str(self.target.port),
            DB_NAME="postgres",
            DB_USER=self.target.user,
            PGPASSWORD=self.target.password or "",
        )
        return env

    def safehold(self, *args: str) -> str:
        return run([sys.executable, "-m", "safehold", *args], env=self.safehold_env())

    def pgbackrest(self, *args: str) -> str:
        argv = ["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args]
        return run(argv, user=RUN_AS, cwd=self.work)

    def pg_ctl(self, data: Path, *args: str, check: bool = True) -> None:
        argv = [str(self.bin_dir / "pg_ctl"), "-D", str(data), *args]
        try:
            run(argv, user=RUN_AS, cwd=data.parent)
        except RuntimeError:
            if check:
                raise

    # ---- setup ----

    def setup_archiving(self) -> None:
        """pgBackRest's config and stanza; archive_command pushing to both tools; restart."""
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.work / 'pgbackrest-repo'}\n"
            "repo1-retention-full=99\n"
            "process-max=2\n"
            "start-fast=y\n"
            "archive-async=n\n"
            "compress-type=zst\n"
            "compress-level=3\n"
            f"log-path={self.work / 'pgbackrest-log'}\n"
            f"lock-path={self.work / 'pgbackrest-lock'}\n"
            f"spool-path={self.work / 'pgbackrest-spool'}\n"
            "log-level-console=warn\n"
            "log-level-file=info\n"
            f"\n[{STANZA}]\n"
            f"pg1-path={self.cluster.data}\n"
            f"pg1-port={self.cluster.port}\n"
            f"pg1-socket-path={self.cluster.root}\n"
            f"pg1-user={self.target.user}\n"
        )
        own(self.conf)
        settings = pitr_setup.server_settings(server_command(), self.repo, ahead=False)
        settings["archive_command"] += (
            f" && pgbackrest --config={self.conf} --stanza={STANZA} archive-push %p"
        )
        pitr_setup.apply_settings(self.target, settings)
        log_file = self.cluster.root / "server.log"
        self.pg_ctl(self.cluster.data, "-l", str(log_file), "-m", "fast", "-w", "restart")
        log(f"archive_command = {settings['archive_command']}")
        self.pgbackrest("stanza-create")
        self.pgbackrest("check")  # archives a segment through the command: both must succeed
        log("pgBackRest stanza created and checked; archiving to both works")

    def switch_and_wait(self, timeout: float = 120) -> str:
        segment = str(self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, failed = self.sql("SELECT last_archived_wal, failed_count FROM pg_stat_archiver")[
                0
            ]
            if done is not None and str(done) >= segment:
                return segment
            time.sleep(0.2)
        tail = (self.cluster.root / "server.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{segment} not archived (failed {failed}): {tail}")

    def quiesce(self) -> None:
        """Off the clock before each timed step: checkpoint and flush the page cache."""
        self.sql("CHECKPOINT")
        os.sync()

    # ---- 1. base backups ----

    def backup(self, method: str) -> tuple[str, int]:
        """Run one base backup; returns (its name, stored bytes)."""
        if method == SAFEHOLD:
            before = set((self.repo / "base").glob("*.json"))
            self.safehold("pitr", "base-backup")
            (record,) = set((self.repo / "base").glob("*.json")) - before
            data = json.loads(record.read_text())
            return str(data["name"]), int(data["size"])
        kind = "zst" if method == PGBR_ZST else "lz4"
        level = ["--compress-level=3"] if kind == "zst" else []  # lz4: pgBackRest's default 1
        self.pgbackrest("backup", "--type=full", f"--compress-type={kind}", *level)
        info = json.loads(self.pgbackrest("info", "--output=json"))
        newest = info[0]["backup"][-1]
        return str(newest["label"]), int(newest["info"]["repository"]["size"])

    # ---- 2. restores ----

    def restore(self, method: str, when: datetime, label: str) -> tuple[str, Path, int]:
        """Restore to ``when`` into a new folder and wait until promoted; the server is left
        running (returns what the tool reported, its data folder and port)."""
        parent = shared_folder("safehold-bench-pitr-restore-")
        self.scratch.append(parent)
        data = parent / "data"
        port = free_port()
        self.running.append(data)
        if method == SAFEHOLD:
            argv = ["pitr", "restore", "--to-time", when.isoformat(), "--target-dir", str(data)]
            argv += ["--port", str(port), "--command", server_command(), "--keep-running"]
            if RUN_AS is not None:
                argv += ["--server-user", RUN_AS]
            return self.safehold(*argv).strip(), data, port
        own_folder(data)
        self.pgbackrest(
            "restore",
            f"--set={label}",
            "--type=time",
            f"--target={when.isoformat(sep=' ')}",
            "--target-action=promote",
            "--archive-mode=off",  # a restored copy must not archive into the source's repo
            f"--pg1-path={data}",
        )
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
        logfile = data / "bench-restore.log"
        self.pg_ctl(data, "-o", options, "-l", str(logfile), "-w", "-t", "600", "start")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(
                    host=str(data), port=port, user="postgres", dbname="postgres", autocommit=True
                ) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row == (False,):
                        return f"restored {label}", data, port
            except psycopg.OperationalError:
                pass
            time.sleep(POLL_S)
        raise RuntimeError(f"pgBackRest restore of {label} did not promote in 600 s")

    def check_restored(self, method: str, data: Path, port: int, orders: int) -> None:
        """Fail loudly unless the restore stopped between the two batches with all the data."""
        with psycopg.connect(host=str(data), port=port, user="postgres", dbname="bench") as conn:
            recovering = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            batches = conn.execute(
                "SELECT batch, count(*) FROM pitr_marks GROUP BY 1 ORDER BY 1"
            ).fetchall()
            counted = conn.execute("SELECT count(*) FROM orders").fetchone()
        expected = [(1, self.batch_rows)]
        if recovering != (False,) or batches != expected or counted != (orders,):
            raise RuntimeError(
                f"{method}: WRONG RESTORE in {data}: in recovery {recovering}, batches "
                f"{batches} (expected {expected}), orders {counted} (expected {orders})"
            )

    def server_log(self, method: str, data: Path) -> dict[str, Any]:
        """From the restored server's log (off the clock): WAL files it fetched from the
        archive, and seconds from its first line to accepting read-write connections."""
        name = "safehold-restore.log" if method == SAFEHOLD else "bench-restore.log"
        lines = (data / name).read_text(errors="replace").splitlines()
        fetched = sum("restored log file" in line for line in lines)
        stamps = [_stamp(lines[0]) if lines else None]
        stamps += [_stamp(ln) for ln in lines if ln.endswith("ready to accept connections")]
        first, last = stamps[0], stamps[-1]
        server_s = (last - first).total_seconds() if first and last and len(stamps) > 1 else None
        return {"wal_files_fetched": fetched, "server_start_to_promoted_s": server_s}

    def stop(self, data: Path) -> None:
        self.pg_ctl(data, "-m", "fast", "-w", "stop", check=False)
        if data in self.running:
            self.running.remove(data)
        shutil.rmtree(data.parent, ignore_errors=True)

    # ---- 3. wal-push ----

    def copy_segments(self, count: int) -> list[Path]:
        """Copies of real WAL segments of this cluster (pgBackRest checks the header's system
        id), renamed in sequence on a timeline of their own."""
        pg_wal = self.cluster.data / "pg_wal"
        current = str(self.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0])
        with (pg_wal / current).open("rb") as handle:
            magic = handle.read(2)
        sources = []
        for path in sorted(pg_wal.iterdir()):
            if wal.SEGMENT_RE.match(path.name) and path.stat().st_size == wal.SEGMENT_SIZE:
                with path.open("rb") as handle:
                    if handle.read(2) == magic:
                        sources.append(path)
        if not sources:
            raise RuntimeError(f"no WAL segment with a valid header in {pg_wal}")
        folder = own_folder(self.work / "segments")
        copies = []
        name = "000000070000000100000000"
        for number in range(count):
            name = wal.next_segment(name)
            copy = folder / name
            shutil.copyfile(sources[number % len(sources)], copy)
            os.chmod(copy, 0o644)
            copies.append(copy)
        log(f"{count} segments copied from {len(sources)} real ones in pg_wal")
        return copies

    def push_all(self, method: str, segments: list[Path], number: int) -> int:
        """One process per segment, as archive_command runs them; returns stored bytes."""
        if method == STARTUP:
            for _segment in segments:
                run([*shlex.split(server_command()), "wal-push", "--help"], user=RUN_AS)
            return 0
        if method == SAFEHOLD:
            archive = own_folder(self.work / f"push-safehold-{number}")
            command = [*shlex.split(server_command()), "wal-push", "--backup-dir", str(archive)]
            for segment in segments:
                run([*command, str(segment)], user=RUN_AS, cwd=self.work)
            return sum(p.stat().st_size for p in (archive / "wal").iterdir())
        archive = self.work / f"push-pgbackrest-{number}"
        repo = f"--repo1-path={archive}"
        for segment in segments:
            self.pgbackrest(repo, "archive-push", str(segment))
        return sum(p.stat().st_size for p in (archive / "archive").rglob("*") if p.is_file())

    def cleanup(self) -> None:
        for data in list(self.running):
            self.stop(data)
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _stamp(line: str) -> datetime | None:
    """The time at the start of a server log line (log_line_prefix '%m [%p] ')."""
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None


def versions(bench: Bench) -> dict[str, str]:
    return {
        "safehold": __version__,
        "pgbackrest": run(["pgbackrest", "version"]).strip(),
        "postgresql": run([str(bench.bin_dir / "postgres"), "--version"]).strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--segments", type=int, default=20, help="segments per wal-push run")
    args = parser.parse_args()
    if shutil.which("pgbackrest") is None:
        parser.error("pgbackrest is not installed: run scripts/install-bench-deps.sh")
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so the finally below stops the servers
    load_start = os.getloadavg()
    work = shared_folder("safehold-bench-pitr-")
    cluster = SandboxCluster(fsync=True)
    bench = Bench(cluster, work, args.size_gb)
    backup_methods = [SAFEHOLD, PGBR_ZST, PGBR_LZ4]
    runs: dict[str, dict[str, list[float]]] = {"backup": {}, "restore": {}, "wal-push": {}}
    sizes: dict[str, dict[str, int]] = {"backup": {}, "wal-push": {}}
    labels: dict[str, str] = {}
    reached: dict[str, str] = {}
    diag: dict[str, dict[str, list[dict[str, Any]]]] = {"restore": {}}
    results: dict[str, Any] = {"size_gb": args.size_gb, "repeat": args.repeat}
    try:
        server = cluster.start()
        results["versions"] = versions(bench)
        log(f"cluster on port {cluster.port}; {results['versions']}")
        log(f"building the bench database (~{args.size_gb} GB)")
        _dataset.build_real(server, "bench", int(args.size_gb * 1e9), log)
        results["database_bytes"] = _dataset.database_size(server, "bench")
        segments = bench.copy_segments(args.segments)
        bench.sql("CREATE TABLE pitr_marks (batch int, n int, payload text)")
        orders = int(bench.sql("SELECT count(*) FROM orders")[0][0])
        bench.setup_archiving()

        log("1. base backups")
        for number in range(args.repeat):
            for method in rotated(backup_methods, number):
                bench.quiesce()
                took, (label, size) = timed(partial(bench.backup, method))
                runs["backup"].setdefault(method, []).append(took)
                sizes["backup"][method] = size
                labels[method] = label
                log(f"{method}: base backup {label}: {took:.2f}s, {size} bytes")

        log(f"2. restore to a time between two batches of {bench.batch_rows} rows")
        payload = (
            "SELECT {b}, g, md5(g::text) || md5((g + {b})::text) FROM generate_series(1, {n}) g"
        )
        bench.sql("INSERT INTO pitr_marks " + payload.format(b=1, n=bench.batch_rows))
        time.sleep(1.0)
        when = datetime.now(UTC)
        time.sleep(1.0)
        bench.sql("INSERT INTO pitr_marks " + payload.format(b=2, n=bench.batch_rows))
        last = bench.switch_and_wait()
        log(f"target time {when.isoformat()}; WAL archived by both up to {last}")
        for number in range(args.repeat):
            for method in rotated(backup_methods, number):
                os.sync()
                took, (said, data, port) = timed(
                    partial(bench.restore, method, when, labels[method])
                )
                runs["restore"].setdefault(method, []).append(took)
                reached[method] = said
                bench.check_restored(method, data, port, orders)
                seen = bench.server_log(method, data)
                diag["restore"].setdefault(method, []).append(seen)
                if number == 0 and method != SAFEHOLD:
                    conf = (data / "postgresql.auto.conf").read_text()
                    found = [ln for ln in conf.splitlines() if ln.startswith("restore_command")]
                    log(f"pgBackRest wrote: {found}")
                bench.stop(data)
                log(
                    f"{method}: restore {took:.2f}s, checked (batch 1 only, {orders} orders); "
                    f"server: {seen}; load {os.getloadavg()[0]:.2f}; {said}"
                )
        archiver = bench.sql("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
        results["archiver"] = {"archived": archiver[0], "failed": archiver[1]}

        log(f"3. wal-push: {args.segments} segments, one process each, into empty archives")
        for number in range(args.repeat):
            bench.pgbackrest(f"--repo1-path={work / f'push-pgbackrest-{number}'}", "stanza-create")
            for method in rotated([SAFEHOLD, PGBR_ZST, STARTUP], number):
                os.sync()
                took, stored = timed(partial(bench.push_all, method, segments, number))
                runs["wal-push"].setdefault(method, []).append(took)
                sizes["wal-push"][method] = stored
                log(
                    f"{method}: wal-push {took:.2f}s = {len(segments) / took:.1f} segments/s, "
                    f"{stored} bytes stored"
                )
    finally:
        bench.cleanup()
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)

    medians = {
        phase: {name: statistics.median(times) for name, times in by_method.items()}
        for phase, by_method in runs.items()
    }
    verdicts: dict[str, tuple[float, bool | None]] = {}
    for phase in ("backup", "restore"):
        for baseline in (PGBR_ZST, PGBR_LZ4):
            ratio = medians[phase][SAFEHOLD] / medians[phase][baseline]
            goal = RESTORE_TARGET if phase == "restore" and baseline == PGBR_ZST else TARGET_RATIO
            verdicts[f"{phase}: safehold / {baseline} (time)"] = (ratio, ratio <= goal)
    for baseline in (PGBR_ZST, PGBR_LZ4):
        ratio = sizes["backup"][SAFEHOLD] / sizes["backup"][baseline]
        verdicts[f"size: safehold / {baseline}"] = (ratio, None)
    push_ratio = medians["wal-push"][PGBR_ZST] / medians["wal-push"][SAFEHOLD]
    verdicts["wal-push: safehold / pgBackRest (segments/s)"] = (push_ratio, None)

    database_mb = results["database_bytes"] / 1e6
    load_end = os.getloadavg()
    print(f"\nbench database {database_mb:.0f} MB; medians of {args.repeat}")
    print(f"load average (1/5/15 min) at start {load_start}, at end {load_end}")
    print(f"\n{'base backup':<28}{'median s':>10}{'min':>8}{'max':>8}{'MB':>10}{'x pgbr zst':>12}")
    for name, times in runs["backup"].items():
        median = medians["backup"][name]
        print(
            f"{name:<28}{median:>10.2f}{min(times):>8.2f}{max(times):>8.2f}"
            f"{sizes['backup'][name] / 1e6:>10.1f}{median / medians['backup'][PGBR_ZST]:>12.3f}"
        )
    title = "restore to a time"
    print(f"\n{title:<28}{'median s':>10}{'min':>8}{'max':>8}{'x pgbr zst':>12}", end="")
    print(f"{'[diag] server s':>17}{'WAL files':>11}")
    for name, times in runs["restore"].items():
        median = medians["restore"][name]
        records = diag["restore"][name]
        promoted = [r["server_start_to_promoted_s"] for r in records]
        known = [p for p in promoted if p is not None]
        server_s = f"{statistics.median(known):.2f}" if known else "-"
        print(
            f"{name:<28}{median:>10.2f}{min(times):>8.2f}{max(times):>8.2f}"
            f"{median / medians['restore'][PGBR_ZST]:>12.3f}{server_s:>17}"
            f"{records[-1]['wal_files_fetched']:>11}"
        )
    header = f"wal-push, {args.segments} segments"
    print(f"\n{header:<28}{'median s':>10}{'min':>8}{'max':>8}{'MB':>10}{'seg/s':>8}")
    for name, times in runs["wal-push"].items():
        median = medians["wal-push"][name]
        print(
            f"{name:<28}{median:>10.2f}{min(times):>8.2f}{max(times):>8.2f}"
            f"{sizes['wal-push'][name] / 1e6:>10.1f}{args.segments / median:>8.1f}"
        )
    print()
    for label, (ratio, ok) in verdicts.items():
        goal = RESTORE_TARGET if label == f"restore: safehold / {PGBR_ZST} (time)" else TARGET_RATIO
        verdict = "(information)" if ok is None else f"<= {goal}  " + ("PASS" if ok else "FAIL")
        print(f"{label:<48}{ratio:>8.3f}   {verdict}")
    results.update(
        runs=runs,
        medians=medians,
        sizes=sizes,
        labels=labels,
        reached=reached,
        diagnostics=diag,
        batch_rows=bench.batch_rows,
        segments=args.segments,
        verdicts={k: {"ratio": r, "pass": ok} for k, (r, ok) in verdicts.items()},
        cores=os.cpu_count(),
        load_start=load_start,
        load_end=load_end,
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"pitr-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results in {out}")


if __name__ == "__main__":
    main()
