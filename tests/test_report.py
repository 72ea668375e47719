"""The report page from a real repository (backups of a real database and folders, a verify, a
drill, damaged backups), its content, and how it renders in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from safehold.errors import IntegrityError, SafeholdError
from safehold.model import Objectives
from safehold.operations.checks.drill import drill
from safehold.operations.checks.verify import verify_backup
from safehold.operations.database.backup import BackupOptions, backup_database
from safehold.operations.report.gather import Report, gather_report, rpo_track
from safehold.operations.report.page import render_html, write_html
from safehold.operations.system.backup import SetOptions, backup_set
from safehold.operations.volumes.folder import backup_tree
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, execute

GOALS = Objectives()  # RPO 24 h; RTO 30 / 60 / 120 min
WIDTH, HEIGHT = 1280, 2000
EXTERNAL = re.compile(r"https?://|<script|<link|<img|<iframe|\bsrc=|@import|url\(", re.I)
T0 = datetime(2024, 12, 1, tzinfo=UTC)


@dataclass
class Scene:
    repo: LocalStorage
    failed_verify: str  # a good-sized backup whose content was changed, then verified
    damaged: str  # a truncated backup
    verified: str  # the newest database backup, verified and drilled


def build_scene(db: PgTarget, repo: LocalStorage, tmp_path: Path) -> Scene:
    """Three database backups (growing), two of a folder, a full-system set (database + that
    folder), a set that failed (incomplete), one backup of another folder; a passing verify, a
    drill of everything and one of the set; then one backup corrupted (its verify fails), one
    truncated (damaged) and a drill of that one (fails)."""
    for _ in range(3):
        backup_database(db, repo)
        execute(db, "CREATE TABLE IF NOT EXISTS pad (t text)")
        execute(db, "INSERT INTO pad SELECT md5(g::text) FROM generate_series(1, 20000) g")
    appdata = folder(tmp_path / "appdata", {"a.txt": b"alpha"})
    first = backup_tree(appdata, "appdata", repo)
    (appdata / "b.bin").write_bytes(os.urandom(64 * 1024))
    backup_tree(appdata, "appdata", repo)
    options = SetOptions(BackupOptions())
    made = backup_set(
        repo, database=db, client=None, volumes=[], options=options, folders={"appdata": appdata}
    )
    media = folder(tmp_path / "media", {"m.bin": os.urandom(16 * 1024)})
    with pytest.raises(SafeholdError):  # the database member fails: no set record
        backup_set(
            repo,
            database=db.with_db("safehold_no_such_database"),
            client=None,
            volumes=[],
            options=options,
            folders={"media": media},
        )
    uploads = folder(tmp_path / "uploads", {"u.bin": os.urandom(32 * 1024)})
    damaged = backup_tree(uploads, "uploads", repo)
    newest = next(m for m in made.members if m.startswith("db_backup_"))
    assert verify_backup(repo, newest, "quick").ok
    assert drill(repo, "latest", server=db, live_database=db.dbname).outcome == "ok"
    assert drill(repo, "set:latest", server=db, live_database=db.dbname).outcome == "ok"
    # The first appdata backup: same size, other bytes -> its verify fails.
    path = repo.path(first.artifact)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not verify_backup(repo, first.artifact, "quick").ok
    # The uploads backup: truncated -> damaged, and a drill of it fails.
    path = repo.path(damaged.artifact)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IntegrityError):
        drill(repo, damaged.artifact, server=None)
    return Scene(repo, first.artifact, damaged.artifact, newest)


def folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


def report_of(scene: Scene, db: PgTarget) -> Report:
    return gather_report(scene.repo, now=datetime.now(UTC), objectives=GOALS, database=db.dbname)


def test_report_page_from_a_real_repository_renders_in_chromium(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    scene = build_scene(db, repo, tmp_path)
    report = report_of(scene, db)
    page = render_html(report, [db.password])

    targets = set(report.targets)
    assert targets == {("database", db.dbname)} | {
        ("volume", name) for name in ("appdata", "media", "uploads")
    }
    assert (len(report.backups), len(report.drills), len(report.verifies)) == (9, 3, 2)
    for name in (db.dbname, "appdata", "media", "uploads", scene.verified):
        assert name in page
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert report.status.level == "critical"
    assert 'id="overall" class="badge big crit">CRITICAL<' in page
    # Failures, newest first: the failed drill, the failed verify, the damaged file, the set.
    failures = [(f.what, f.subject) for f in report.failures]
    assert failures[0] == ("drill", scene.damaged)
    assert ("verify", scene.failed_verify) in failures
    assert ("backup", scene.damaged) in failures
    (incomplete,) = [s for s in report.sets if s.status == "incomplete"]
    assert ("set", incomplete.id) in failures and len(failures) == 4
    section = page[page.index('<section id="failures">') : page.index('<section id="rpo">')]
    assert section.count("<tr>") == 1 + len(failures)
    assert re.search(rf"<td>{re.escape(scene.damaged)}</td><td>damaged: 100 bytes", section)
    assert f"<td>{scene.failed_verify}</td><td>quick verify failed" in section
    # One chart per target for size, duration and RPO, and the drill chart with a set's total.
    charts = 3 * len(targets) + 1
    assert page.count('<svg class="chart"') == charts
    for label in ("RTO database 30 min", "RTO volumes 60 min", "RTO full system 120 min"):
        assert label in page
    assert "RPO 24.0 h" in page and "dot d-full" in page and 'id="sets"' in page
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert db.password and db.password not in page
    assert "prefers-color-scheme:dark" in page

    out = write_html(tmp_path / "report.html", page)
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []
    shot = screenshot(out, tmp_path / "report.png")
    assert png_size(shot) == (WIDTH, HEIGHT)
    pixels = decode_png(shot)
    assert len(colours(pixels)) > 50  # text, charts and badges: far from a blank page
    assert has_colour(pixels, (207, 34, 46))  # the CRITICAL badge (and failure badges)
    dom = dump_dom(out, tmp_path)
    assert dom.count("<svg") == charts and "RTO full system 120 min" in dom


def test_rpo_violation_shows_red_and_dark_mode_renders_dark(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    backup_database(db, repo)
    newest = backup_database(db, repo)
    later = newest.started_at + timedelta(hours=30)
    report = gather_report(repo, now=later, objectives=GOALS, database=db.dbname)

    (track,) = report.rpo
    ((begin, end),) = track.over
    assert end == later and abs((begin - newest.started_at) - timedelta(hours=24)) < timedelta(
        seconds=1
    )
    assert track.compliant_share == pytest.approx(24 / 30, abs=1e-3)
    page = render_html(report)
    assert page.count('<rect class="over"') == 1 and "over the RPO from" in page
    assert "newest backup is 30.0 h old (RPO 24.0 h)" in page
    out = write_html(tmp_path / "late.html", page)
    light = decode_png(screenshot(out, tmp_path / "light.png"))
    dark = decode_png(screenshot(out, tmp_path / "dark.png", dark=True))
    assert sum(light[5][:3]) > 700 and sum(dark[5][:3]) < 120  # background, top left
    assert has_colour(light, (207, 34, 46)) and has_colour(dark, (248, 81, 73))


def test_empty_repository_gives_a_clear_page(repo: LocalStorage, tmp_path: Path) -> None:
    report = gather_report(repo, now=T0, objectives=GOALS, database="container_app")
    assert report.empty and report.failures == [] and report.backups == []
    page = render_html(report)
    assert 'id="nothing"' in page and "Nothing yet." in page and "safehold backup" in page
    assert "container_app" in page and "no good backup" in page
    hidden = render_html(report, secrets=["container_app"])  # any secret in any text: redacted
    assert "container_app" not in hidden and "database [redacted]" in hidden
    out = write_html(tmp_path / "empty.html", page)
    pixels = decode_png(screenshot(out, tmp_path / "empty.png"))
    assert len(colours(pixels)) > 10


def test_rpo_track_periods_gaps_and_share() -> None:
    hours = [T0 + timedelta(hours=h) for h in (0, 10, 40)]
    track = rpo_track("database", "app", hours, T0, T0 + timedelta(hours=50), GOALS)
    assert track.over == [(T0 + timedelta(hours=34), T0 + timedelta(hours=40))]
    assert track.longest_gap_s == 30 * 3600
    assert track.compliant_share == pytest.approx(1 - 6 / 50)
    early = T0 - timedelta(hours=5)
    before = rpo_track("volume", "v", hours, early, T0 + timedelta(hours=1), GOALS)
    assert before.segments[0][2] is None and before.over == []  # no backup yet: not "over"
    assert before.compliant_share == 1.0
    assert rpo_track("volume", "v", [], T0, T0 + timedelta(days=2), GOALS).longest_gap_s is None


def test_cli_writes_the_page_and_prints_the_data(
    db: PgTarget, repo: LocalStorage, run_cli: CliRunner, tmp_path: Path
) -> None:
    backup_database(db, repo)
    out = tmp_path / "page.html"

    result = run_cli("report", "--html", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert out.stat().st_mode & 0o777 == 0o644
    assert db.password and db.password not in out.read_text()
    assert db.dbname in out.read_text()

    result = run_cli("report", "--html", str(out), "--json", "--days", "7")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["html"] == str(out) and data["window"]["days"] == 7
    assert data["status"]["level"] == "ok" and len(data["backups"]) == 1
    assert data["backups"][0]["target"] == db.dbname and data["backups"][0]["size"] > 0
    assert db.password not in result.stdout and not EXTERNAL.search(result.stdout)

    result = run_cli("report")
    assert result.returncode == 2 and "--html" in result.stderr
    result = run_cli("report", "--html", str(tmp_path))
    assert result.returncode != 0


# --- headless Chromium and a PNG reader (no imaging library) -------------------------------------


def chromium() -> str:
    found = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    if found is None:
        # A missing browser is a missing service: fail, never skip (install-deps installs it).
        pytest.fail(
            "chromium is not installed (scripts/install-deps.sh installs it)", pytrace=False
        )
    return found


def _browser(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    argv += [f"--user-data-dir={profile}", "--no-first-run", "--force-color-profile=srgb"]
    result = subprocess.run(
        argv + args, capture_output=True, text=True, timeout=180, check=False, cwd=profile.parent
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def screenshot(page: Path, png: Path, *, dark: bool = False) -> Path:
    extra = ["--force-dark-mode"] if dark else []
    _browser(
        [*extra, f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri()],
        png.with_suffix(".profile"),
    )
    assert png.exists() and png.stat().st_size > 0
    return png


def dump_dom(page: Path, tmp_path: Path) -> str:
    return _browser(["--dump-dom", page.as_uri()], tmp_path / "dom.profile").stdout


def png_size(png: Path) -> tuple[int, int]:
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def decode_png(png: Path) -> list[bytes]:
    """Rows of RGB(A) bytes of an 8-bit truecolour PNG (what Chromium writes)."""
    data, pos, idat = png.read_bytes(), 8, bytearray()
    width = height = depth = colour = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind in (1, 3, 4):
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                up, corner = prev[x], (prev[x - bpp] if x >= bpp else 0)
                if kind == 1:
                    line[x] = (line[x] + left) & 255
                elif kind == 3:
                    line[x] = (line[x] + (left + up) // 2) & 255
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                    line[x] = (line[x] + pred) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(_rgb(line)))
        prev = line
    return rows


def _rgb(line: bytearray) -> bytearray:
    out = bytearray(len(line) // 4 * 3)
    for channel in range(3):
        out[channel::3] = line[channel::4]
    return out


def colours(rows: list[bytes]) -> set[bytes]:
    return {row[i : i + 3] for row in rows[::4] for i in range(0, len(row), 12)}


def has_colour(rows: list[bytes], rgb: tuple[int, int, int]) -> bool:
    """Exactly this colour somewhere (flat fills render exactly with an sRGB profile)."""
    target = bytes(rgb)
    for row in rows:
        at = row.find(target)
        while at != -1:
            if at % 3 == 0:
                return True
            at = row.find(target, at + 1)
    return False
