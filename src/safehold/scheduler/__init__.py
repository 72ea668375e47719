"""Schedules: the job list from settings (``jobs``), how a job calls safehold (``invocation``),
the crontab (``crontab``) and the foreground daemon with its metrics (``daemon``, ``metrics``)."""

from .crontab import CrontabRef, cron_line, install, ours, remove
from .daemon import DaemonLog, JobRun, Outcome, Stop, SubprocessRunner, SystemClock, run_loop
from .invocation import Invocation, invocation
from .jobs import Job, NotScheduled, Schedule, local_zone, next_runs, plan
from .metrics import JobMetrics, MetricsServer, StatusCollector

__all__ = [
    "CrontabRef",
    "DaemonLog",
    "Invocation",
    "Job",
    "JobMetrics",
    "JobRun",
    "MetricsServer",
    "NotScheduled",
    "Outcome",
    "Schedule",
    "StatusCollector",
    "Stop",
    "SubprocessRunner",
    "SystemClock",
    "cron_line",
    "install",
    "invocation",
    "local_zone",
    "next_runs",
    "ours",
    "plan",
    "remove",
    "run_loop",
]
