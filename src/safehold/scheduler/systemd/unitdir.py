"""A folder of unit files and the units safehold wrote there: those named ``safehold-*`` whose
first line is our mark (``# safehold-unit: <job>``). Install writes every file to a temporary
file in the folder first and renames them into place only when all were written, so a folder
that cannot take them is left as it was; it then deletes the units of jobs no longer
configured. Remove deletes ours and nothing else: a ``safehold-*`` unit of the operator's own
stays, and install refuses to overwrite one.

``systemctl`` is called only for the folder the running manager reads (``/etc/systemd/system``,
or ``~/.config/systemd/user`` with ``user_mode``) and only when systemd is the init system.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ... import _proc
from ...errors import UsageError
from .units import MARK, PREFIX, UnitFile

SYSTEM_DIR = Path("/etc/systemd/system")
SUFFIXES = (".service", ".timer")
Staged = tuple[Path, Path, str | None]  # a temporary file, its final name, what it replaces


def default_dir(user_mode: bool) -> Path:
    if not user_mode:
        return SYSTEM_DIR
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


@dataclass(frozen=True)
class UnitDir:
    path: Path
    user_mode: bool = False

    def describe(self) -> str:
        return f"{'user' if self.user_mode else 'system'} unit folder {self.path}"

    @property
    def live(self) -> bool:
        """The folder the running systemd reads, with systemctl there to tell it."""
        booted = Path("/run/systemd/system").is_dir()  # sd_booted(3)
        here = _resolved(self.path) == _resolved(default_dir(self.user_mode))
        return booted and here and shutil.which("systemctl") is not None

    def read(self) -> tuple[dict[str, UnitFile], list[str]]:
        """Our units (name -> file) and the names of ``safehold-*`` units that are not ours."""
        ours: dict[str, UnitFile] = {}
        foreign: list[str] = []
        if not self.path.is_dir():
            return ours, foreign
        for entry in sorted(self.path.iterdir()):
            if not entry.name.startswith(PREFIX) or entry.suffix not in SUFFIXES:
                continue
            text = _text(entry)
            match = MARK.match(text.partition("\n")[0]) if text is not None else None
            if match and text is not None and not entry.is_symlink():
                ours[entry.name] = UnitFile(entry.name, match.group(1), text)
            else:
                foreign.append(entry.name)
        return ours, foreign


@dataclass
class UnitChange:
    written: list[str] = field(default_factory=list)  # new or changed
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # ours, of jobs no longer configured
    foreign: list[str] = field(default_factory=list)  # safehold-* units not ours, left alone
    systemctl: list[str] = field(default_factory=list)  # what was run, and what it said

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


def install_units(
    where: UnitDir, files: list[UnitFile], *, dry_run: bool = False, enable: bool = True
) -> UnitChange:
    """Make the folder hold exactly ``files`` of ours (others untouched)."""
    ours, foreign = where.read()
    wanted = {unit.name for unit in files}
    clash = sorted(wanted & set(foreign))
    if clash:
        raise UsageError(
            f"the {where.describe()} already holds {', '.join(clash)}, not written by safehold "
            "(no '# safehold-unit:' first line): it is left alone",
            hint="move or rename it, then run 'safehold schedule install --systemd' again",
        )
    change = UnitChange(foreign=foreign)
    for unit in files:
        old = ours.get(unit.name)
        (change.unchanged if old and old.text == unit.text else change.written).append(unit.name)
    change.removed = sorted(set(ours) - wanted)
    if dry_run:
        return change
    live = where.live
    if live and change.removed:
        stale = [name for name in change.removed if name.endswith(".timer")]
        if stale:
            _systemctl(where, change, "disable", "--now", *stale)
    _write_all(where, [unit for unit in files if unit.name in change.written])
    _delete(where, change.removed)
    if live:
        if change.changed:
            _systemctl(where, change, "daemon-reload")
        timers = [unit.name for unit in files if unit.name.endswith(".timer")]
        if enable and timers:
            _systemctl(where, change, "enable", "--now", *timers)
    return change


def remove_units(where: UnitDir, *, dry_run: bool = False) -> UnitChange:
    ours, foreign = where.read()
    change = UnitChange(removed=sorted(ours), foreign=foreign)
    if dry_run or not ours:
        return change
    if where.live:
        timers = [name for name in change.removed if name.endswith(".timer")]
        if timers:
            _systemctl(where, change, "disable", "--now", *timers)
    _delete(where, change.removed)
    if where.live:
        _systemctl(where, change, "daemon-reload")
    return change


def enabled_states(where: UnitDir, names: list[str]) -> dict[str, str]:
    """``systemctl is-enabled`` of each unit, on the live folder only (else nothing)."""
    if not names or not where.live:
        return {}
    done = _proc.run(["systemctl", *_mode(where), "is-enabled", *names], timeout=60)
    states = done.stdout.split()
    return dict(zip(names, states, strict=False)) if len(states) == len(names) else {}


def _write_all(where: UnitDir, files: list[UnitFile]) -> None:
    """All files or none: every one is written (and synced) under a temporary name first."""
    if not files:
        return
    staged: list[Staged] = []  # temp, final, what it replaces
    try:
        where.path.mkdir(parents=True, exist_ok=True)
        for unit in files:
            final = where.path / unit.name
            handle, name = tempfile.mkstemp(prefix=f".{unit.name}.", dir=where.path)
            staged.append((Path(name), final, _text(final) if final.exists() else None))
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(unit.text)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(name, 0o644)  # units are read by systemctl users; they hold no secrets
    except OSError as exc:
        for temp, _final, _old in staged:
            with contextlib.suppress(OSError):
                temp.unlink()
        raise UsageError(
            f"cannot write unit files into the {where.describe()}: {exc.strerror or exc}; "
            "nothing was changed",
            hint=_NOT_WRITABLE_HINT,
        ) from None
    done: list[Staged] = []
    try:
        for item in staged:
            os.replace(item[0], item[1])
            done.append(item)
    except OSError as exc:
        _undo(done, staged[len(done) :])
        raise UsageError(
            f"cannot put unit files in place in the {where.describe()}: {exc.strerror or exc}; "
            "the ones already renamed were put back",
            hint=_NOT_WRITABLE_HINT,
        ) from None
    _sync_dir(where.path)


def _undo(done: Iterable[Staged], left: Iterable[Staged]) -> None:
    for _temp, final, old in done:
        with contextlib.suppress(OSError):
            if old is None:
                final.unlink()
            else:
                final.write_text(old, encoding="utf-8")
    for temp, _final, _old in left:
        with contextlib.suppress(OSError):
            temp.unlink()


def _delete(where: UnitDir, names: list[str]) -> None:
    try:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (where.path / name).unlink()
            # 'systemctl enable' links a timer from timers.target.wants/: a link left to a
            # deleted unit is only noise (systemctl disable removes it on a live system).
            link = where.path / "timers.target.wants" / name
            if link.is_symlink() and not link.exists():
                link.unlink()
    except OSError as exc:
        raise UsageError(
            f"cannot delete unit files from the {where.describe()}: {exc.strerror or exc}",
            hint=_NOT_WRITABLE_HINT,
        ) from None
    if names:
        _sync_dir(where.path)


def _systemctl(where: UnitDir, change: UnitChange, *args: str) -> None:
    argv = ["systemctl", *_mode(where), *args]
    done = _proc.run(argv, timeout=120)
    said = (done.stderr or done.stdout).strip()
    result = "ok" if done.returncode == 0 else f"failed ({done.returncode})"
    change.systemctl.append(f"{' '.join(argv)}: {result}" + (f": {said}" if said else ""))


def _mode(where: UnitDir) -> list[str]:
    return ["--user"] if where.user_mode else []


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_NOT_WRITABLE_HINT = (
    "run it as root for /etc/systemd/system, use --user for your own units "
    "(~/.config/systemd/user), or --unit-dir DIR for a folder you can write"
)
