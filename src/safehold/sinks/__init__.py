"""Where operation events go: log lines, log files, progress bars. Operations never print."""

from .log import LogSink, fan_out
from .progress import ProgressSink

__all__ = ["LogSink", "ProgressSink", "fan_out"]
