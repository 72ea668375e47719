"""The retention policy as tables: a pure function, fixed ``now``, years of backups."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from safehold.errors import UsageError
from safehold.model import Kind, Status
from safehold.retention import (
    REMOVE_OUTSIDE,
    Candidate,
    Decision,
    Policy,
    decide,
    iso_week,
    representatives,
)

NOW = datetime(2025, 1, 1, 0, 30, tzinfo=UTC)
ZERO = Policy(daily=0, weekly=0, monthly=0, yearly=0, keep_last=0)


def at(text: str) -> datetime:
    """'2024-12-31 23:30' in UTC."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def backup(
    when: datetime,
    *,
    target: str = "app",
    kind: Kind = "database",
    status: Status = "ok",
    pinned: bool = False,
    verified_ok: bool = False,
    set_id: str | None = None,
) -> Candidate:
    name = f"{kind}_{target}_{when.astimezone(UTC):%Y%m%d_%H%M%S}"
    return Candidate(name, kind, target, when, status, pinned, verified_ok, set_id)


def policy(**counts: int) -> Policy:
    values = {"daily": 0, "weekly": 0, "monthly": 0, "yearly": 0, "keep_last": 0, **counts}
    return Policy(**values)


def kept_times(decisions: list[Decision]) -> set[datetime]:
    return {d.candidate.created for d in decisions if d.keep}


def by_time(decisions: list[Decision]) -> dict[datetime, Decision]:
    return {d.candidate.created: d for d in decisions}


def three_years() -> list[Candidate]:
    """Daily at 02:00 UTC for 2022-2024, plus hourly backups on the last two days."""
    moments = set()
    day = date(2022, 1, 1)
    while day <= date(2024, 12, 31):
        moments.add(datetime(day.year, day.month, day.day, 2, tzinfo=UTC))
        day += timedelta(days=1)
    for hour in range(48):
        moments.add(datetime(2024, 12, 30, tzinfo=UTC) + timedelta(hours=hour))
    return [backup(moment) for moment in sorted(moments)]


def test_default_policy_over_three_years_keeps_exactly_the_representatives() -> None:
    backups = three_years()
    assert len(backups) == 1096 + 48 - 2
    decisions = decide(backups, Policy(), NOW)
    assert [d.candidate for d in decisions] == backups  # one decision each, in order given

    rules = Counter(r.split()[0] for d in decisions for r in d.reasons if d.keep)
    assert rules["daily"] == 30
    assert rules["weekly"] == 12
    assert rules["monthly"] == 12
    assert rules["yearly"] == 3  # yearly 7, but only three years have backups
    assert rules["keep-last"] == 1
    assert rules["newest"] == 1

    last = at("2024-12-31 23:00")
    daily = {at(f"2024-12-{d:02d} 02:00") for d in range(2, 30)} | {at("2024-12-30 23:00"), last}
    # ISO weeks: Dec 30-31 2024 are 2025-W01; earlier weeks are kept by their Sunday.
    sundays = {at("2024-12-29 02:00") - timedelta(weeks=w) for w in range(11)}
    weekly = {last} | sundays
    month_ends = [date(2024, m + 1, 1) - timedelta(days=1) for m in range(1, 12)]
    monthly = {last} | {datetime(d.year, d.month, d.day, 2, tzinfo=UTC) for d in month_ends}
    yearly = {last, at("2023-12-31 02:00"), at("2022-12-31 02:00")}
    assert kept_times(decisions) == daily | weekly | monthly | yearly
    assert len(kept_times(decisions)) == 30 + 7 + 11 + 2

    found = by_time(decisions)
    assert found[last].reasons == [
        "newest good backup",
        "keep-last 1",
        "daily 2024-12-31",
        "weekly 2025-W01",
        "monthly 2024-12",
        "yearly 2024",
    ]
    assert found[at("2023-12-31 02:00")].reasons == ["yearly 2023"]  # the newest of 2023
    assert found[at("2024-10-20 02:00")].reasons == ["weekly 2024-W42"]
    assert found[at("2024-11-30 02:00")].reasons == ["monthly 2024-11"]
    assert found[at("2024-12-31 22:00")].reasons == [REMOVE_OUTSIDE]  # hourly, not the newest
    assert found[at("2024-10-19 02:00")].keep is False
    assert found[at("2022-01-01 02:00")].keep is False


def test_windows_count_periods_that_have_backups_not_calendar_time() -> None:
    """Backups stopped a year ago: nothing more ages out as time passes."""
    backups = [backup(at(f"2024-01-{d:02d} 02:00")) for d in range(1, 21)]
    rules = policy(daily=7, keep_last=1)
    soon = decide(backups, rules, at("2024-01-21 00:00"))
    later = decide(backups, rules, at("2025-06-01 00:00"))
    assert (
        kept_times(soon)
        == kept_times(later)
        == {at(f"2024-01-{d:02d} 02:00") for d in range(14, 21)}
    )


def test_iso_week_edge_dec_31_belongs_to_week_1_of_the_next_year() -> None:
    assert iso_week(at("2024-12-31 12:00")) == "2025-W01"
    assert iso_week(at("2021-01-03 12:00")) == "2020-W53"
    backups = [
        backup(at("2024-12-23 02:00")),  # Mon, 2024-W52
        backup(at("2024-12-29 02:00")),  # Sun, 2024-W52
        backup(at("2024-12-30 02:00")),  # Mon, 2025-W01
        backup(at("2024-12-31 02:00")),  # Tue, 2025-W01
        backup(at("2025-01-01 00:10")),  # Wed, 2025-W01
    ]
    found = by_time(decide(backups, policy(weekly=2, yearly=2), NOW))
    assert found[at("2025-01-01 00:10")].reasons == [
        "newest good backup",
        "weekly 2025-W01",
        "yearly 2025",
    ]
    assert found[at("2024-12-29 02:00")].reasons == ["weekly 2024-W52"]
    # Calendar years are not ISO years: Dec 31 is the newest of 2024.
    assert found[at("2024-12-31 02:00")].reasons == ["yearly 2024"]
    assert not found[at("2024-12-30 02:00")].keep
    assert not found[at("2024-12-23 02:00")].keep


def test_month_and_year_boundaries_are_utc() -> None:
    plus_one = timezone(timedelta(hours=1))
    local = datetime(2024, 2, 1, 0, 45, tzinfo=plus_one)  # 2024-01-31 23:45 UTC
    backups = [
        backup(at("2023-12-31 23:30")),
        backup(at("2024-01-01 00:10")),
        backup(at("2024-01-31 23:30")),
        backup(local),
        backup(at("2024-02-01 00:15")),
    ]
    found = by_time(decide(backups, policy(monthly=3, yearly=2), NOW))
    assert found[local].reasons == ["monthly 2024-01"]
    assert found[at("2023-12-31 23:30")].reasons == ["monthly 2023-12", "yearly 2023"]
    assert found[at("2024-02-01 00:15")].reasons == [
        "newest good backup",
        "monthly 2024-02",
        "yearly 2024",
    ]
    assert not found[at("2024-01-31 23:30")].keep
    assert not found[at("2024-01-01 00:10")].keep


def test_keep_last_counts_good_backups_only() -> None:
    backups = [backup(at(f"2024-06-{d:02d} 02:00")) for d in range(1, 11)]
    backups[8] = backup(at("2024-06-09 02:00"), status="damaged")
    found = by_time(decide(backups, policy(keep_last=3), NOW))
    assert found[at("2024-06-10 02:00")].reasons == ["newest good backup", "keep-last 1"]
    assert found[at("2024-06-08 02:00")].reasons == ["keep-last 2"]
    assert found[at("2024-06-07 02:00")].reasons == ["keep-last 3"]
    assert found[at("2024-06-09 02:00")].reasons == ["remove: damaged, a newer good backup exists"]
    assert sum(d.keep for d in found.values()) == 3


def test_pinned_and_last_verified_copy_are_kept_outside_every_window() -> None:
    backups = [
        backup(at("2020-03-01 02:00"), pinned=True),
        backup(at("2021-03-01 02:00"), verified_ok=True),
        backup(at("2022-03-01 02:00"), verified_ok=True),
        backup(at("2023-03-01 02:00"), verified_ok=True, status="damaged"),
        backup(at("2024-03-01 02:00")),
        backup(at("2024-03-02 02:00")),
    ]
    found = by_time(decide(backups, policy(keep_last=1), NOW))
    assert found[at("2020-03-01 02:00")].reasons == ["pinned"]
    assert found[at("2022-03-01 02:00")].reasons == ["last verified copy"]
    assert not found[at("2021-03-01 02:00")].keep  # an older verified copy
    assert found[at("2023-03-01 02:00")].reasons == [
        "remove: damaged, a newer good backup exists"  # verified once, damaged now: no copy
    ]
    assert not found[at("2024-03-01 02:00")].keep


def test_a_kept_member_keeps_its_whole_set() -> None:
    backups = [
        # set s1: the only database backup (kept as the newest) and an old volume backup
        backup(at("2024-01-01 03:00"), target="db", set_id="20240101_030000"),
        backup(at("2024-01-01 03:00"), kind="volume", target="vol", set_id="20240101_030000"),
        # set s0: both members have newer backups and fall outside every window
        backup(at("2023-01-01 03:00"), kind="volume", target="vol", set_id="20230101_030000"),
        backup(at("2023-01-01 03:00"), kind="volume", target="other", set_id="20230101_030000"),
        backup(at("2024-05-01 03:00"), kind="volume", target="vol"),
        backup(at("2024-05-01 03:00"), kind="volume", target="other"),
    ]
    decisions = decide(backups, policy(keep_last=1), NOW)
    reasons = {(d.candidate.target, d.candidate.created.year): d.reasons for d in decisions}
    assert reasons[("db", 2024)] == ["newest good backup", "keep-last 1"]
    assert [d.keep for d in decisions] == [True, True, False, False, True, True]
    assert decisions[1].candidate.set_id == "20240101_030000"
    assert decisions[1].reasons == ["member of kept set 20240101_030000"]


def test_damaged_missing_and_foreign_backups() -> None:
    backups = [
        backup(at("2024-06-01 01:00")),
        backup(at("2024-06-01 03:00"), status="damaged"),  # newest of its day, not its rep
        backup(at("2024-06-01 04:00"), status="missing"),
        backup(at("2024-06-01 05:00"), status="unverified/foreign"),
        backup(at("2024-06-02 02:00")),
        backup(at("2024-06-03 02:00"), status="damaged"),  # newer than every good backup
    ]
    found = by_time(decide(backups, policy(daily=2), NOW))
    assert found[at("2024-06-01 01:00")].reasons == ["daily 2024-06-01"]
    assert found[at("2024-06-01 03:00")].reasons == ["remove: damaged, a newer good backup exists"]
    assert found[at("2024-06-01 04:00")].reasons == [
        "remove: file missing, a newer good backup exists"
    ]
    assert found[at("2024-06-01 05:00")].keep
    assert found[at("2024-06-01 05:00")].reasons == [
        "unverified/foreign: no manifest, prune never removes it"
    ]
    assert found[at("2024-06-02 02:00")].reasons == ["newest good backup", "daily 2024-06-02"]
    assert found[at("2024-06-03 02:00")].reasons == [
        "damaged: kept until a newer good backup exists"
    ]


def test_targets_are_independent_and_a_target_without_good_backups_keeps_everything() -> None:
    backups = [
        backup(at("2024-06-01 02:00"), target="a"),
        backup(at("2024-06-02 02:00"), target="a"),
        backup(at("2024-06-01 02:00"), target="b"),
        backup(at("2024-06-01 02:00"), target="c", status="damaged"),
    ]
    decisions = decide(backups, policy(keep_last=1), NOW)
    assert [d.keep for d in decisions] == [False, True, True, True]


def test_a_backup_from_the_future_is_kept() -> None:
    backups = [backup(at("2024-06-01 02:00")), backup(at("2025-03-01 02:00"))]
    found = by_time(decide(backups, policy(keep_last=1), NOW))
    assert "created after now (clock skew?): kept" in found[at("2025-03-01 02:00")].reasons


def test_policies_that_keep_nothing_or_count_below_zero_are_refused() -> None:
    with pytest.raises(UsageError, match="keeps nothing"):
        decide([backup(at("2024-06-01 02:00"))], ZERO, NOW)
    with pytest.raises(UsageError, match="keeps nothing"):
        decide([], ZERO, NOW)
    with pytest.raises(UsageError, match="negative"):
        decide([], policy(daily=-1, keep_last=1), NOW)
    with pytest.raises(ValueError, match="timezone"):
        decide([backup(datetime(2024, 6, 1))], Policy(), NOW)


def test_decision_json() -> None:
    (decision,) = decide([backup(at("2024-06-01 02:00"), pinned=True)], Policy(), NOW)
    assert decision.to_json() == {
        "name": "database_app_20240601_020000",
        "kind": "database",
        "target": "app",
        "created_utc": "2024-06-01T02:00:00Z",
        "status": "ok",
        "pinned": True,
        "verified_ok": False,
        "set_id": None,
        "keep": True,
        "reasons": [
            "pinned",
            "newest good backup",
            "keep-last 1",
            "daily 2024-06-01",
            "weekly 2024-W22",
            "monthly 2024-06",
            "yearly 2024",
        ],
    }


def test_a_pin_with_an_end_keeps_until_then_the_rules_decide() -> None:
    before = at("2024-06-01 02:00")
    newer = [backup(at("2024-06-05 02:00"))]
    until = at("2024-06-10 00:00")
    pinned = replace(backup(before), pinned_until=until)

    def reasons(now: datetime) -> list[str]:
        first = decide([pinned, *newer], policy(keep_last=1), now)[0]
        return first.reasons

    assert reasons(at("2024-06-09 23:59")) == ["pinned until 2024-06-10 00:00 UTC"]
    assert reasons(until) == [REMOVE_OUTSIDE]  # the end is exclusive: from then on, the rules
    forever = replace(backup(before), pinned=True)
    assert decide([forever, *newer], policy(keep_last=1), until)[0].reasons == ["pinned"]


def test_representatives_are_the_monthly_choice_of_finished_months() -> None:
    daily = [
        backup(datetime(2024, month, day, 2, tzinfo=UTC))
        for month in (9, 10, 11, 12)
        for day in (1, 15, 28)
    ]
    volume = [backup(at("2024-10-20 03:00"), target="user-1", kind="volume", set_id="S")]
    member = backup(at("2024-10-20 03:00"), set_id="S")  # the set's dump, not October's newest
    late = backup(at("2024-11-29 02:00"), status="damaged")  # never a representative
    safety = backup(at("2024-11-30 02:00"), target="user-1", kind="safety")
    everything = [*daily, *volume, member, late, safety]
    now = at("2024-12-15 12:00")

    chosen = representatives(everything, "monthly", now)

    # Each finished month's newest good backup per target, and its set's members; not the
    # running month (December), nor the damaged or the safety copy.
    assert chosen == [
        daily[2].name,  # 2024-09-28
        daily[5].name,  # 2024-10-28
        daily[8].name,  # 2024-11-28
        volume[0].name,
        member.name,
    ]
    # It is what prune's monthly rule keeps for those months.
    kept = decide(everything, policy(monthly=4), now)
    by_rule = {d.candidate.name for d in kept if any(r.startswith("monthly") for r in d.reasons)}
    assert set(chosen) - {member.name} <= by_rule
    # Yearly: only finished years.
    assert representatives(everything, "yearly", now) == []
    assert representatives(everything, "yearly", at("2025-01-01 00:30")) == [
        daily[11].name,
        volume[0].name,
        member.name,
    ]
