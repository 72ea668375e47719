"""The JSON the commands print, and the one format of a time in it: RFC 3339 in UTC with a ``Z``.

The records behind ``--json`` are also file formats (drill records, journal entries, base
backup records, pins) written with ``isoformat()`` long before this rule, so they are not
rewritten on disk; instead every document passes through ``dumps`` on its way to stdout, which
turns datetimes, and strings that are a time with a zone, into ``2026-12-06T02:00:00Z``.
A string already in that form is left exactly as it is (manifests keep their milliseconds).
A time without a zone is left alone too: it is not known to be UTC, and guessing would be
worse than the test that finds it (``tests/test_json_times.py``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

# A whole string that is a date and time with a zone offset (what isoformat() of an aware
# datetime gives, with "T" or a space): a time, whatever its key is called.
_ZONED = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII
)
UTC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", re.ASCII)


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC with a ``Z``: whole seconds, or milliseconds when it has a fraction
    (a measured start or end; a scheduled time or a file stamp has none)."""
    if moment.tzinfo is None:
        return moment.isoformat()  # not known to be UTC: left for the test to catch
    utc = moment.astimezone(UTC)
    spec = "milliseconds" if utc.microsecond else "seconds"
    return utc.isoformat(timespec=spec).replace("+00:00", "Z")


def json_ready(value: Any) -> Any:
    """``value`` with every time in it in RFC 3339 UTC (dicts, lists and tuples walked)."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, str):
        if _ZONED.fullmatch(value) and not UTC_TIME.fullmatch(value):
            return rfc3339(datetime.fromisoformat(value))
        return value
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def dumps(data: Any, *, sort_keys: bool = True) -> str:
    """The text of a ``--json`` document (anything else a record holds, such as a path, as
    its string)."""
    return json.dumps(json_ready(data), indent=2, sort_keys=sort_keys, default=str)
