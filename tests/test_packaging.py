"""safehold installs the ways users and packagers install it: a wheel that carries everything it
needs and declares dependency ranges, the lock CI installs from, and ``pipx install`` of the
checkout with that lock.

The builds run on a copy of the checkout's build inputs: setuptools builds in place (``build/``,
``*.egg-info``) and a stale ``build/lib`` would slip files into the wheel; other work in the
checkout must not race with it either.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from safehold import __version__
from safehold.cli.main import COMMANDS

from .conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.lock"
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "requirements.lock")


def declared() -> list[Requirement]:
    project = PYPROJECT["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def pins() -> dict[NormalizedName, Version]:
    lines = [ln.strip() for ln in LOCK.read_text().splitlines()]
    pairs = [ln.split("==") for ln in lines if ln and not ln.startswith("#")]
    assert all(len(pair) == 2 for pair in pairs), "the lock holds name==version lines only"
    return {canonicalize_name(name): Version(version) for name, version in pairs}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("checkout")
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src",
        tree / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    return tree


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # pip's own build isolation: the build backend comes from the index, as for any user.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("safehold-*.whl")
    return built


def test_the_wheel_carries_the_package_its_data_the_license_and_the_entry_point(
    wheel: Path, source: Path
) -> None:
    package = source / "src" / "safehold"
    # Every file of the package, data included: one missing from package-data breaks an
    # installed safehold while the editable checkout works.
    expected = {
        f"safehold/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*")
        if path.is_file()
    }
    assert list(package.glob("sandbox/*.sql")), "the sandbox's sample schema is package data"
    dist_info = f"safehold-{__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert expected - names == set()
        assert "safehold/py.typed" in names
        assert archive.read(f"{dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
    assert dict(entry_points["console_scripts"]) == {"safehold": "safehold.cli.main:main"}
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    assert {canonicalize_name(r.name) for r in requires} == {
        canonicalize_name(r.name) for r in declared()
    }
    for requirement in requires:
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators, f"{requirement}: a floor packagers can check against"
        assert not operators & {"==", "===", "~="}, f"{requirement}: a pin, not a range"


def test_the_lock_pins_every_dependency_inside_its_range() -> None:
    locked = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run scripts/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock has {name}=={locked[name]}, outside {requirement}: "
            "run scripts/lock.sh"
        )
    assert canonicalize_name("psycopg-binary") in locked  # the extra's own package
    assert canonicalize_name("safehold") not in locked


def test_the_venv_runs_the_locked_versions() -> None:
    """scripts/bootstrap.sh installs with the lock as constraints and re-installs when it
    changes, so the tools CI runs are the pinned ones."""
    installed: dict[NormalizedName, Version | None] = {}
    for name in pins():
        try:
            installed[name] = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            installed[name] = None
    assert installed == pins(), "the venv differs from requirements.lock: run scripts/bootstrap.sh"


# ~20 s here: a fresh venv, pipx's shared libraries (pip from the index), a build and the
# install of every runtime dependency
@pytest.mark.slow
def test_pipx_installs_the_checkout_with_the_lock(source: Path, tmp_path: Path) -> None:
    home, bin_dir = tmp_path / "pipx", tmp_path / "bin"
    env = {
        **os.environ,  # pip's index settings (PIP_*, pip.conf) are the machine's: keep them
        "PIPX_HOME": str(home),
        "PIPX_BIN_DIR": str(bin_dir),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
        "USE_EMOJI": "0",
    }
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipx",
            "install",
            "--pip-args",
            f"-c {source / 'requirements.lock'}",
            str(source),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    took = time.monotonic() - started
    print(f"pipx install took {took:.1f} s")

    version = subprocess.run(
        [bin_dir / "safehold", "--version"], capture_output=True, text=True, check=False
    )
    assert version.stdout == f"safehold, version {__version__}\n"
    usage = subprocess.run(
        [bin_dir / "safehold", "--help"], capture_output=True, text=True, check=False
    ).stdout
    assert usage.startswith("Usage: safehold [OPTIONS] COMMAND [ARGS]...")
    section = usage.split("Commands:", 1)[1].split("\n\n", 1)[0]  # the examples follow it
    listed = {line.split()[0] for line in section.splitlines() if line}
    assert listed == set(COMMANDS)

    # Every distribution in the app's venv is at the lock's version: the constraints applied.
    python = home / "venvs" / "safehold" / "bin" / "python"
    inventory = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m, json;"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = {canonicalize_name(n): Version(v) for n, v in json.loads(inventory).items()}
    assert versions.pop(canonicalize_name("safehold")) == Version(__version__)
    locked = pins()
    assert {n: v for n, v in versions.items() if n in locked} == {
        n: locked[n] for n in versions if n in locked
    }
    assert set(versions) - set(locked) <= {"pip", "setuptools", "wheel"}  # pipx's shared libs
