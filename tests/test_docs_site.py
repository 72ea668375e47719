"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing page or
anchor, a page left out of the nav fail it), its generated reference covers the code, and every
``safehold COMMAND --option`` the README and the pages name exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safehold import config

from .conftest import ROOT
from .docs_support import DOCS, command_paths, doc_files, invocations, reference_hook, resolve

README = ROOT / "README.md"
# Words that start like a metric but are not one: staging and drill database names, the WAL
# read-ahead folder.
NOT_METRICS = {"safehold_staging_", "safehold_drill_", "safehold_wal_spool"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "WARNING" not in result.stderr, result.stderr[-5000:]
    return out


def test_the_site_builds_strict_with_every_page(site: Path) -> None:
    pages = {
        str(p.relative_to(DOCS).with_suffix(""))
        for p in DOCS.rglob("*.md")
        if "hooks" not in p.relative_to(DOCS).parts
    }
    generated = {u.removesuffix(".md") for u in reference_hook().PAGES}
    for page in sorted(pages | generated):
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"{page} was not built"
    assert not (site / "hooks").exists(), "the hook was published as a page"


def test_the_generated_reference_covers_the_code(site: Path) -> None:
    commands = (site / "reference" / "commands" / "index.html").read_text()
    for path in command_paths():
        anchor = "-".join(("safehold", *path))
        assert f'id="{anchor}"' in commands, f"no section for safehold {' '.join(path)}"
        assert f"Usage: safehold {' '.join(path)}" in commands
    keys = (site / "reference" / "config" / "index.html").read_text()
    for key in config.all_keys():
        assert f"<code>{key}</code>" in keys, f"config key {key} missing from the reference"
        for env in config.env_names(key):
            assert f"<code>{env}</code>" in keys
    codes = (site / "reference" / "exit-codes" / "index.html").read_text()
    assert all(f"<td>{code}</td>" in codes for code in range(10))
    assert "130 interrupted by SIGINT" in codes.replace("\n", " ")
    metrics = (site / "reference" / "metrics" / "index.html").read_text()
    for name in _metric_names():
        assert f"<code>{name}</code>" in metrics


def test_every_command_and_option_the_docs_name_exists() -> None:
    problems = []
    named = 0
    for path in doc_files():
        for found in invocations(path):
            named += 1
            problems += [f"{found.where}: {p}" for p in resolve(found.words)[1]]
    assert not problems, "\n".join(problems)
    assert named > 300  # the parser still finds the command lines


def test_the_checker_names_the_file_and_line_of_a_wrong_command(tmp_path: Path) -> None:
    page = ROOT / "docs" / "example.md"  # never written: the text is given
    text = (
        "Run `safehold bakup` or `safehold backup --nope`.\n\n"
        "```sh\n"
        "0 2 * * * cd /opt/app && /opt/app/.venv/bin/safehold verify --levl full -q\n"
        "FOO=1 safehold pitr restore --to-time T --target-dir DIR \\\n"
        "    --keep-runing\n"
        "safehold COMMAND --help     # a placeholder is not checked\n"
        "echo safehold list          # not a safehold command line\n"
        "```\n"
    )
    problems = [
        f"{found.where}: {p}" for found in invocations(page, text) for p in resolve(found.words)[1]
    ]
    assert problems == [
        "docs/example.md:1: 'safehold bakup' is not a command",
        "docs/example.md:1: 'safehold backup' has no option --nope",
        "docs/example.md:4: 'safehold verify' has no option --levl",
        "docs/example.md:5: 'safehold pitr restore' has no option --keep-runing",
    ]


def test_metric_names_in_the_pages_are_the_codes() -> None:
    known = _metric_names()
    stale = []
    for path in doc_files():
        if path.name == "metrics-changes.md":  # old names, on purpose
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for word in re.findall(r"(?<![\w/*.-])safehold_[a-z_]+", line):
                if word not in known and not word.startswith(tuple(NOT_METRICS)):
                    stale.append(f"{path.relative_to(ROOT)}:{number}: {word}")
    assert not stale, "not a metric safehold writes:\n" + "\n".join(stale)


def test_the_readme_is_short_starts_with_the_two_commands_and_links_to_real_files() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 200
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[0] for line in first_block] == ["./scripts/demo.sh", "./scripts/test.sh"]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def _metric_names() -> set[str]:
    """The metric names the reference page lists, as the code builds them."""
    page = reference_hook().metrics_page()
    return set(re.findall(r"^\| `(safehold_[a-z_]+)` \|", page, re.MULTILINE))
