"""R6 probe: resident memory added per cached service token, measured in a fresh process.

Run by the harness as ``python -m bench.memory --entries N --token-length L``; prints one JSON
object. It fills a real ``broker.cache.TokenCache`` through ``get_or_mint`` with N entries whose
keys and tokens have realistic sizes and realistic sharing:

- issuer: one shared string (the broker keys entries with the configured issuer's own string);
- subject: ``user-000123`` style, fresh per entry;
- digest: 32 raw SHA-256 bytes, fresh per entry;
- revision: 16 hex characters, ONE object shared by every entry (the loaded policy set's);
- token: L ASCII characters, fresh per entry (L is a real emulator token's length);
- expiry and mint time: fresh floats per entry.

RSS comes from ``/proc/self/statm`` (resident pages x page size) after ``gc.collect()``, taken
once before the fill and once after it, with nothing but the cache holding the new objects. A
small warm-up cache is filled first and kept alive, so one-time allocations are not counted and
its memory is not reused by the measured fill. ``sys.getsizeof`` of one entry's own objects is
reported next to it, so the container overhead (cachetools' dicts and LRU order) is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

from broker.cache import CachedToken, CacheKey, TokenCache

ISSUER: Final = "https://idp.bench.invalid/"
REVISION: Final = "3f1c9a7e5b2d8c4f"
WARMUP_ENTRIES: Final = 100
TOKEN_LIFETIME_SECONDS: Final = 900.0


@dataclass(frozen=True, slots=True)
class FakeMint:
    token: str
    expires_at: float


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def make_key(index: int, revision: str) -> CacheKey:
    subject = f"user-{index:06d}"
    digest = hashlib.sha256(subject.encode()).digest()
    # The broker's keys share one issuer string (the configured issuer's), as here.
    return CacheKey(ISSUER, subject, digest, revision)


def make_token(index: int, filler: str) -> str:
    prefix = f"emu1.{index:010d}"
    return prefix + filler[len(prefix) :]


async def fill(cache: TokenCache, first: int, count: int, revision: str, filler: str) -> None:
    for index in range(first, first + count):
        token = make_token(index, filler)

        async def mint(token: str = token) -> FakeMint:
            return FakeMint(token, time.time() + TOKEN_LIFETIME_SECONDS)

        await cache.get_or_mint(make_key(index, revision), mint)
    await asyncio.sleep(0)  # let the last mint's done-callback drop its in-flight task


def entry_object_bytes(token_length: int, revision: str) -> dict[str, int]:
    """``sys.getsizeof`` of the objects one entry owns (the revision is shared, so excluded)."""
    filler = "x" * token_length
    key = make_key(0, revision)
    entry = CachedToken(make_token(0, filler), time.time(), time.time())
    return {
        "token_string": sys.getsizeof(entry.token),
        "key_tuple": sys.getsizeof(key),
        "key_strings": sum(sys.getsizeof(part) for part in key[:3]),
        "cached_token_object": sys.getsizeof(entry),
        "floats": 2 * sys.getsizeof(entry.expires_at),
    }


async def measure(entries: int, token_length: int) -> dict[str, Any]:
    revision = (REVISION + " ")[:-1]  # one object, like PolicySet.revision
    filler = "x" * token_length
    warm = TokenCache(max_entries=WARMUP_ENTRIES, clock=time.time)
    await fill(warm, 0, WARMUP_ENTRIES, revision, filler)  # kept alive: its memory is not reused
    cache = TokenCache(max_entries=entries, clock=time.time)
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    await fill(cache, 0, entries, revision, filler)
    fill_seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    if len(warm) != WARMUP_ENTRIES or len(cache) != entries or cache.stats.mints != entries:
        raise SystemExit(f"cache holds {len(cache)} entries after {cache.stats.mints} mints")
    objects = entry_object_bytes(token_length, revision)
    own = sum(objects.values())
    per_token = (after - before) / entries
    return {
        "entries": entries,
        "token_length": token_length,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_bytes": after - before,
        "bytes_per_token": per_token,
        "token_string_bytes": objects["token_string"],
        "entry_objects": objects,
        "entry_objects_bytes": own,
        "container_overhead_bytes": per_token - own,
        "fill_seconds": fill_seconds,
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--entries", type=int, required=True)
    parser.add_argument("--token-length", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.entries, args.token_length))))


if __name__ == "__main__":
    main()
