"""Chunks in the order a stream needs them (an export, a dump), from a store that hands them
back pack by pack.

The list is taken a window at a time (``WINDOW`` bytes of chunks): the window's chunks are
asked for at once, so each pack is fetched once per window, and handed on in order. Chunks
are stored in the order they were first written, so a window covers few packs, each mostly
once. The next window is fetched on a thread while this one is written out: fetching and
decrypting overlap with the consumer (compression, a network upload).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from .chunks import Reading
from .entries import damaged

WINDOW = 64 << 20


def ordered_chunks(store: Reading, chunks: list[bytes], lengths: list[int]) -> Iterator[bytes]:
    """Each chunk's plaintext in list order (its length checked against ``lengths``)."""
    windows = list(_windows(lengths))
    if not windows:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="safehold-fetch") as pool:
        ahead: Future[dict[bytes, bytes]] = pool.submit(_fetch, store, chunks, windows[0])
        for number, (start, end) in enumerate(windows):
            got = ahead.result()
            if number + 1 < len(windows):
                ahead = pool.submit(_fetch, store, chunks, windows[number + 1])
            for index in range(start, end):
                data = got.get(chunks[index])
                if data is None or len(data) != lengths[index]:
                    raise damaged(f"chunk {chunks[index].hex()[:16]} is missing or the wrong size")
                yield data
            del got


def _windows(lengths: list[int]) -> Iterator[tuple[int, int]]:
    start, total = 0, 0
    for index, length in enumerate(lengths):
        if total and total + length > WINDOW:
            yield start, index
            start, total = index, 0
        total += length
    if start < len(lengths):
        yield start, len(lengths)


def _fetch(store: Reading, chunks: list[bytes], window: tuple[int, int]) -> dict[bytes, bytes]:
    wanted = list(dict.fromkeys(chunks[window[0] : window[1]]))
    return dict(store.read_blobs(wanted))
