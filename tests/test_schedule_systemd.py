"""The schedule as systemd timers: cron expressions translated to ``OnCalendar=`` and checked
against the real ``systemd-analyze calendar`` (the next elapses from a fixed base time, next
to croniter's firings, and the normalized form); the units written by the real CLI into
temporary folders and checked with ``systemd-analyze verify`` and ``security``; install twice,
stale units, foreign units, refusals. systemd is not PID 1 here: nothing needs a running
systemd (``--unit-dir`` is never the live folder, so systemctl is never called)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from safehold.errors import ConfigError
from safehold.scheduler import next_runs
from safehold.scheduler.systemd import on_calendar
from safehold.scheduler.systemd.calendar import skipped_days

from .mounts import tmpfs
from .test_schedule import cli

BASE = datetime(2024, 12, 1, 1, 59, tzinfo=UTC)  # a Sunday, a minute before the daily backup
SAFEHOLD = Path(sys.executable).parent / "safehold"  # what the units' ExecStart= names


def analyze(
    *args: str, zone: str = "UTC", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd)", pytrace=False)
    env = {**os.environ, "TZ": zone, "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [tool, *args], env=env, capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry of a folder: a file's bytes, a link's target."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = path.read_bytes()
    return found


# ---- cron expressions as calendar events ----

CASES = [
    ("0 2 * * *", ("*-*-* 02:00:00",)),
    ("0 3 * * 0", ("Sun *-*-* 03:00:00",)),
    ("0 5 2 * *", ("*-*-02 05:00:00",)),
    ("0 6 3 1,4,7,10 *", ("*-01/3-03 06:00:00",)),
    ("0 6 10 1 *", ("*-01-10 06:00:00",)),
    ("0 0-1,3-23 * * *", ("*-*-* 00,01,03..23:00:00",)),  # the hourly job beside 02:00
    ("*/15 * * * *", ("*-*-* *:00/15:00",)),
    ("1-59/15 */6 * * mon-fri", ("Mon..Fri *-*-* 00/6:01/15:00",)),
    ("30 4 1-10/3 jan-mar *", ("*-01..03-01..10/3 04:30:00",)),
    ("0 0 * * sat,sun,mon", ("Mon,Sat,Sun *-*-* 00:00:00",)),
    ("0 0 * * 7", ("Sun *-*-* 00:00:00",)),  # cron's other Sunday
    ("5 4 * * 1-5/2", ("Mon,Wed,Fri *-*-* 04:05:00",)),
    ("@weekly", ("Sun *-*-* 00:00:00",)),  # cron's week starts on Sunday, systemd's "weekly" not
    ("@monthly", ("*-*-01 00:00:00",)),
    ("@yearly", ("*-01-01 00:00:00",)),
    # Both day fields restricted: cron fires when either matches; one line for each.
    ("0 2 1,15 * 1", ("*-*-01,15 02:00:00", "Mon *-*-* 02:00:00")),
    ("0 2 1-31 * 1", ("*-*-* 02:00:00",)),  # either: every day of the month matches
    ("0 2 29 2 *", ("*-02-29 02:00:00",)),  # leap days only, as cron
]


@pytest.mark.parametrize(("cron", "expected"), CASES)
def test_cron_expressions_translate(cron: str, expected: tuple[str, ...]) -> None:
    assert on_calendar(cron) == expected


def _elapses(spec: str, count: int, zone: str) -> tuple[str, list[datetime]]:
    """systemd's normalized form of ``spec`` and its next ``count`` elapses after BASE."""
    done = analyze(
        "calendar", f"--base-time=@{int(BASE.timestamp())}", f"--iterations={count}", spec,
        zone=zone,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Original form" not in done.stdout, f"not in normalized form:\n{done.stdout}"
    normalized = re.search(r"Normalized form: (.+)", done.stdout)
    assert normalized is not None, done.stdout
    # "Next elapse: Sun 2024-12-01 03:00:00 UTC" / "Iter. #2: ..." (the zone's abbreviation)
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d+): \w{3} (\S+ \S+) \S+", done.stdout)
    moments = [datetime.fromisoformat(s).replace(tzinfo=ZoneInfo(zone)) for s in stamps]
    return normalized.group(1), moments


@pytest.mark.parametrize(("cron", "expected"), CASES)
def test_systemd_fires_when_cron_does(cron: str, expected: tuple[str, ...]) -> None:
    """The union of the lines' next elapses, from a fixed base time, is croniter's firings."""
    count = 6
    found: set[datetime] = set()
    for spec in on_calendar(cron):
        normalized, moments = _elapses(spec, count, "UTC")
        assert normalized == spec
        found.update(moments)
    cron_times = next_runs(cron, BASE, count, ZoneInfo("UTC"))
    assert sorted(found)[:count] == cron_times


def test_both_read_local_time() -> None:
    berlin = "Europe/Berlin"
    (spec,) = on_calendar("0 2 * * *")
    _normalized, moments = _elapses(spec, 3, berlin)
    assert moments == next_runs("0 2 * * *", BASE, 3, ZoneInfo(berlin))
    assert moments[0].astimezone(UTC) == datetime(2024, 12, 2, 1, 0, tzinfo=UTC)


def test_a_run_in_the_hour_the_clock_skips_is_found_as_systemd_skips_it() -> None:
    berlin, start = ZoneInfo("Europe/Berlin"), datetime(2024, 1, 1, tzinfo=UTC)
    assert skipped_days("0 2 * * *", berlin, start) == [date(2024, 3, 31)]
    assert skipped_days("30 2 * * 0", berlin, start) == [date(2024, 3, 31)]
    assert skipped_days("0 2 * * *", ZoneInfo("America/New_York"), start) == [date(2024, 3, 10)]
    assert skipped_days("0 3 * * *", berlin, start) == []
    assert skipped_days("0 * * * *", berlin, start) == []  # 03:00 runs right after the jump
    assert skipped_days("0 2 * * *", ZoneInfo("UTC"), start) == []
    # systemd itself: from the evening before, the next 02:00 is a day later than cron's run.
    done = analyze(
        "calendar", "--base-time=2024-03-30 20:00:00 UTC", "*-*-* 02:00:00", zone="Europe/Berlin"
    )
    assert "Next elapse: Mon 2024-04-01 02:00:00 CEST" in done.stdout
    cron_next = next_runs("0 2 * * *", datetime(2024, 3, 30, 20, tzinfo=UTC), 1, berlin)[0]
    assert cron_next.isoformat() == "2024-03-31T03:00:00+02:00"


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("0 2 */2 * 1", "is ambiguous: cron reads its two day fields as both must match"),
        ("0 2 * 1 */2", None),  # day of month '*': both readings agree (accepted)
        ("0 2 30 2 *", "never fires: no month has that day"),
        ("0 2 31 4,6,9,11 *", "never fires"),
        ("0 2 * *", "is not a five-field cron expression"),
    ],
)
def test_what_a_timer_cannot_express_is_refused(cron: str, why: str | None) -> None:
    if why is None:
        assert on_calendar(cron) == ("Tue,Thu,Sat,Sun *-01-* 02:00:00",)  # 0,2,4,6
        return
    with pytest.raises(ConfigError, match=re.escape(why)) as caught:
        on_calendar(cron, "drill")
    assert "the drill job's schedule" in caught.value.message
    assert caught.value.hint


# ---- the units, written by the CLI ----


def setup(tmp_path: Path, extra: str = "") -> tuple[Path, Path, tuple[str, ...]]:
    """A config with odd paths (a space and a % need quoting in a unit) and the unit folder."""
    backups = tmp_path / "back ups 100%"
    conf = tmp_path / "safehold.toml"
    conf.write_text(f'backup_dir = "{backups}"\nlog_file = "{tmp_path}/log/safehold.log"\n{extra}')
    units = tmp_path / "units"
    return conf, units, ("--config", str(conf), "--unit-dir", str(units))


def exec_starts(text: str) -> list[list[str]]:
    lines = [
        ln.removeprefix("ExecStart=") for ln in text.splitlines() if ln.startswith("ExecStart=")
    ]
    return [[w.replace("%%", "%").replace("$$", "$") for w in shlex.split(ln)] for ln in lines]


def test_units_verify_and_run_what_the_crontab_runs(tmp_path: Path) -> None:
    conf, units, args = setup(tmp_path, "[schedule]\nhourly = true\n")
    env = {"DB_HOST": "db.internal"}  # a setting from the environment goes along, as in cron
    done = cli("schedule", "install", "--systemd", *args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    jobs = ["database", "full", "hourly", "drill", "quarterly_drill", "annual_drill"]
    names = [f"safehold-{job}.{kind}" for job in jobs for kind in ("service", "timer")]
    assert done.stdout.splitlines() == [str(units / name) for name in names]
    assert sorted(p.name for p in units.iterdir()) == sorted(names)
    assert "systemctl was not run (it is not the folder systemd reads)" in done.stderr

    verified = analyze("verify", *names, cwd=units)
    assert (verified.returncode, verified.stderr, verified.stdout) == (0, "", "")
    # The hardening as systemd scores it (0 safest, 10 none): 9.6 without the options.
    scored = analyze("security", "--offline=yes", "--threshold=60", "safehold-full.service",
                     cwd=units)  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-400:]
    level = re.search(r"Overall exposure level for safehold-full\.service: ([\d.]+)", scored.stdout)
    assert level is not None and float(level.group(1)) <= 6.0

    # Each service runs the commands of the job's crontab line, with its settings.
    shown = cli("schedule", "show", "--json", "--config", str(conf), cwd=tmp_path, env=env)
    cron_jobs = {j["job"]: j for j in json.loads(shown.stdout)["jobs"]}
    for job in jobs:
        service = (units / f"safehold-{job}.service").read_text()
        assert exec_starts(service) == [[*c, "-q"] for c in cron_jobs[job]["commands"]]
        assert service.startswith(f"# safehold-unit: {job}\n")
        assert 'Environment="SAFEHOLD_DATABASE_HOST=db.internal"' in service
        assert f"WorkingDirectory={tmp_path}\n" in service
        timer = (units / f"safehold-{job}.timer").read_text()
        spec = on_calendar(cron_jobs[job]["schedule"])
        assert [ln for ln in timer.splitlines() if ln.startswith("OnCalendar=")] == [
            f"OnCalendar={s}" for s in spec
        ]
    database = (units / "safehold-database.service").read_text()
    assert exec_starts(database)[0][0] == str(SAFEHOLD)
    rw = f'ReadWritePaths="{tmp_path}/back ups 100%%" "{tmp_path}/log" "-/var/lib/docker/volumes"'
    assert rw in database
    for option in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "UMask=0077",
                   "ProtectHome=read-only", "IOSchedulingClass=idle", "KillMode=mixed",
                   "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):  # fmt: skip
        assert f"\n{option}\n" in database, option
    assert "\nMemoryDenyWriteExecute" not in database and "# MemoryDenyWriteExecute=" in database
    assert "\nRestrictSUIDSGID=yes\n" in database  # a drill restores setgid folders: not there
    drill = (units / "safehold-drill.service").read_text()
    assert "\nRestrictSUIDSGID" not in drill and "# RestrictSUIDSGID= left out" in drill
    assert "TimeoutStartSec=65min" in database  # 2 x 30 min (rto_database) + 5 min lock wait
    full = (units / "safehold-full.service").read_text()
    assert "TimeoutStartSec=245min" in full  # 2 x 120 min (rto_full) + 5 min lock wait
    hourly = (units / "safehold-hourly.service").read_text()
    assert "TimeoutStartSec=110min" in hourly  # 2 x 30 min (rto_database) + 50 min lock wait
    timer = (units / "safehold-database.timer").read_text()
    assert "\nPersistent=true\n" in timer and "\nWantedBy=timers.target\n" in timer


def test_user_units_verify_in_the_user_manager(tmp_path: Path) -> None:
    _conf, units, args = setup(tmp_path)
    done = cli("schedule", "install", "--systemd", "--user", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"user unit folder {units}" in done.stderr
    runtime_dir = tmp_path / "xdg"
    runtime_dir.mkdir(mode=0o700)
    names = sorted(p.name for p in units.iterdir())
    env_dir = {"XDG_RUNTIME_DIR": str(runtime_dir)}
    verified = subprocess.run(
        ["systemd-analyze", "--user", "verify", *names],
        cwd=units, env={**os.environ, **env_dir}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (verified.returncode, verified.stderr) == (0, "")
    service = (units / "safehold-database.service").read_text()
    assert "\nNoNewPrivileges=yes\n" in service
    assert "\nProtectSystem=" not in service and "network-online.target" not in service


@pytest.mark.slow
def test_install_twice_changes_nothing_and_stale_units_go(tmp_path: Path) -> None:
    conf, units, args = setup(tmp_path, "[schedule]\nhourly = true\n")
    assert cli("schedule", "install", "--systemd", *args, cwd=tmp_path).returncode == 0
    # The operator's own units in the same folder, one of them named like ours.
    (units / "backup-report.service").write_text("[Service]\nExecStart=/bin/true\n")
    (units / "safehold-custom.service").write_text("# mine\n[Service]\nExecStart=/bin/true\n")
    wants = units / "timers.target.wants"
    wants.mkdir()
    (wants / "safehold-hourly.timer").symlink_to("../safehold-hourly.timer")
    before = snapshot(units)
    inodes = {p.name: p.stat().st_ino for p in units.iterdir()}

    again = cli("schedule", "install", "--systemd", "--json", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert (result["written"], result["removed"]) == ([], [])
    assert result["foreign"] == ["safehold-custom.service"]
    assert snapshot(units) == before
    assert {p.name: p.stat().st_ino for p in units.iterdir()} == inodes  # not even rewritten

    conf.write_text(conf.read_text().replace("hourly = true", 'hourly = false\nfull = "0 4 * * 6"'))
    shown = json.loads(cli("schedule", "show", "--systemd", "--json", *args, cwd=tmp_path).stdout)
    states = {j["job"]: j["state"] for j in shown["jobs"]}
    assert states == {"database": "yes", "full": "differs", "drill": "yes",
                      "quarterly_drill": "yes", "annual_drill": "yes"}  # fmt: skip
    assert shown["stale"] == ["safehold-hourly.service", "safehold-hourly.timer"]
    third = cli("schedule", "install", "--systemd", "--json", *args, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    result = json.loads(third.stdout)
    assert result["written"] == ["safehold-full.timer"]  # the service runs the same
    assert result["removed"] == ["safehold-hourly.service", "safehold-hourly.timer"]
    assert "OnCalendar=Sat *-*-* 04:00:00\n" in (units / "safehold-full.timer").read_text()
    assert not (units / "safehold-hourly.timer").exists()
    assert not (wants / "safehold-hourly.timer").is_symlink()  # the dangling link went too
    after = snapshot(units)
    for name in ("backup-report.service", "safehold-custom.service"):
        assert after[name] == before[name]

    removed = cli("schedule", "remove", "--systemd", *args, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert len(removed.stdout.splitlines()) == 10
    assert sorted(p.name for p in units.iterdir()) == [
        "backup-report.service", "safehold-custom.service", "timers.target.wants",
    ]  # fmt: skip
    assert "1 safehold-* units not written by safehold left alone" in removed.stderr
    assert cli("schedule", "remove", "--systemd", *args, cwd=tmp_path).stdout == ""


def test_dry_run_prints_the_units_and_writes_nothing(tmp_path: Path) -> None:
    _conf, units, args = setup(tmp_path)
    berlin = {"TZ": "Europe/Berlin"}
    done = cli("schedule", "install", "--systemd", "--dry-run", *args, cwd=tmp_path, env=berlin)
    assert done.returncode == 0, done.stderr
    assert not units.exists()
    assert "the database job (0 2 * * *) falls in the hour the clock skips on " in done.stderr
    assert f"# --- {units}/safehold-database.service\n# safehold-unit: database\n" in done.stdout
    assert done.stdout.count("# --- ") == 10
    assert "would write 10 units" in done.stderr


def test_refusals_leave_the_folder_as_it_was(tmp_path: Path) -> None:
    conf, units, args = setup(tmp_path)
    assert cli("schedule", "install", "--systemd", *args, cwd=tmp_path).returncode == 0
    before = snapshot(units)

    # A cron expression a timer cannot express faithfully.
    conf.write_text(conf.read_text() + '[schedule]\ndrill = "0 5 */2 * 1"\n')
    done = cli("schedule", "install", "--systemd", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert "the drill job's schedule '0 5 */2 * 1' is ambiguous" in done.stderr
    assert "hint: write the day of month or the day of week as '*'" in done.stderr
    assert snapshot(units) == before

    # A unit of the operator's own where ours would go.
    conf.write_text(conf.read_text().replace("0 5 */2 * 1", "0 5 3 * *"))
    (units / "safehold-drill.timer").write_text("[Timer]\nOnCalendar=daily\n")
    before = snapshot(units)
    done = cli("schedule", "install", "--systemd", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert "already holds safehold-drill.timer, not written by safehold" in done.stderr
    assert snapshot(units) == before


def test_a_folder_that_cannot_be_written_is_left_as_it_was(tmp_path: Path) -> None:
    conf, _units, _args = setup(tmp_path)
    with tmpfs(tmp_path / "ro") as units:
        args = ("--config", str(conf), "--unit-dir", str(units))
        assert cli("schedule", "install", "--systemd", *args, cwd=tmp_path).returncode == 0
        before = snapshot(units)
        subprocess.run(["mount", "-o", "remount,ro", str(units)], check=True)
        conf.write_text(conf.read_text() + "[schedule]\nhourly = true\n")
        done = cli("schedule", "install", "--systemd", *args, cwd=tmp_path)
        assert done.returncode == 2
        assert "cannot write unit files into the system unit folder" in done.stderr
        assert "Read-only file system; nothing was changed" in done.stderr
        assert snapshot(units) == before
        gone = cli("schedule", "remove", "--systemd", *args, cwd=tmp_path)
        assert gone.returncode == 2 and "cannot delete unit files" in gone.stderr
        assert snapshot(units) == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--systemd", "--crontab-file", "tab"), "--crontab-file goes with the crontab"),
        (("--systemd", "--replace-seed"), "--replace-seed goes with the crontab"),
        (("--unit-dir", "units"), "--unit-dir goes with --systemd"),
        (("--no-enable",), "--no-enable goes with --systemd"),
        (("--user",), "--user needs a NAME for a crontab"),
        (("--systemd", "--user", "nobody"), "user units belong to the user who runs them"),
    ],
)
def test_flags_that_do_not_go_together(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    done = cli("schedule", "install", "--dry-run", *flags, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "units").exists() and not (tmp_path / "tab").exists()
