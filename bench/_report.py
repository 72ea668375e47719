"""Medians, ratios against the targets, and the printed tables."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ._methods import Sample


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    diagnostic: bool = False


BACKUPS = [
    Method("pg_dump", "pg_dump -Fc -f FILE (baseline)"),
    Method("sh_gzip", "safehold backup gzip (API)"),
    Method("sh_gzip_cli", "safehold backup gzip (CLI, incl. Python start)"),
    Method("sh_zstd", "safehold backup --compress zstd (API)"),
    Method("pg_dump_z0", "pg_dump -Fc -Z0 -f FILE (no compression)", True),
    Method("zstd_pipe", "pg_dump -Fc -Z0 | zstd -3 -T<jobs> (C tools)", True),
    Method("count_rows", "count(*) of every table, one session", True),
]
RESTORES = [
    Method("pg_restore", "createdb + pg_restore -j<jobs> (baseline)"),
    Method("sh_restore", "safehold restore gzip artifact, new db (API)"),
    Method("sh_restore_zstd", "safehold restore zstd artifact, new db (API)"),
    Method("sh_swap", "safehold restore over live db, swap (API)"),
    Method("pg_restore_sh", "createdb + pg_restore -j<jobs> of safehold's gzip file", True),
]


@dataclass(frozen=True)
class Target:
    name: str
    numerator: str
    denominator: str
    limit: float
    at_most: bool  # True: value <= limit passes; False: value >= limit passes
    field: str = "seconds"


TARGETS = [
    Target("safehold gzip backup time / pg_dump time", "sh_gzip", "pg_dump", 1.05, True),
    Target("pg_dump time / safehold zstd backup time", "pg_dump", "sh_zstd", 3.0, False),
    Target("safehold zstd size / pg_dump size", "sh_zstd", "pg_dump", 1.0, True, "size"),
    Target("safehold restore time / pg_restore -j time", "sh_restore", "pg_restore", 1.10, True),
]
INFO_RATIOS = [
    ("safehold gzip CLI time / pg_dump time", "sh_gzip_cli", "pg_dump", "seconds"),
    ("safehold zstd time / pg_dump -Z0 time", "sh_zstd", "pg_dump_z0", "seconds"),
    ("safehold zstd time / (pg_dump -Z0 | zstd) time", "sh_zstd", "zstd_pipe", "seconds"),
    ("safehold zstd-artifact restore / pg_restore -j", "sh_restore_zstd", "pg_restore", "seconds"),
    ("safehold swap restore / pg_restore -j", "sh_swap", "pg_restore", "seconds"),
    ("pg_restore of safehold file / of pg_dump file", "pg_restore_sh", "pg_restore", "seconds"),
]


def median_of(samples: list[Sample], field: str) -> float | None:
    values = [v for s in samples if (v := getattr(s, field)) is not None]
    return float(statistics.median(values)) if values else None


def summarize(runs: dict[str, list[Sample]]) -> dict[str, Any]:
    """Per method: median/min/max seconds and median size; then the ratios and verdicts."""
    methods: dict[str, Any] = {}
    for key, samples in runs.items():
        seconds = [s.seconds for s in samples]
        methods[key] = {
            "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3),
            "median_size": median_of(samples, "size"),
            "n": len(samples),
        }
    targets = []
    for target in TARGETS:
        value = _ratio(runs, target.numerator, target.denominator, target.field)
        passed = None
        if value is not None:
            passed = value <= target.limit if target.at_most else value >= target.limit
        targets.append(
            {
                "name": target.name,
                "value": None if value is None else round(value, 3),
                "limit": ("<= " if target.at_most else ">= ") + f"{target.limit:g}",
                "pass": passed,
            }
        )
    info = {
        name: None if (v := _ratio(runs, num, den, field)) is None else round(v, 3)
        for name, num, den, field in INFO_RATIOS
    }
    return {"methods": methods, "targets": targets, "info_ratios": info}


def _ratio(runs: dict[str, list[Sample]], num: str, den: str, field: str) -> float | None:
    top = median_of(runs.get(num, []), field)
    bottom = median_of(runs.get(den, []), field)
    if top is None or not bottom:
        return None
    return top / bottom


def render(title: str, runs: dict[str, list[Sample]], summary: dict[str, Any], jobs: int) -> str:
    lines = [title, ""]
    header = f"  {'method':<58} {'median s':>9} {'min s':>8} {'max s':>8} {'size MB':>9}"
    baseline = {"backup": summary["methods"].get("pg_dump"), "restore": None}
    baseline["restore"] = summary["methods"].get("pg_restore")
    for section, methods in (("backup", BACKUPS), ("restore", RESTORES)):
        lines += [f"  {section.upper()}", header + f" {'/ baseline':>10}"]
        base = baseline[section]
        for method in methods:
            row = summary["methods"].get(method.key)
            if row is None:
                continue
            label = ("[diag] " if method.diagnostic else "") + method.label
            label = label.replace("<jobs>", str(jobs))
            size = "" if row["median_size"] is None else f"{row['median_size'] / 1e6:.1f}"
            rel = f"{row['median_s'] / base['median_s']:.2f}x" if base else ""
            lines.append(
                f"  {label:<58} {row['median_s']:>9.2f} {row['min_s']:>8.2f} "
                f"{row['max_s']:>8.2f} {size:>9} {rel:>10}"
            )
        lines.append("")
    lines.append("  TARGETS (ratios of medians)")
    for target in summary["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[target["pass"]]
        value = "n/a" if target["value"] is None else f"{target['value']:.3f}"
        lines.append(f"  {target['name']:<58} {value:>9} {target['limit']:>9}  {verdict}")
    lines.append("  other ratios (information)")
    for name, value in summary["info_ratios"].items():
        lines.append(f"  {name:<58} {'n/a' if value is None else f'{value:.3f}':>9}")
    lines += ["", "  raw per repetition (seconds; size MB; details)"]
    for key, samples in runs.items():
        for number, sample in enumerate(samples, 1):
            size = "" if sample.size is None else f"{sample.size / 1e6:.1f} MB"
            lines.append(
                f"    {key:<16} #{number} {sample.seconds:8.2f}s {size:>10} {sample.detail or ''}"
            )
    return "\n".join(lines)
