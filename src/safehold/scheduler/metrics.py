"""The daemon's Prometheus endpoint: the status metrics (``safehold status --metrics-file``'s,
read afresh from the repository on every scrape) and the daemon's own job metrics."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ..config import Settings
from ..model import Event, EventSink
from ..operations.report.metrics import registry_for
from ..operations.report.status import read_status
from ..storage import LocalStorage
from .daemon import JobRun


class JobMetrics:
    """``safehold_job_*{job}``: updated by the loop (``Observer``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, text: str) -> Gauge:
            return Gauge(f"safehold_job_{name}", text, ("job",), registry=registry)

        self.last_run = gauge("last_run_timestamp_seconds", "when the job's last run started")
        self.exit_code = gauge("last_exit_code", "exit code of the job's last run (0 = ok)")
        self.duration = gauge("duration_seconds", "how long the job's last run took")
        self.next_run = gauge("next_run_timestamp_seconds", "when the job runs next")

    def scheduled(self, job: str, due: datetime) -> None:
        self.next_run.labels(job).set(due.timestamp())

    def finished(self, run: JobRun) -> None:
        self.last_run.labels(run.job).set(run.started.timestamp())
        self.exit_code.labels(run.job).set(run.outcome.exit_code)
        self.duration.labels(run.job).set(run.duration_s)


class StatusCollector:
    """The status reading, taken when Prometheus scrapes. ``safehold_status_read_ok`` is 0 when
    the repository could not be read (the reason is logged once per distinct error)."""

    def __init__(self, settings: Settings, log: EventSink) -> None:
        self._settings, self._log, self._last_error = settings, log, ""

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily(
            "safehold_status_read_ok", "1 when the status reading of this scrape succeeded"
        )
        families: Iterable[Metric] = ()
        try:
            s = self._settings
            report = read_status(
                LocalStorage(s.backup_dir),
                now=datetime.now(UTC),
                objectives=s.objectives_s(),
                database=s.required_databases(),
                volumes=s.volumes.names(),
                wal_stall_s=s.objectives.wal_stall_minutes * 60,
            )
            families = list(registry_for(report).collect())
            ok.add_metric([], 1)
            self._last_error = ""
        except Exception as exc:  # a scrape must answer; the job metrics are still good
            why = f"{type(exc).__name__}: {exc}"
            if why != self._last_error:
                self._last_error = why
                self._log(Event("metrics", f"cannot read the status: {why}", "warning"))
            ok.add_metric([], 0)
        yield from families
        yield ok


class MetricsServer:
    """prometheus_client's HTTP server (``/metrics``) on its own thread; ``close`` stops it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None
        self._registry, self.host, self.port = registry, host, port

    def start(self) -> MetricsServer:
        self._server, self._thread = start_http_server(self.port, self.host, self._registry)
        self.port = int(self._server.server_port)  # the real one when 0 was asked for
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
