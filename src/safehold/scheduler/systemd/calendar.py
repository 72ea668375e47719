"""Cron expressions as systemd calendar events (``OnCalendar=``).

croniter reads the five fields (names, lists, ranges, steps, 7 = Sunday, the @-macros) into
the sets of values each field allows; each set is written back in systemd's syntax, in the
form ``systemd-analyze calendar`` calls normalized (``00/15``, ``01..05``, ``Mon..Fri``).

The day fields need care. Cron (Debian's, Vixie's) fires on a day when the day-of-month *or*
the day-of-week matches if both are restricted (neither starts with ``*``), and when both
match otherwise; systemd always wants both. An "or" becomes two ``OnCalendar=`` lines (a timer
fires at the union of its lines). croniter, which the daemon and ``schedule show`` use, decides
"or" by the values instead (``*/2`` is restricted, ``1-31/1`` is not): where the two readings
differ the expression is refused, since the crontab, the daemon and the timer would not agree.
An expression that never fires (``0 2 30 2 *``) is refused too: systemd would accept the timer
and never start it.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo

from croniter import croniter

from ...errors import ConfigError

MACROS = {  # cron's meaning; systemd's own "weekly" is Monday, cron's @weekly Sunday
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (lowest, highest) of minute, hour, day of month, month; day of week is done by name.
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12))
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # systemd's order, Monday first
_HINT = (
    "write the day of month or the day of week as '*' (both restricted means either one, as "
    "'0 2 1 * 1' is the 1st and every Monday), or spell both as plain lists ('1,15', '1-5')"
)


def on_calendar(expression: str, job: str = "") -> tuple[str, ...]:
    """The ``OnCalendar=`` values that fire exactly when cron runs ``expression`` (local time,
    as cron). A ``ConfigError`` for what a timer cannot express faithfully."""
    what = f"the {job} job's schedule {expression!r}" if job else repr(expression)
    fields = MACROS.get(expression.strip().lower(), expression).split()
    if len(fields) != 5:
        raise ConfigError(
            f"{what} is not a five-field cron expression",
            hint="minute hour day-of-month month day-of-week, e.g. '0 2 * * *'",
        )
    try:
        expanded, nth = croniter.expand(" ".join(fields))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{what} is not a cron expression: {exc}", hint=_HINT) from None
    if nth:  # '5#3': not cron's syntax, and check_expression refuses it before this
        raise ConfigError(f"{what}: 'DAY#N' is not cron syntax", hint="use '5 * 15-21 *'")
    minutes, hours, days, months = (_values(v, b) for v, b in zip(expanded, _BOUNDS, strict=False))
    weekdays = _values(expanded[4], (0, 6))
    cron_either = not fields[2].startswith("*") and not fields[4].startswith("*")
    croniter_either = expanded[2] != ["*"] and expanded[4] != ["*"]
    if cron_either != croniter_either:
        raise ConfigError(
            f"{what} is ambiguous: cron reads its two day fields as "
            f"{'either' if cron_either else 'both'} must match, safehold's daemon and "
            f"'schedule show' as {'either' if croniter_either else 'both'}",
            hint=_HINT,
        )
    if not _fires(days, months, weekdays, either=cron_either):
        raise ConfigError(
            f"{what} never fires: no month has that day",
            hint="a timer with it would never start; choose a day every chosen month has "
            "(1-28, or 1-30 without February)",
        )
    clock = f"{_field(hours, _BOUNDS[1])}:{_field(minutes, _BOUNDS[0])}:00"
    month = _field(months, _BOUNDS[3])
    all_days, all_weekdays = _full(days, _BOUNDS[2]), len(weekdays) == 7
    if cron_either and not (all_days or all_weekdays):
        # Either day field may match: one line per field, the other left open.
        return (
            f"*-{month}-{_field(days, _BOUNDS[2])} {clock}",
            f"{_weekdays(weekdays)} *-{month}-* {clock}",
        )
    if cron_either:  # one of them matches every day: so does the union
        return (f"*-{month}-* {clock}",)
    prefix = "" if all_weekdays else _weekdays(weekdays) + " "
    return (f"{prefix}*-{month}-{_field(days, _BOUNDS[2])} {clock}",)


def skipped_days(expression: str, zone: tzinfo, start: datetime, days: int = 400) -> list[date]:
    """The days (from ``start``, for ``days``) on which ``expression`` fires at a local time the
    clock skips (the hour daylight saving time jumps over) and not again within the hour after
    the jump. systemd's timer skips that run (252 moves on to the next time that exists: a
    daily job runs the next day); Debian's cron runs it right after the jump. Nothing else
    differs: in the repeated hour both run once."""
    found: list[date] = []
    first = start.astimezone(zone).date()
    for offset in range(days):
        day = first + timedelta(days=offset)
        midnight = datetime(day.year, day.month, day.day)
        ends = (midnight + timedelta(days=1)).replace(tzinfo=zone)
        if midnight.replace(tzinfo=zone).utcoffset() == ends.utcoffset():
            continue  # no change of offset that day
        walls = [midnight + timedelta(minutes=minute) for minute in range(24 * 60)]
        gap = [wall for wall in walls if not _exists(wall, zone)]
        if not any(croniter.match(expression, wall) for wall in gap):
            continue
        after = [gap[-1] + timedelta(minutes=n) for n in range(1, 61)]
        if not any(croniter.match(expression, wall) for wall in after):
            found.append(day)
    return found


def _exists(wall: datetime, zone: tzinfo) -> bool:
    """Whether the clock shows ``wall`` (naive, local) at all: a skipped time comes back from
    UTC as another."""
    return wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall


def _values(raw: Sequence[int | str], bounds: tuple[int, int]) -> list[int]:
    low, high = bounds
    if list(raw) == ["*"]:
        return list(range(low, high + 1))
    # croniter gives Sunday as 0 (7 folded into it); systemd's week starts on Monday.
    return sorted({int(v) for v in raw})


def _full(values: list[int], bounds: tuple[int, int]) -> bool:
    return values == list(range(bounds[0], bounds[1] + 1))


def _fires(days: list[int], months: list[int], weekdays: list[int], *, either: bool) -> bool:
    if either and weekdays:
        return True  # every month has each weekday
    # Year 2000 is a leap year: 29 February counts (it comes every four years, as in cron).
    return any(day <= calendar.monthrange(2000, month)[1] for month in months for day in days)


def _field(values: list[int], bounds: tuple[int, int]) -> str:
    """``*``, ``00/15`` (a step to the end of the field), ``01..10/3``, or a list of values
    and ``a..b`` runs: two digits each, as systemd normalizes them."""
    if _full(values, bounds):
        return "*"
    if len(values) >= 3:
        step = values[1] - values[0]
        if step > 1 and values == list(range(values[0], values[-1] + 1, step)):
            if values[-1] + step > bounds[1]:
                return f"{values[0]:02d}/{step}"
            return f"{values[0]:02d}..{values[-1]:02d}/{step}"
    return ",".join(
        f"{a:02d}" if a == b else f"{a:02d},{b:02d}" if b == a + 1 else f"{a:02d}..{b:02d}"
        for a, b in _runs(values)
    )


def _weekdays(cron_days: list[int]) -> str:
    """Cron's 0-6 (Sunday 0) as systemd's names, runs of three or more as ``Mon..Fri``."""
    order = sorted((day + 6) % 7 for day in cron_days)  # Monday 0 ... Sunday 6
    parts = []
    for a, b in _runs(order):
        if b - a >= 2:
            parts.append(f"{_DAYS[a]}..{_DAYS[b]}")
        else:
            parts.extend(_DAYS[day] for day in range(a, b + 1))
    return ",".join(parts)


def _runs(values: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs
