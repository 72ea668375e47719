"""Stopping an application's containers: safehold against ``docker compose down``.

Run from the project root (as root: it starts a private Docker engine)::

    .venv/bin/python -m bench.bench_container_stops [--sizes 5,10] [--repeat 3]

On a private engine (``safehold.sandbox.SandboxDockerd``), a compose project of N busybox
services that ignore SIGTERM (``trap '' TERM``: every stop costs its whole timeout, the worst
case) in three levels of ``depends_on``: service i is at level i % 3; a level-1 service depends
on every level-0 one, a level-2 service on every level-1 one. Both tools must therefore stop
level 2, then 1, then 0: three stop timeouts of 10 s (the default of both).

The project is made by ``docker-compose up -d`` (v1, Debian's package; ``docker compose`` v2 when
that is installed instead). Compose v1 does not put the ``com.docker.compose.depends_on`` label
on its containers as v2 does, so the compose file sets it: safehold reads the same graph compose
follows. Each repetition, on the running project:

- safehold stop: ``engine.Downtime.stop`` on the project's containers, with a journal in a
  scratch repository (the code path of ``restore --all`` and ``backup --all``; in-process, so
  no Python start-up), then ``Downtime.start`` (timed too);
- ``docker-compose stop``, then ``start`` (untimed);
- ``docker-compose down`` (stops and removes; the target's baseline), then ``up -d`` again.

Compose's times include its CLI start-up; ``docker-compose ps`` on the project is timed as well
to show that fixed cost. Without any compose, the baseline is ``docker stop -t 10`` of every
container (parallel, as compose does, but blind to ``depends_on``), the containers are made by
the SDK without dependencies, and the output says so. Target: safehold stop / compose down <= 1.0
(medians). Results go to bench/results/container-stops-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from safehold.operations.volumes.downtime import Downtime
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sandbox.images import ensure_busybox_image
from safehold.sources.docker.engine import STOP_TIMEOUT_S
from safehold.sources.docker.stops import (
    COMPOSE_DEPENDS_ON,
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
)
from safehold.storage import LocalStorage

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STUBBORN = "trap '' TERM; while :; do sleep 1; done"
LEVELS = 3
IMAGE_TAG = "safehold-busybox:latest"
LIMIT = 1.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def compose_command() -> list[str] | None:
    """``docker compose`` (v2) or ``docker-compose`` (v1), whichever works; None: neither."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        done = subprocess.run([*argv, "version"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return argv
    return None


def graph(size: int) -> dict[str, list[str]]:
    """Service name -> the services it depends on (see the module doc)."""
    names = [f"svc{i:02d}" for i in range(size)]
    return {
        name: [other for j, other in enumerate(names) if j % LEVELS == i % LEVELS - 1]
        for i, name in enumerate(names)
    }


def compose_file(services: dict[str, list[str]], image: str) -> str:
    # JSON is YAML: no YAML writer needed.
    spec: dict[str, Any] = {"version": "2.4", "services": {}}
    for name, needs in services.items():
        spec["services"][name] = {
            "image": image,
            "command": ["sh", "-c", STUBBORN],
            "network_mode": "none",
            "labels": {COMPOSE_DEPENDS_ON: ",".join(f"{n}:service_started:false" for n in needs)},
            **({"depends_on": needs} if needs else {}),
        }
    return json.dumps(spec, indent=2)


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return seconds


class Project:
    """One project of ``size`` services on the engine, made and stopped by compose or, without
    one, by the SDK and ``docker stop``."""

    def __init__(
        self,
        client: docker.DockerClient,
        compose: list[str] | None,
        base_url: str,
        work: Path,
        size: int,
    ) -> None:
        self.client, self.compose, self.size = client, compose, size
        self.name = f"stops{size}"
        self.services = graph(size) if compose else {f"svc{i:02d}": [] for i in range(size)}
        self.dir = work / self.name
        self.dir.mkdir()
        (self.dir / "docker-compose.yml").write_text(compose_file(self.services, IMAGE_TAG))
        self.env = {**os.environ, "DOCKER_HOST": base_url, "COMPOSE_PROJECT_NAME": self.name}
        self.repo = LocalStorage(work / f"repo-{self.name}")

    def cli(self, *args: str) -> float:
        assert self.compose is not None
        return timed([*self.compose, "-p", self.name, *args], self.env, self.dir)

    def up(self) -> None:
        if self.compose:
            self.cli("up", "-d")
        else:
            for name in self.services:
                self.client.containers.run(
                    IMAGE_TAG,
                    ["sh", "-c", STUBBORN],
                    name=f"{self.name}-{name}-1",
                    labels={COMPOSE_PROJECT: self.name, COMPOSE_SERVICE: name},
                    network_mode="none",
                    detach=True,
                )
        self.expect("running")

    def containers(self) -> list[Any]:
        label = f"{COMPOSE_PROJECT}={self.name}"
        return list(self.client.containers.list(all=True, filters={"label": label}))

    def expect(self, status: str) -> None:
        states = {str(c.name): str(c.status) for c in self.containers()}
        if len(states) != self.size or set(states.values()) != {status}:
            raise SystemExit(f"expected {self.size} containers {status}: {states}")

    def safehold(self) -> tuple[float, float]:
        downtime = Downtime(lambda _event: None, f"benchmark of {self.name}", self.repo)
        running = self.containers()
        began = time.perf_counter()
        downtime.stop(running)
        stop_s = time.perf_counter() - began
        self.expect("exited")
        began = time.perf_counter()
        downtime.start()
        start_s = time.perf_counter() - began
        self.expect("running")
        return stop_s, start_s

    def baseline_stop(self) -> float:
        """``compose stop`` (then started again, untimed); without compose: nothing."""
        if not self.compose:
            return float("nan")
        seconds = self.cli("stop")
        self.expect("exited")
        self.cli("start")
        self.expect("running")
        return seconds

    def down(self) -> float:
        if self.compose:
            return self.cli("down")
        ids = [str(c.id) for c in self.containers()]
        seconds = timed(["docker", "stop", "-t", str(STOP_TIMEOUT_S), *ids], self.env, self.dir)
        for container in self.containers():
            container.remove(force=True)
        return seconds

    def fixed_cost(self) -> float:
        return self.cli("ps") if self.compose else float("nan")

    def remove(self) -> None:
        for container in self.containers():
            container.remove(force=True)


def measure(project: Project, repeat: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {
        "safehold_stop": [],
        "safehold_start": [],
        "compose_stop": [],
        "compose_down": [],
        "compose_cli_fixed": [],
    }
    for number in range(1, repeat + 1):
        project.up()
        stop_s, start_s = project.safehold()
        runs["safehold_stop"].append(stop_s)
        runs["safehold_start"].append(start_s)
        runs["compose_cli_fixed"].append(project.fixed_cost())
        runs["compose_stop"].append(project.baseline_stop())
        runs["compose_down"].append(project.down())
        log(
            f"{project.size} containers, run {number}: safehold stop {stop_s:.2f}s "
            f"(start {start_s:.2f}s), compose stop {runs['compose_stop'][-1]:.2f}s, "
            f"down {runs['compose_down'][-1]:.2f}s"
        )
    medians = {key: statistics.median(values) for key, values in runs.items()}
    ratio = medians["safehold_stop"] / medians["compose_down"]
    return {"runs": runs, "medians": medians, "ratio": ratio, "passed": ratio <= LIMIT}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_container_stops", description=__doc__
    )
    parser.add_argument("--sizes", default="5,10", help="containers per project (5,10)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    compose = compose_command()
    if compose is None:
        baseline = f"docker stop -t {STOP_TIMEOUT_S} <all> (no compose installed; no depends_on)"
    else:
        baseline = " ".join(compose) + " down"
    version = (
        subprocess.run([*compose, "version"], capture_output=True, text=True, check=False)
        .stdout.strip()
        .splitlines()[0]
        if compose
        else "none"
    )
    log(f"baseline: {baseline} ({version}); safehold stop timeout {STOP_TIMEOUT_S}s")
    results: dict[str, Any] = {}
    with (
        SandboxDockerd() as engine,
        contextlib.closing(engine.client()) as client,
        tempfile.TemporaryDirectory(prefix="safehold-bench-stops-") as scratch,
    ):
        ensure_busybox_image(client, IMAGE_TAG)
        for size in sizes:
            project = Project(client, compose, engine.base_url, Path(scratch), size)
            try:
                results[str(size)] = measure(project, args.repeat)
            finally:
                project.remove()
            results[str(size)]["levels"] = LEVELS if compose else 1
    print(table(results, baseline))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"container-stops-{stamp}.json"
    record = {
        "when": stamp,
        "baseline": baseline,
        "compose_version": version,
        "stop_timeout_s": STOP_TIMEOUT_S,
        "repeat": args.repeat,
        "cores": len(os.sched_getaffinity(0)),
        "target": f"safehold stop / compose down <= {LIMIT}",
        "sizes": results,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    log(f"results in {path.relative_to(ROOT)}")
    return 0 if all(r["passed"] for r in results.values()) else 1


def table(results: dict[str, Any], baseline: str) -> str:
    lines = [
        f"baseline: {baseline}; medians of the runs, seconds",
        f"{'containers':>10} {'levels':>6} {'safehold stop':>13} {'safehold start':>14} "
        f"{'compose stop':>12} {'compose down':>12} {'compose ps':>10} {'stop/down':>9}  target",
    ]
    for size, r in results.items():
        m = r["medians"]
        verdict = "PASS" if r["passed"] else "FAIL"
        lines.append(
            f"{size:>10} {r['levels']:>6} {m['safehold_stop']:>13.2f} {m['safehold_start']:>14.2f} "
            f"{m['compose_stop']:>12.2f} {m['compose_down']:>12.2f} "
            f"{m['compose_cli_fixed']:>10.2f} {r['ratio']:>9.3f}  {verdict} (<= {LIMIT})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
