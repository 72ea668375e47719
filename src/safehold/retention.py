"""Grandfather-father-son retention as a pure function: backups in, keep/remove with reasons out.

No I/O and no clock: the caller hands in what a repository location holds and ``now``.

The rules, per (kind, target) group (a database name, a volume); every rule applies on its own
and a backup kept by any rule is kept, with every reason that keeps it:

- A backup counts for the UTC calendar day, ISO week (``date.isocalendar()``: weeks start on
  Monday, week 1 holds the year's first Thursday, so Dec 29-31 can be week 1 of the next year
  and Jan 1-3 week 52/53 of the previous one), calendar month and calendar year of its
  ``created`` time (the manifest's start time), converted to UTC.
- Only good backups (status ``ok``) represent a bucket, and in each bucket the newest good one
  does. ``daily N`` keeps the representatives of the N most recent days that HAVE a good
  backup; likewise ``weekly``, ``monthly``, ``yearly`` for weeks, months and years. Counting
  buckets that hold backups, not calendar periods back from ``now``, is restic's and borg's
  rule: when backups stop (a broken job, a server switched off for a month) pruning removes
  nothing more as time passes, and the history is never aged away behind a silent failure.
- ``keep_last N`` keeps the N newest good backups.
- Always kept, whatever the counts: the newest good backup; a pinned backup; the newest good
  backup whose last verify was ``ok`` (the last verified copy); a backup created after ``now``
  (a clock skew is a question for a human, not a reason to delete).
- Files without a manifest (``unverified/foreign``) are never removed: they are not ours.
- Damaged backups and manifests whose file is missing are never representatives. They are
  removed when a newer good backup of the same target exists (with that reason), else kept.
- Sets: when any member of a full-system set is kept, every member of it is kept.
- Safety copies (kind ``safety``: a volume's content taken before a restore replaced it) are
  not the volume's backups: never a representative, never the newest; each is kept while it
  is at most ``safety_days`` old (or pinned, or created after ``now``), then removed.
- Globals (kind ``globals``) are never judged on their own: one is kept exactly when the
  database dump it belongs to (``companion_of``) is kept, and removed with it, or when no
  dump of the location names it (pinned or foreign ones excepted).
- Pins: a pin without an end keeps its backup for good; one with an end (``backup
  --keep-until``) keeps it while ``now`` is before the end, then the rules above decide.
- Refused: a policy whose counts and keep_last are all 0, negative counts, and (a safety net the
  rules above already guarantee) any outcome that removes every good backup of a target.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .errors import UsageError
from .model import BACKUP_KINDS, Kind, Status

REMOVE_OUTSIDE = "remove: outside every window"
Period = Literal["monthly", "yearly"]
# What a policy judges: logical backups by kind, and PITR base backups ("base").
CandidateKind = Kind | Literal["base"]


@dataclass(frozen=True)
class Policy:
    daily: int = 30
    weekly: int = 12
    monthly: int = 12
    yearly: int = 7
    keep_last: int = 1
    safety_days: int = 7  # how long a pre-restore safety copy is kept

    def check(self) -> None:
        counts = {name: getattr(self, name) for name in ("daily", "weekly", "monthly", "yearly")}
        counts["keep_last"] = self.keep_last
        if self.safety_days < 0:
            raise UsageError(
                f"retention.safety_days is {self.safety_days}: it cannot be negative",
                hint="use 0 to remove safety copies at the next prune",
            )
        negative = [name for name, value in counts.items() if value < 0]
        if negative:
            raise UsageError(
                f"retention.{negative[0]} is {counts[negative[0]]}: counts cannot be negative",
                hint="use 0 to turn a rule off",
            )
        if not any(counts.values()):
            raise UsageError(
                "the retention policy keeps nothing: daily, weekly, monthly, yearly and "
                "keep_last are all 0",
                hint="set at least one of retention.daily/weekly/monthly/yearly/keep_last",
            )


@dataclass(frozen=True)
class Candidate:
    """One backup of one location as the policy sees it."""

    name: str
    kind: CandidateKind
    target: str | None  # database or volume name; None when no manifest says (a foreign dump)
    created: datetime  # timezone-aware
    status: Status = "ok"
    pinned: bool = False
    verified_ok: bool = False  # the last recorded verify of this backup was ok
    set_id: str | None = None
    companion_of: str | None = None  # globals: the database dump it belongs to
    pinned_until: datetime | None = None  # a pin that ends (``pinned`` is one that does not)

    @property
    def good(self) -> bool:
        return self.status == "ok"

    def pin_reason(self, now: datetime) -> str | None:
        """Why a pin keeps it at ``now``, or None."""
        if self.pinned:
            return "pinned"
        if self.pinned_until is not None and now < self.pinned_until:
            return f"pinned until {self.pinned_until.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        return None


@dataclass(frozen=True)
class Decision:
    candidate: Candidate
    keep: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "name": c.name,
            "kind": c.kind,
            "target": c.target,
            "created_utc": c.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "status": c.status,
            "pinned": c.pinned,
            "verified_ok": c.verified_ok,
            "set_id": c.set_id,
            "keep": self.keep,
            "reasons": list(self.reasons),
        }


def day(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d}"


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.astimezone(UTC).isocalendar()
    return f"{year:04d}-W{week:02d}"


def month(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m}"


def year(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y}"


# (rule name, policy attribute, bucket of a moment), in the order reasons are listed.
RULES: tuple[tuple[str, str, Callable[[datetime], str]], ...] = (
    ("daily", "daily", day),
    ("weekly", "weekly", iso_week),
    ("monthly", "monthly", month),
    ("yearly", "yearly", year),
)


def decide(backups: list[Candidate], policy: Policy, now: datetime) -> list[Decision]:
    """One decision per backup, in the order given."""
    policy.check()
    if now.tzinfo is None or any(c.created.tzinfo is None for c in backups):
        raise ValueError("retention needs timezone-aware times")
    reasons: dict[int, list[str]] = {i: [] for i in range(len(backups))}
    removals: dict[int, str] = {}
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for index, candidate in enumerate(backups):
        if candidate.kind == "safety":
            _decide_safety(candidate, policy, now, reasons[index])
            removals[index] = f"remove: safety copy older than {policy.safety_days} days"
        elif candidate.kind != "globals":
            groups[(candidate.kind, candidate.target)].append(index)
    for members in groups.values():
        _decide_group(backups, members, policy, now, reasons, removals)
    _keep_sets(backups, reasons)
    _follow_dumps(backups, now, reasons, removals)
    decisions = []
    for index, candidate in enumerate(backups):
        why = reasons[index]
        keep = bool(why)
        decisions.append(Decision(candidate, keep, why if keep else [removals[index]]))
    _refuse_losing_everything(decisions)
    return decisions


def _decide_group(
    backups: list[Candidate],
    members: list[int],
    policy: Policy,
    now: datetime,
    reasons: dict[int, list[str]],
    removals: dict[int, str],
) -> None:
    ordered = sorted(members, key=lambda i: (backups[i].created, backups[i].name), reverse=True)
    good = [i for i in ordered if backups[i].good]  # newest first
    for i in ordered:
        if pin := backups[i].pin_reason(now):
            reasons[i].append(pin)
    if good:
        reasons[good[0]].append("newest good backup")
    verified = [i for i in good if backups[i].verified_ok]
    if verified:
        reasons[verified[0]].append("last verified copy")
    for rank, i in enumerate(good[: policy.keep_last], start=1):
        reasons[i].append(f"keep-last {rank}")
    for rule, attribute, bucket_of in RULES:
        wanted: int = getattr(policy, attribute)
        seen: list[str] = []
        for i in good:
            bucket = bucket_of(backups[i].created)
            if bucket in seen:
                continue  # an older backup of a bucket already represented
            if len(seen) >= wanted:
                break
            seen.append(bucket)
            reasons[i].append(f"{rule} {bucket}")
    newest_good = backups[good[0]].created if good else None
    for i in ordered:
        candidate = backups[i]
        if candidate.created > now:
            reasons[i].append("created after now (clock skew?): kept")
        if candidate.status == "unverified/foreign":
            reasons[i].append("unverified/foreign: no manifest, prune never removes it")
        elif not candidate.good:
            problem = "damaged" if candidate.status == "damaged" else "file missing"
            if newest_good is not None and candidate.created < newest_good:
                removals[i] = f"remove: {problem}, a newer good backup exists"
            elif not reasons[i]:
                reasons[i].append(f"{problem}: kept until a newer good backup exists")
        if i not in removals:
            removals[i] = REMOVE_OUTSIDE


def _decide_safety(candidate: Candidate, policy: Policy, now: datetime, why: list[str]) -> None:
    until = candidate.created + timedelta(days=policy.safety_days)
    if pin := candidate.pin_reason(now):
        why.append(pin)
    if candidate.created > now:
        why.append("created after now (clock skew?): kept")
    if candidate.status == "unverified/foreign":
        why.append("unverified/foreign: no manifest, prune never removes it")
    if now <= until:
        why.append(f"safety copy, kept until {until.astimezone(UTC):%Y-%m-%d %H:%M} UTC")


def _follow_dumps(
    backups: list[Candidate],
    now: datetime,
    reasons: dict[int, list[str]],
    removals: dict[int, str],
) -> None:
    """Each globals artifact shares its dump's decision (after sets are settled)."""
    kept = {c.name for i, c in enumerate(backups) if c.kind == "database" and reasons[i]}
    for i, candidate in enumerate(backups):
        if candidate.kind != "globals":
            continue
        dump = candidate.companion_of
        if pin := candidate.pin_reason(now):
            reasons[i].append(pin)
        if candidate.created > now:
            reasons[i].append("created after now (clock skew?): kept")
        if candidate.status == "unverified/foreign":
            reasons[i].append("unverified/foreign: no manifest, prune never removes it")
        if dump in kept:
            reasons[i].append(f"globals of kept dump {dump}")
        present = any(c.name == dump for c in backups)
        removals[i] = (
            f"remove: its dump {dump} is removed"
            if present
            else "remove: no database dump it belongs to is left"
        )


def representatives(backups: list[Candidate], period: Period, now: datetime) -> list[str]:
    """The names the ``period`` rule would pick in each complete calendar month (or year)
    before ``now``'s: per target the newest good backup of each, and with them every good
    member of a set one of them belongs to (as prune keeps sets whole), in the order given.
    The month still running is left out: its representative is not known yet. Safety copies
    and globals are never picked (a copy takes a dump's globals along with it)."""
    bucket_of = month if period == "monthly" else year
    current = bucket_of(now)
    picked: dict[tuple[str, str | None, str], Candidate] = {}
    eligible = [c for c in backups if c.good and c.kind in BACKUP_KINDS]
    for candidate in eligible:
        bucket = bucket_of(candidate.created)
        if bucket >= current:  # "2024-11" < "2024-12": the names sort as the periods do
            continue
        key = (candidate.kind, candidate.target, bucket)
        best = picked.get(key)
        if best is None or (candidate.created, candidate.name) > (best.created, best.name):
            picked[key] = candidate
    sets = {c.set_id for c in picked.values()} - {None}
    chosen = {c.name for c in picked.values()} | {c.name for c in eligible if c.set_id in sets}
    return [c.name for c in backups if c.name in chosen]


def _keep_sets(backups: list[Candidate], reasons: dict[int, list[str]]) -> None:
    """A kept member keeps its whole set; repeated until nothing changes."""
    changed = True
    while changed:
        changed = False
        kept_sets = {backups[i].set_id for i, why in reasons.items() if why} - {None}
        for i, candidate in enumerate(backups):
            if candidate.set_id in kept_sets and not reasons[i]:
                reasons[i].append(f"member of kept set {candidate.set_id}")
                changed = True


def _refuse_losing_everything(decisions: list[Decision]) -> None:
    targets: dict[tuple[str, str | None], bool] = {}
    for d in decisions:
        c = d.candidate
        if c.good and c.kind not in ("safety", "globals"):
            key = (c.kind, c.target)
            targets[key] = targets.get(key, False) or d.keep
    lost = [key for key, kept in targets.items() if not kept]
    if lost:
        kind, target = lost[0]
        raise UsageError(
            f"refusing to prune: the policy would remove every good backup of {kind} "
            f"{target or '?'}",
            hint="check the retention settings; nothing was removed",
        )
