"""The schedule as systemd timers: each job a ``safehold-<job>.service`` (a hardened oneshot
running the commands of the job's crontab line) and a ``safehold-<job>.timer`` (its cron
expression as ``OnCalendar=``). ``calendar`` translates cron expressions, ``units`` writes the
unit files, ``unitdir`` installs and removes them in a unit folder, ``show`` reports them."""

from .calendar import on_calendar
from .show import describe_units, render_units
from .unitdir import UnitChange, UnitDir, default_dir, install_units, remove_units
from .units import UnitFile, unit_files, writable_paths

__all__ = [
    "UnitChange",
    "UnitDir",
    "UnitFile",
    "default_dir",
    "describe_units",
    "install_units",
    "on_calendar",
    "remove_units",
    "render_units",
    "unit_files",
    "writable_paths",
]
