from __future__ import annotations

import contextlib
import os
import sys

import click
from prometheus_client import CollectorRegistry

from ..errors import UsageError
from ..model import Event
from ..scheduler import (
    DaemonLog,
    JobMetrics,
    MetricsServer,
    StatusCollector,
    Stop,
    SubprocessRunner,
    SystemClock,
    invocation,
    local_zone,
    plan,
    run_loop,
)
from ..scheduler.daemon import stop_on_signals
from ..scheduler.jobs import zone_name
from .flags import shared_options
from .runtime import runtime


@click.command("daemon")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="address the metrics server listens on (0.0.0.0: every interface)",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="seconds a running job gets to end after SIGTERM/SIGINT before it is killed",
)
@shared_options
@click.pass_context
def daemon_cmd(
    ctx: click.Context, metrics_port: int | None, metrics_host: str, stop_timeout: float
) -> None:
    """Run the schedule in the foreground, for containers without cron.

    The jobs of 'safehold schedule show', one at a time (never overlapping), each as a child
    'safehold' process; a failing job is logged with its exit code and the others go on. A job
    due while another ran runs once afterwards. SIGTERM or SIGINT stops the daemon: a running
    job is interrupted like Ctrl-C (it cleans up) and killed after --stop-timeout. With
    --metrics-port, Prometheus metrics: the status metrics, read on every scrape, and
    safehold_job_last_run_timestamp_seconds, _last_exit_code, _duration_seconds per job.
    """
    with runtime(ctx) as rt:
        schedule = plan(rt.settings)
        if not schedule.jobs:
            raise UsageError("nothing to schedule: every job is off", hint="see [schedule]")
        how, warnings = invocation(rt.settings, for_crontab=False)
        log = DaemonLog(rt.sink, sys.stderr)
        for warning in warnings:
            log(Event("daemon", warning, "warning"))
        registry = CollectorRegistry()
        metrics = JobMetrics(registry)
        stop = Stop()
        zone = local_zone()
        clock = SystemClock()
        with contextlib.ExitStack() as stack:
            if metrics_port is not None:
                registry.register(StatusCollector(rt.settings, log))
                server = MetricsServer(registry, metrics_host, metrics_port)
                try:
                    stack.enter_context(server)
                except OSError as exc:
                    raise UsageError(
                        f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror}",
                        hint="choose another --metrics-port / --metrics-host",
                    ) from None
                log(Event("daemon", f"metrics at {server.url}"))
            jobs = ", ".join(f"{job.name} ({job.expression})" for job in schedule.jobs)
            where = zone_name(zone, clock.now())
            log(Event("daemon", f"started (pid {os.getpid()}): {jobs}; times in {where}"))
            for skipped in schedule.not_scheduled:
                log(Event("daemon", f"{skipped.name} not scheduled: {skipped.reason}"))
            stack.enter_context(stop_on_signals(stop))
            run_loop(
                schedule.jobs,
                SubprocessRunner(how, log, stop_timeout),
                clock=clock,
                stop=stop,
                log=log,
                zone=zone,
                observer=metrics,
            )
