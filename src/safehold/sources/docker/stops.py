"""Stopping an application's containers as ``docker compose down`` does, and starting them
again as ``up`` does: in parallel, in the order of the compose project's ``depends_on``.

A container is stopped once every container that depends on it has stopped (a web front before
the API it calls, the API before its database), and started once every container it depends on
has started; everything else happens at once, so stopping N containers that ignore their stop
signal costs one stop timeout per level of dependencies, not N timeouts. The dependencies are
the labels docker compose v2 puts on its containers (``com.docker.compose.project``,
``...service``, ``...depends_on`` = ``svc:condition:restart,...``); only containers of one
project and in the set being stopped order each other, and a cycle (which compose refuses) is
stopped all at once rather than never.

A stop waits for the container to exit after its stop signal, then kills it. How long: the
container's ``org.safehold.stop-timeout`` label (whole seconds), else its own stop timeout
(``docker run --stop-timeout``, compose's ``stop_grace_period``), else ``[docker] stop_timeout``
(10 s, the default of docker and compose).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from docker.models.containers import Container

from ...errors import UsageError

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_DEPENDS_ON = "com.docker.compose.depends_on"
TIMEOUT_LABEL = "org.safehold.stop-timeout"
DEFAULT_TIMEOUT_S = 10
# Stops or starts in flight at once. Each holds one engine connection for its whole timeout;
# connect_docker keeps this many, and past the pool urllib3 warns on stderr for every request.
PARALLEL = 32

T = TypeVar("T")


@dataclass(frozen=True)
class Stop:
    container: Container
    timeout: int  # seconds between the stop signal and the kill


def stop_timeout(container: Container, default: int) -> int:
    """The seconds ``container`` is given to exit (see the module doc for which one wins)."""
    value = (container.labels or {}).get(TIMEOUT_LABEL)
    if value is not None:
        text = str(value).strip()
        if not text.isdigit():
            raise UsageError(
                f"container {container.name}: label {TIMEOUT_LABEL}={value!r} is not a number "
                "of seconds; nothing was stopped",
                hint=f"set it to whole seconds (e.g. {TIMEOUT_LABEL}=30) or remove it",
            )
        return int(text)
    own = (container.attrs.get("Config") or {}).get("StopTimeout")
    return int(own) if isinstance(own, int) and own >= 0 else default


def depends_on(containers: Sequence[Container]) -> dict[int, set[int]]:
    """For each container (by index), the indexes of the containers it depends on."""
    services: dict[tuple[str, str], list[int]] = {}
    for index, container in enumerate(containers):
        key = _service(container)
        if key is not None:
            services.setdefault(key, []).append(index)
    needs: dict[int, set[int]] = {index: set() for index in range(len(containers))}
    for index, container in enumerate(containers):
        key = _service(container)
        if key is None:
            continue
        wanted = str((container.labels or {}).get(COMPOSE_DEPENDS_ON) or "")
        for part in wanted.split(","):
            name = part.split(":", 1)[0].strip()
            if name and name != key[1]:
                needs[index].update(services.get((key[0], name), []))
    return needs


def dependents(needs: Mapping[int, set[int]]) -> dict[int, set[int]]:
    """The reverse of ``depends_on``: for each container, the ones that depend on it."""
    users: dict[int, set[int]] = {index: set() for index in needs}
    for index, wanted in needs.items():
        for other in wanted:
            users[other].add(index)
    return users


def plan_stops(containers: Sequence[Container], default: int) -> list[Stop]:
    """Each container with its timeout, dependents before their dependencies (so the reverse is
    an order to start them in). A bad timeout label is an error before anything stops."""
    timeouts = [stop_timeout(c, default) for c in containers]
    order = in_order(len(containers), dependents(depends_on(containers)))
    return [Stop(containers[i], timeouts[i]) for i in order]


def in_order(count: int, waits_for: Mapping[int, set[int]]) -> list[int]:
    """0..count-1 with each after the ones it waits for, otherwise as given (Kahn's)."""
    waiting = {i: set(waits_for.get(i, ())) & set(range(count)) for i in range(count)}
    order: list[int] = []
    while waiting:
        ready = [i for i, before in waiting.items() if not before] or sorted(waiting)  # a cycle
        for index in ready:
            del waiting[index]
            order.append(index)
        for before in waiting.values():
            before.difference_update(ready)
    return order


def run_ordered(
    items: Sequence[T],
    waits_for: Mapping[int, set[int]],
    act: Callable[[T], object],
    *,
    before: Callable[[T], None],
    after: Callable[[T, BaseException | None], None],
    halt_on_error: bool,
) -> None:
    """Run ``act`` on each item in threads, each once the items it waits for are done (done
    with an error counts as done). ``before``/``after`` run in the calling thread, so a sink
    never sees two events at once. ``halt_on_error``: after a failure nothing new begins.
    However this ends (also interrupted), it returns only when no ``act`` runs any more: a
    stop still in flight would otherwise be missing from what the caller starts again."""
    waiting = {i: set(waits_for.get(i, ())) & set(range(len(items))) for i in range(len(items))}
    running: dict[Future[object], int] = {}
    failed = False
    workers = max(1, min(PARALLEL, len(items)))
    with ThreadPoolExecutor(workers, thread_name_prefix="safehold-containers") as pool:
        try:
            while waiting or running:
                if not (failed and halt_on_error):
                    ready = [i for i, wanted in waiting.items() if not wanted]
                    if not ready and not running:
                        ready = sorted(waiting)  # a dependency cycle: no order to keep
                    for index in ready:
                        del waiting[index]
                        before(items[index])
                        running[pool.submit(act, items[index])] = index
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    index = running.pop(future)
                    error = future.exception()
                    failed = failed or error is not None
                    after(items[index], error)
                    for wanted in waiting.values():
                        wanted.discard(index)
        except BaseException:
            # Interrupted where nothing shields it (a library caller's Ctrl-C): nothing new
            # begins, and the ones in flight are still reported when they end.
            wait(list(running))
            for future, index in running.items():
                after(items[index], future.exception())
            raise


def _service(container: Container) -> tuple[str, str] | None:
    labels = container.labels or {}
    project, service = labels.get(COMPOSE_PROJECT), labels.get(COMPOSE_SERVICE)
    return (str(project), str(service)) if project and service else None
