"""One schedule entry as two unit files: ``safehold-<job>.service`` (a oneshot running the job's
commands, those of its crontab line, one ``ExecStart=`` each: systemd runs the next only when
the one before succeeded, as the crontab's ``&&`` does) and ``safehold-<job>.timer``.

The service is hardened as far as a backup can be: the comments written into it say what each
option does and why some are left out, so an operator reading the unit needs nothing else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...config import Settings
from ...errors import UsageError
from ..invocation import Invocation
from ..jobs import Job, Schedule
from .calendar import on_calendar

PREFIX = "safehold-"
MARK = re.compile(r"^# safehold-unit: ([a-z_]+)$")  # the first line of every unit we write
HEADER = (
    "# safehold-unit: {job}\n"
    "# Written by 'safehold schedule install --systemd', which replaces it when run again;\n"
    "# 'safehold schedule remove --systemd' deletes it. Change the schedule in safehold's\n"
    "# config file, or override options with 'systemctl edit {name}' (a drop-in stays).\n"
)
# Where Docker keeps volume folders: safehold's direct (faster) volume path reads them and a
# drill writes its scratch volumes there; without write access it falls back to the engine API.
DOCKER_VOLUMES = Path("/var/lib/docker/volumes")
STOP_TIMEOUT = "5min"  # after SIGTERM: drop staging databases, remove unfinished files

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


@dataclass(frozen=True)
class UnitFile:
    name: str  # safehold-database.service
    job: str
    text: str


def unit_files(
    settings: Settings, schedule: Schedule, how: Invocation, *, user_mode: bool
) -> list[UnitFile]:
    """The service and the timer of every job, in the schedule's order."""
    writable = writable_paths(settings, how.workdir)
    files: list[UnitFile] = []
    for job in schedule.jobs:
        calendar = on_calendar(job.expression, job.name)
        timeout_s = _lock_wait_s(job, settings.lock_timeout) + 2 * _rto_s(job, settings)
        service = _service(job, how, writable, timeout_s, user_mode=user_mode)
        files.append(UnitFile(f"{PREFIX}{job.name}.service", job.name, service))
        files.append(UnitFile(f"{PREFIX}{job.name}.timer", job.name, _timer(job, calendar)))
    return files


def writable_paths(settings: Settings, workdir: Path) -> list[Path]:
    """What a job writes: the repository (its ``.safehold`` state included) and the log
    file's folder; relative settings mean what they mean in the job's working folder."""
    found = [settings.backup_dir]
    if settings.log_file is not None:
        found.append(settings.log_file.parent)
    paths: list[Path] = []
    for path in found:
        full = Path(os.path.normpath(workdir / path))
        if full not in paths:
            paths.append(full)
    return paths


def _rto_s(job: Job, settings: Settings) -> float:
    goals = settings.objectives
    minutes = (
        goals.rto_database_minutes
        if job.name in ("database", "hourly")
        else max(goals.rto_full_minutes, goals.rto_database_minutes, goals.rto_volumes_minutes)
    )
    return minutes * 60


def _lock_wait_s(job: Job, default: float) -> float:
    waits = [float(s[s.index("--lock-timeout") + 1]) for s in job.steps if "--lock-timeout" in s]
    return max([default, *waits])


def _service(
    job: Job, how: Invocation, writable: list[Path], timeout_s: float, *, user_mode: bool
) -> str:
    name = f"{PREFIX}{job.name}.service"
    restores = any(step[0] == "drill" for step in job.steps)
    lines = [HEADER.format(job=job.name, name=name).rstrip("\n"), "[Unit]"]
    lines.append(f"Description=safehold: {_specifiers(job.what)}")
    if not user_mode:  # a user manager has no network-online.target (it is the system's)
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += ["", "[Service]", "Type=oneshot"]
    lines.append(f"WorkingDirectory={_path_value(how.workdir)}")
    lines += [f"Environment={_quoted(f'{key}={value}')}" for key, value in how.env]
    lines += [f"ExecStart={_command([*how.argv(step), '-q'])}" for step in job.steps]
    lines += [
        "# Twice the recovery time objective ([objectives] rto_*) plus the wait for the",
        "# repository lock: a slow run still finishes and records that it was slow; a stuck",
        "# one is stopped.",
        f"TimeoutStartSec={_span(timeout_s)}",
        "# safehold cleans up on SIGTERM (staging databases, unfinished files, stopped",
        "# containers started again) and stops its own children: SIGTERM goes to it alone",
        "# (mixed), SIGKILL to everything left when TimeoutStopSec= runs out.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT}",
        "# A backup yields to the application: lower CPU priority, disk time only when idle.",
        "Nice=10",
        "IOSchedulingClass=idle",
        "# Files 0600, folders 0700, as everything safehold writes.",
        "UMask=0077",
        "",
        *(_user_hardening(restores) if user_mode else _system_hardening(writable, restores)),
    ]
    return "\n".join(lines) + "\n"


def _common_hardening(restores: bool) -> list[str]:
    if restores:
        suid = [
            "# RestrictSUIDSGID= left out: a drill restores folders with their setgid bit (and",
            "# a full-system drill files with set-id bits a manifest vouches for); the filter",
            "# would refuse that chmod and fail the drill.",
        ]
    else:
        suid = ["RestrictSUIDSGID=yes"]
    return [
        "NoNewPrivileges=yes",
        *suid,
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "# PostgreSQL and S3 over TCP, the Docker socket (and local PostgreSQL) over AF_UNIX.",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "# Left out: PrivateNetwork= (jobs talk to PostgreSQL, S3 and Docker);",
        "# MemoryDenyWriteExecute= (no memory made executable: the sandbox drill's PostgreSQL",
        "# fails its queries when its JIT (llvmjit) cannot, and where libffi has no static",
        "# trampolines (older distributions) the callback ctypes makes at import needs it);",
        "# SystemCallFilter= (jobs run pg_dump, pg_restore, initdb and postgres of whatever",
        "# version is installed: a system call missing from a filter kills a backup with",
        "# SIGSYS; the options above already take away the risky ones).",
    ]


def _system_hardening(writable: list[Path], restores: bool) -> list[str]:
    paths = [*writable, DOCKER_VOLUMES]
    rw = " ".join(_quoted(("-" if path == DOCKER_VOLUMES else "") + str(path)) for path in paths)
    return [
        "# Runs as root: it reads every Docker volume's files whatever their owner, talks to",
        "# the Docker socket (root:docker), and the sandbox drill runs PostgreSQL as an",
        "# unprivileged user. So CapabilityBoundingSet= and User= are left out, and",
        "# PrivateUsers= too (it would hide the docker group).",
        *_common_hardening(restores),
        "# The whole file system read-only except what a job writes: the repository, the log",
        "# file's folder, and Docker's volume folders ('-': when they exist). Connecting to",
        "# the Docker socket works on a read-only /run: sockets are not files written.",
        "ProtectSystem=strict",
        f"ReadWritePaths={rw}",
        "# Home folders read-only, not hidden: ~/.pgpass and ~/.aws are read from there.",
        "ProtectHome=read-only",
        "# A private /tmp (the sandbox drill's throwaway cluster lives there), removed after.",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
    ]


def _user_hardening(restores: bool) -> list[str]:
    return [
        "# A user unit: the options that need a mount namespace (ProtectSystem=, ProtectHome=,",
        "# PrivateTmp=, ReadWritePaths=, ProtectKernel*=, ProtectControlGroups=) are left out:",
        "# a per-user manager gives them only with PrivateUsers=, which maps every group but",
        "# the user's own to nobody, so the Docker socket (group docker) could not be opened.",
        *_common_hardening(restores),
    ]


def _timer(job: Job, calendar: tuple[str, ...]) -> str:
    name = f"{PREFIX}{job.name}.timer"
    lines = [
        HEADER.format(job=job.name, name=name).rstrip("\n"),
        "[Unit]",
        f"Description=safehold: {_specifiers(job.what)} (cron: {job.expression})",
        "",
        "[Timer]",
        "# The cron expression, in local time as cron reads it; two lines when cron fires",
        "# on either of a day of month and a day of week.",
        *(f"OnCalendar={spec}" for spec in calendar),
        "# A run missed while the machine was off starts at the next boot.",
        "Persistent=true",
        "# On time to the second, as 'safehold schedule show' predicts, and no random delay:",
        "# the jobs of one machine are already spread over the night, and the lock orders",
        "# them when they meet.",
        "AccuracySec=1s",
        "RandomizedDelaySec=0",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return "\n".join(lines) + "\n"


def _command(argv: list[str]) -> str:
    """An ``ExecStart=`` command line: words quoted where systemd would split or expand them
    (``%`` specifiers, ``$`` variables, a lone ``;``)."""
    return " ".join(_word(arg) for arg in argv)


def _word(arg: str) -> str:
    _refuse_control(arg)
    if _SAFE_WORD.match(arg):
        return arg
    return _quoted(arg).replace("$", "$$")


def _quoted(text: str) -> str:
    _refuse_control(text)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _specifiers(escaped) + '"'


def _path_value(path: Path) -> str:
    _refuse_control(str(path))
    return _specifiers(str(path))


def _specifiers(text: str) -> str:
    return text.replace("%", "%%")


def _refuse_control(text: str) -> None:
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise UsageError(
            f"cannot write {text!r} into a unit file: it holds a control character "
            "(a newline would end the setting)",
            hint="rename the folder or change the setting that holds it",
        )


def _span(seconds: float) -> str:
    whole = max(1, round(seconds))
    return f"{whole // 60}min" if whole % 60 == 0 else f"{whole}s"
