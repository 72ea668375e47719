"""The journal of what a run leaves behind: entries of dead writers are resolved by the next
run, a live writer's are left alone, a failing resolver keeps its entry for the next time."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from safehold.errors import SafeholdError
from safehold.model import Event
from safehold.operations import journal
from safehold.storage import LocalStorage


def dead_pid() -> tuple[int, str]:
    """A pid whose process has exited (and its start time while it lived)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = journal.process_start(child.pid)
    child.kill()
    child.wait()
    return child.pid, started


def as_written_by(storage: LocalStorage, entry: journal.Entry, **changes: object) -> None:
    moved = dataclasses.replace(entry, **changes)  # type: ignore[arg-type]
    storage.put_bytes(entry.key, json.dumps(moved.to_json()).encode())


def test_entries_of_dead_writers_are_resolved_once_and_removed(repo: LocalStorage) -> None:
    seen: list[dict[str, object]] = []

    @journal.resolver("test_thing")
    def finish(entry: journal.Entry, _context: journal.Context) -> str:
        seen.append(entry.data)
        return f"dropped {entry.data['name']}"

    pid, started = dead_pid()
    gone = journal.record(repo, "test_thing", {"name": "staging_1"}, "safehold restore")
    as_written_by(repo, gone, pid=pid, started=started)
    live = journal.record(repo, "test_thing", {"name": "staging_2"}, "safehold restore")
    elsewhere = journal.record(repo, "test_thing", {"name": "staging_3"}, "safehold restore")
    as_written_by(repo, elsewhere, pid=pid, started=started, host="another-host")
    reused = journal.record(repo, "test_thing", {"name": "staging_4"}, "safehold restore")
    as_written_by(repo, reused, started="1")  # our pid, but another process's start time
    events: list[Event] = []

    resolved = journal.recover(journal.Context(repo), events.append)

    assert resolved == 2
    assert sorted(str(d["name"]) for d in seen) == ["staging_1", "staging_4"]
    left = {e.data["name"] for e in journal.entries(repo)}
    assert left == {"staging_2", "staging_3"}  # a running writer's, and another host's
    assert [e.level for e in events] == ["warning", "warning"]
    assert any("interrupted safehold restore" in e.message and "dropped staging_1" in e.message
               for e in events)  # fmt: skip
    journal.done(repo, live)
    journal.done(repo, elsewhere)
    assert journal.recover(journal.Context(repo)) == 0


def test_a_failing_resolver_keeps_its_entry_and_says_so(repo: LocalStorage) -> None:
    @journal.resolver("test_stubborn")
    def refuse(entry: journal.Entry, context: journal.Context) -> str:
        context.get("pg")  # this command has no database: the resolver cannot run now
        return "never"

    pid, started = dead_pid()
    entry = journal.record(repo, "test_stubborn", {}, "safehold backup")
    as_written_by(repo, entry, pid=pid, started=started)
    events: list[Event] = []

    assert journal.recover(journal.Context(repo), events.append) == 0

    assert [e.kind for e in journal.entries(repo)] == ["test_stubborn"]
    assert "will try again" in events[0].message


def test_recorded_crosses_out_on_success_and_on_error(repo: LocalStorage) -> None:
    with journal.recorded(repo, "test_thing", {"name": "a"}, "safehold restore") as entry:
        assert repo.exists(entry.key)
    assert journal.entries(repo) == []
    try:
        with journal.recorded(repo, "test_thing", {"name": "b"}, "safehold restore"):
            raise SafeholdError("the block failed and cleaned up itself")
    except SafeholdError:
        pass
    assert journal.entries(repo) == []


def test_kinds_registered_last_are_resolved_after_the_others(repo: LocalStorage) -> None:
    """Containers stopped by a killed restore start only once the volume swap it left is
    settled: an entry written earlier but registered ``last`` waits for the others."""
    order: list[str] = []

    @journal.resolver("test_containers", last=True)
    def start(entry: journal.Entry, _context: journal.Context) -> str:
        order.append(entry.kind)
        return "started"

    @journal.resolver("test_swap")
    def settle(entry: journal.Entry, _context: journal.Context) -> str:
        order.append(entry.kind)
        return "settled"

    pid, started = dead_pid()
    for kind in ("test_containers", "test_swap"):  # the containers' entry is the older one
        as_written_by(repo, journal.record(repo, kind, {}, "safehold restore"), pid=pid,
                      started=started)  # fmt: skip

    assert journal.recover(journal.Context(repo)) == 2
    assert order == ["test_swap", "test_containers"]
