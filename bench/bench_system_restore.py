"""Whole-system restore (``restore --all``) against its parts run one by one, side by side.

Run from the project root, as root (it starts a private Docker engine and PostgreSQL cluster)::

    .venv/bin/python -m bench.bench_system_restore [--db-mb 300] [--volumes app-data:100,...]
    .venv/bin/python -m bench.bench_system_restore --quick      # ~1 minute smoke test

The sample app, at a realistic size: a throwaway cluster holding ``bench_app`` (bench/_dataset.py
``build_real``, ``--db-mb``), a private Docker engine with the volumes ``--volumes`` (the mixed
tree of bench/_tree_data.py, cached in .bench/) of the compose project ``benchapp``, a busybox
httpd serving ``app-data/www/health.txt`` (the health URL) and a worker using ``user-data``.
One full-system backup (``safehold backup --all``) is made; then each repetition, order rotated,
times through the CLI (new processes, as operators run them; wall and CPU time):

- ``all``: ``safehold restore --all --set ID --project benchapp --health-url URL --json``, whose
  per-step times (``timings_s``) are kept; the containers are running when it starts;
- ``parts``: the containers stopped (off the clock), then ``safehold restore --database
  DUMP`` and ``safehold restore --volume NAME:ARTIFACT`` for each volume, one after another;
  their wall times are summed, and the containers started again off the clock.

The target (issue 13): restore --all's wall time minus its stop-containers step, over the sum of
the parts, at most 1.1 (ratio of medians). Before every timing the database and the volumes are
damaged (rows deleted, files changed, added and removed), the server checkpointed and ``sync``
run; after it, off the clock, every table's row count and a sha256 of each volume's tree
(``write_tree``) must equal the backed-up state, so a fast wrong restore fails the bench. The
replaced databases and safety copies each restore leaves are removed off the clock. Results go to
bench/results/system-restore-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import docker

from safehold import __version__
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import free_port
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sandbox.images import ensure_busybox_image
from safehold.sources.postgres import PgTarget, connect, count_rows
from safehold.sources.tar.tree import write_tree

from . import _dataset, _timed
from ._tree_data import GENERATOR_VERSION, MB, build_tree, tree_stats

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SAFEHOLD_CLI = Path(sys.executable).parent / "safehold"
CORES = len(os.sched_getaffinity(0))
DB = "bench_app"
PROJECT = "benchapp"
LIMIT = 1.1


@dataclasses.dataclass
class App:
    server: PgTarget
    client: docker.DockerClient
    env: dict[str, str]
    repo: Path
    volumes: dict[str, Path]  # name -> mountpoint
    containers: list[str]
    health_url: str
    set_id: str = ""
    members: dict[str, str] = dataclasses.field(default_factory=dict)  # target -> artifact
    rows: dict[str, int] = dataclasses.field(default_factory=dict)
    digests: dict[str, str] = dataclasses.field(default_factory=dict)


class _Digest:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        return len(data)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def tree_digest(root: Path) -> str:
    digest = _Digest()
    write_tree(root, digest)
    return digest.hash.hexdigest()


def cached_tree(size_mb: int) -> Path:
    """The tree bench_volume_paths and bench_tree use (same cache): built once per size."""
    work = ROOT / ".bench" / f"tree-v{GENERATOR_VERSION}-{size_mb}mb"
    if not (work / "complete").exists():
        shutil.rmtree(work, ignore_errors=True)
        log(f"building a {size_mb} MB tree in {work / 'tree'} (cached for the next runs)")
        build_tree(work / "tree", size_mb * MB)
        (work / "complete").write_text("ok\n")
    return work / "tree"


@dataclasses.dataclass(frozen=True)
class Ran:
    seconds: float  # wall
    cpu_s: float  # user + system of the command and the children it waited for (pg_restore)
    stdout: str


def cli(app: App, *args: str) -> Ran:
    """One ``safehold`` command, timed. The CPU it used is less disturbed by the other work on
    this host than the wall time: it tells extra work from waiting for a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = _timed.run([str(SAFEHOLD_CLI), *args], env=app.env, cwd=app.repo.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Ran(done.seconds, cpu, done.stdout)


def cli_env(server: PgTarget, repo: Path, docker_host: str) -> dict[str, str]:
    """What an operator sets: the seed's names, the password in PGPASSWORD, the engine."""
    drop = ("DB_", "PG", "SAFEHOLD_", "DOCKER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        BACKUP_DIR=str(repo),
        DB_HOST=server.host,
        DB_PORT=str(server.port),
        DB_NAME=DB,
        DB_USER=server.user,
        PGPASSWORD=server.password or "",
        DOCKER_HOST=docker_host,
    )
    env.pop("LOG_FILE", None)
    return env


def build_app(
    server: PgTarget, client: docker.DockerClient, engine_url: str, work: Path, args: Any
) -> App:
    clock = time.monotonic()
    log(f"building {DB} (~{args.db_mb} MB)")
    _dataset.build_real(server, DB, args.db_mb * MB, log)
    log(f"built {DB}: {_dataset.database_size(server, DB) / MB:.0f} MB in "
        f"{time.monotonic() - clock:.0f}s")  # fmt: skip
    image = ensure_busybox_image(client)
    volumes: dict[str, Path] = {}
    for spec in args.volumes.split(","):
        name, _, size = spec.partition(":")
        made = client.volumes.create(name=name, labels={"com.docker.compose.project": PROJECT})
        root = Path(str(made.attrs["Mountpoint"]))
        tree = cached_tree(int(size or 100))
        subprocess.run(["cp", "-a", f"{tree}/.", f"{root}/"], check=True)
        volumes[name] = root
    first = next(iter(volumes))
    (volumes[first] / "www").mkdir()
    (volumes[first] / "www" / "health.txt").write_text("ok\n")
    port = free_port()
    # As PID 1 a shell ignores SIGTERM: trap it, or every stop waits for the kill.
    scripts = {
        f"{PROJECT}-web": f"httpd -f -p 127.0.0.1:{port} -h /data/www & wait",
        f"{PROJECT}-worker": "sleep 100000 & wait",
    }
    containers = []
    for (name, script), volume in zip(scripts.items(), volumes, strict=False):
        client.containers.run(
            image,
            ["sh", "-c", f"trap 'kill $!; exit 0' TERM; {script}"],
            name=name,
            labels={"com.docker.compose.project": PROJECT},
            volumes={volume: {"bind": "/data"}},
            network_mode="host",
            detach=True,
        )
        containers.append(name)
    repo = work / "backups"
    app = App(
        server, client, cli_env(server, repo, engine_url), repo, volumes, containers,
        f"http://127.0.0.1:{port}/health.txt",
    )  # fmt: skip
    wait_healthy(app)
    return app


def wait_healthy(app: App) -> None:
    deadline = time.monotonic() + 60
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(app.health_url, timeout=2) as answer,  # noqa: S310
        ):
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{app.health_url} did not answer 200")
        time.sleep(0.1)


def back_up(app: App) -> None:
    argv = ["backup", "--all", "--json"]
    for name in app.volumes:
        argv += ["--volume", name]
    made = cli(app, *argv)
    report = json.loads(made.stdout)
    app.set_id = report["id"]
    for member in report["members"]:
        name = member if isinstance(member, str) else member["artifact"]
        if name.startswith("db_backup_"):
            app.members[DB] = name
        for volume in app.volumes:
            if name.startswith(f"volume_{volume}_"):
                app.members[volume] = name
    with connect(app.server.with_db(DB), autocommit=True) as conn:
        app.rows = count_rows(conn)
    app.digests = {name: tree_digest(root) for name, root in app.volumes.items()}
    size = sum((app.repo / n).stat().st_size for n in app.members.values())
    log(f"set {app.set_id} in {made.seconds:.1f}s: {size / MB:.0f} MB, {app.members}")


def damage(app: App) -> None:
    """The disaster, off the clock: rows gone, files changed, added and removed."""
    with connect(app.server.with_db(DB), autocommit=True) as conn:
        conn.execute("DELETE FROM words WHERE id % 2 = 0")
        conn.execute("DELETE FROM audit_log WHERE ctid IN (SELECT ctid FROM audit_log LIMIT 1000)")
    for root in app.volumes.values():
        (root / "junk.tmp").write_bytes(os.urandom(4096))
        victim = next(p for p in sorted(root.rglob("*.json")) if p.is_file())
        victim.write_text("corrupted")
        if (root / "conf").is_dir():
            shutil.rmtree(root / "conf")


def check_restored(app: App, label: str) -> None:
    """Off the clock: every table's rows and every volume's tree are the backup's again."""
    with connect(app.server.with_db(DB), autocommit=True) as conn:
        rows = count_rows(conn)
    if rows != app.rows:
        raise RuntimeError(f"{label}: rows {rows} differ from the backup's {app.rows}")
    for name, root in app.volumes.items():
        if tree_digest(root) != app.digests[name]:
            raise RuntimeError(f"{label}: volume {name} does not hold the backup's tree")


def tidy(app: App) -> None:
    """Off the clock: drop the replaced databases and the safety copies the restore left."""
    with connect(app.server, "postgres", autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{DB}_pre_restore_%",)
        ).fetchall()]  # fmt: skip
        for name in names:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    for path in [*app.repo.glob("safety_*"), *(app.repo / ".safehold").rglob("safety_*")]:
        path.unlink()


def settle(app: App) -> None:
    with connect(app.server, "postgres", autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


def run_all(app: App) -> dict[str, Any]:
    done = cli(
        app, "restore", "--all", "--set", app.set_id, "--project", PROJECT,
        "--health-url", app.health_url, "--health-timeout", "60", "--json",
    )  # fmt: skip
    report = json.loads(done.stdout)
    steps = {_step_label(s): s["seconds"] for s in report["timings_s"]}
    stop = sum(s["seconds"] for s in report["timings_s"] if s["kind"] == "stop")
    return {"seconds": done.seconds, "stop_s": stop, "excl_stop_s": done.seconds - stop,
            "steps": steps, "total_s": report["total_s"], "cpu_s": done.cpu_s}  # fmt: skip


def _step_label(step: dict[str, Any]) -> str:
    label = f"{step['step']}. {step['kind']}"
    if step["kind"] == "volume":  # "restore volume NAME from ARTIFACT"
        label += " " + str(step["title"]).split()[2]
    return label


def run_parts(app: App) -> dict[str, Any]:
    for name in app.containers:  # stopping is not what is compared: off the clock
        app.client.containers.get(name).stop(timeout=10)
    try:
        ran = {"database": cli(app, "restore", "--database", app.members[DB])}
        for volume in app.volumes:
            spec = f"{volume}:{app.members[volume]}"
            ran[f"volume {volume}"] = cli(app, "restore", "--volume", spec)
    finally:
        for name in app.containers:
            app.client.containers.get(name).start()
        wait_healthy(app)
    parts = {key: r.seconds for key, r in ran.items()}
    cpu = sum(r.cpu_s for r in ran.values())
    return {"seconds": sum(parts.values()), "parts": parts, "cpu_s": cpu}


def measure(app: App, repeat: int) -> dict[str, list[dict[str, Any]]]:
    methods = {"all": run_all, "parts": run_parts}
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in methods}
    for rep in range(repeat):
        order = list(methods)[rep % 2 :] + list(methods)[: rep % 2]
        for key in order:
            damage(app)
            settle(app)
            sample = methods[key](app)
            check_restored(app, f"{key} #{rep + 1}")
            tidy(app)
            runs[key].append(sample)
            detail = sample.get("steps") or sample["parts"]
            shown = ", ".join(f"{k} {v:.2f}" for k, v in detail.items())
            cpu = sample["cpu_s"]
            log(f"rep {rep + 1} {key:5s} {sample['seconds']:7.2f} s, CPU {cpu:6.2f} s  ({shown})")
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    all_runs, parts = runs["all"], runs["parts"]
    steps = {k: med([r["steps"][k] for r in all_runs]) for k in all_runs[0]["steps"]}
    part_keys = parts[0]["parts"]
    summary = {
        "all_s": med([r["seconds"] for r in all_runs]),
        "all_excl_stop_s": med([r["excl_stop_s"] for r in all_runs]),
        "stop_s": med([r["stop_s"] for r in all_runs]),
        "steps_s": steps,
        "parts_s": {k: med([r["parts"][k] for r in parts]) for k in part_keys},
        "parts_sum_s": med([r["seconds"] for r in parts]),
    }
    all_cpu, parts_cpu = med([r["cpu_s"] for r in all_runs]), med([r["cpu_s"] for r in parts])
    ratio = med([r["excl_stop_s"] for r in all_runs]) / med([r["seconds"] for r in parts])
    summary["all_cpu_s"], summary["parts_cpu_s"] = all_cpu, parts_cpu
    summary["ratio"] = ratio
    summary["ratio_cpu"] = all_cpu / parts_cpu
    summary["ratio_with_stop"] = med([r["seconds"] for r in all_runs]) / med(
        [r["seconds"] for r in parts]
    )
    summary["pass"] = ratio <= LIMIT
    return summary


def render(summary: dict[str, Any], runs: dict[str, list[dict[str, Any]]], title: str) -> str:
    def row(label: str, values: list[float], median: float) -> str:
        spread = f"{min(values):8.2f} {max(values):8.2f}"
        return f"  {label:<58} {median:9.2f} {spread}"

    lines = [title, "", f"  {'':<58} {'median s':>9} {'min s':>8} {'max s':>8}"]
    a, p = runs["all"], runs["parts"]
    lines.append(row("restore --all (whole, wall)", [r["seconds"] for r in a], summary["all_s"]))
    lines.append(row("restore --all minus its stop step", [r["excl_stop_s"] for r in a],
                     summary["all_excl_stop_s"]))  # fmt: skip
    for key, median in summary["steps_s"].items():
        lines.append(row(f"  step {key}", [r["steps"][key] for r in a], median))
    lines.append(row("sum of the parts (separate commands)", [r["seconds"] for r in p],
                     summary["parts_sum_s"]))  # fmt: skip
    for key, median in summary["parts_s"].items():
        lines.append(row(f"  restore --{key.replace(' ', ' ')}", [r["parts"][key] for r in p],
                         median))  # fmt: skip
    verdict = "PASS" if summary["pass"] else "FAIL"
    lines += [
        "",
        f"  {'restore --all (excluding stop) / sum of restores':<58} {summary['ratio']:9.3f}"
        f"  <= {LIMIT}  {verdict}",
        f"  {'[info] restore --all (whole) / sum of restores':<58} "
        f"{summary['ratio_with_stop']:9.3f}",
        f"  {'[info] CPU s (user+sys, incl. pg_restore): --all / parts':<58} "
        f"{summary['ratio_cpu']:9.3f}  ({summary['all_cpu_s']:.2f} / {summary['parts_cpu_s']:.2f})",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_system_restore")
    parser.add_argument("--db-mb", type=int, default=300, help="bench_app size (MB, 1e6)")
    parser.add_argument("--volumes", default="app-data:100,user-data:200",
                        help="NAME:MB,... (each a mixed tree of that size)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="repetitions; medians reported")
    parser.add_argument("--quick", action="store_true", help="30 MB db, 2x10 MB volumes, 1 rep")
    args = parser.parse_args(argv)
    if args.quick:
        args.db_mb, args.volumes, args.repeat = 30, "app-data:10,user-data:10", 1
    return args


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not _timed.have_gnu_time():
        raise SystemExit("needs GNU time at /usr/bin/time (apt-get install time)")
    signal.signal(signal.SIGTERM, _exit_on_signal)
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    cluster = SandboxCluster()
    work = Path(tempfile.mkdtemp(prefix="bench-system-restore-"))
    try:
        server = cluster.start()
        with connect(server, "postgres", autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET autovacuum = off")  # as bench_database: no stray work
            conn.execute("SELECT pg_reload_conf()")
        with SandboxDockerd() as engine, contextlib.closing(engine.client()) as client:
            app = build_app(server, client, engine.base_url, work, args)
            try:
                back_up(app)
                trees = {n: tree_stats(r).to_json() for n, r in app.volumes.items()}
                log(f"volumes: {trees}; measuring, repeat {args.repeat}")
                runs = measure(app, args.repeat)
            finally:
                for name in app.containers:
                    client.containers.get(name).remove(force=True)
                for name in app.volumes:
                    client.volumes.get(name).remove(force=True)
            db_size = _dataset.database_size(server, DB)
    finally:
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    summary = summarize(runs)
    title = (
        f"=== restore --all of the sample app: {DB} {db_size / MB:.0f} MB, volumes "
        f"{args.volumes} (MB) | {CORES} cores, load {load_start[0]:.2f} -> {load_end[0]:.2f} "
        f"(1-min) | medians of {args.repeat}, CLI wall times"
    )
    text = render(summary, runs, title)
    print("\n" + text + "\n", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"system-restore-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    report = {
        "started_utc": started.isoformat(),
        "safehold": __version__,
        "cores": CORES,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "args": vars(args),
        "database_bytes": db_size,
        "volume_trees": trees,
        "set": app.set_id,
        "members": app.members,
        "summary": summary,
        "runs": runs,
        "text": text,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results written to {path.relative_to(ROOT)}")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
