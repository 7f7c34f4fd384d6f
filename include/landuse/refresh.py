"""The yearly refresh: which NAIP vintages of which counties still need processing, how the
work fans out, and the per-county-year guard that makes it happen once.

A vintage is processed once its predictions are committed. A run that covers the years
``[start_year, end_year)`` (its data interval) takes every vintage of those years not yet
processed, and also any older vintage newer than the last processed one (NAIP is often
published a year or more after it was flown). Backfills over years therefore process each
year once, in order, and a rerun finds nothing left to do.

Runs may overlap (a backfill's runs are not bound by the DAG's ``max_active_runs``), so two
runs can plan the same county-year. The guard is a lease per county-year held in storage
(:func:`county_year_lease`): whoever holds it checks storage for committed predictions
and processes the vintage only if there are none; a second run waits for the lease and
then finds the vintage done. Leases are generation-numbered objects created exclusively
(a local ``O_EXCL`` create or a blob upload with ``If-None-Match: *``), so of two runs
claiming at once exactly one wins, and a lease whose holder stopped heart-beating (a killed
worker) is taken over after ``stale_after`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fsspec.implementations.local import LocalFileSystem

from landuse import storage
from landuse.counties import County
from landuse.naip import NaipCatalog

log = logging.getLogger(__name__)
T = TypeVar("T")

STALE_AFTER_S = 600.0  # no heartbeat for this long: the holder is gone
HEARTBEAT_S = 30.0
POLL_S = 5.0


def available_vintages(county: County) -> list[int]:
    """NAIP years the catalogue has for the county (scenes meeting its bounding box)."""
    scenes = NaipCatalog(county.naip).scenes(bbox=county.bbox, state=county.state)
    return sorted({s.year for s in scenes})


def is_processed(root: str, county: str, year: int) -> bool:
    """Whether the county-year's predictions are committed (scoring's commit: the object
    exists only once whole)."""
    from landuse.scoring.spark import predictions_url  # pandas and the model code: lazily

    return storage.exists(predictions_url(storage.join(root, "predictions"), county, year))


def processed_vintages(root: str, county: str) -> set[int]:
    """Years whose predictions are committed for the county."""
    return processed_by_county(root, county).get(county, set())


def processed_by_county(root: str, county: str = "*") -> dict[str, set[int]]:
    """Committed years per county, from one listing (not one per county: a national plan
    covers 3,143 counties)."""
    pattern = storage.join(root, "predictions", f"county={county}", "year=*",
                           "predictions.parquet")
    done: dict[str, set[int]] = {}
    for url in storage.glob(pattern):
        name = url.rsplit("/county=", 1)[1].split("/", 1)[0]
        year = int(url.rsplit("/year=", 1)[1].split("/", 1)[0])
        done.setdefault(name, set()).add(year)
    return done


def vintages_to_process(available: Iterable[int], processed: set[int], start_year: int,
                        end_year: int) -> list[int]:
    """The vintages a run over ``[start_year, end_year)`` should process (see module doc)."""
    last = max(processed, default=None)
    return sorted(
        y for y in set(available)
        if y < end_year and y not in processed
        and (y >= start_year or last is None or y > last)
    )


def plan_refresh(counties: Iterable[County], root: str, start_year: int,
                 end_year: int, states: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One ``{"county", "years"}`` job per county with vintages to process (ascending), for
    counties of ``states`` (all when empty).

    A county's years stay in one job, in order, so that each year's change report can
    compare with the year before; counties are what fan out.
    """
    wanted = {s.lower() for s in states}
    done = processed_by_county(root)
    jobs: list[dict[str, Any]] = []
    for county in counties:
        if wanted and (county.state or "").lower() not in wanted:
            continue
        todo = vintages_to_process(available_vintages(county), done.get(county.name, set()),
                                   start_year, end_year)
        if todo:
            jobs.append({"county": county.name, "years": todo})
    return jobs


def batches(items: Sequence[T], max_batches: int) -> list[list[T]]:
    """Split ``items`` into at most ``max_batches`` contiguous batches of near-equal size:
    one item per batch while they fit, so that a mapped task gets one item each up to
    Airflow's ``max_map_length`` and batches beyond it.

    Raises:
        ValueError: ``max_batches`` is below 1.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be at least 1, got {max_batches}")
    count = min(len(items), max_batches)
    if count == 0:
        return []
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return out


@dataclass
class Lease:
    """A held county-year lease: its object's URL and the record written there."""

    url: str
    record: dict[str, Any]


def lease_folder(root: str, county: str, year: int) -> str:
    """The folder of a county-year's lease generations (``000001.json``, ...)."""
    return storage.join(root, "refresh", "leases", f"county={storage.safe_name(county)}",
                        f"year={year}")


def lease_history(root: str, county: str, year: int) -> list[dict[str, Any]]:
    """Every lease record of a county-year, oldest first (who held it, when, what they did)."""
    return [json.loads(storage.read_bytes(u)) for u in _generations(root, county, year)]


@contextmanager
def county_year_lease(root: str, county: str, year: int, owner: str, *,
                      stale_after: float = STALE_AFTER_S, heartbeat: float = HEARTBEAT_S,
                      poll: float = POLL_S) -> Iterator[Lease]:
    """Hold the county-year's lease for the block: wait while another owner holds a live
    one, then claim the next generation exclusively; heart-beat while held; release on
    exit (also on error, so a waiting run can take over).

    ``owner`` names the claimant (for Airflow: dag/run/task/map index): the same owner
    takes over its own lease at once (a retry of a killed try). Set ``lease.record
    ["outcome"]`` in the block to record what was done.
    """
    lease = _claim(root, county, year, owner, stale_after, poll)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lease, stop, heartbeat), daemon=True,
                            name=f"lease-{county}-{year}")
    beat.start()
    try:
        yield lease
    finally:
        stop.set()
        beat.join()
        lease.record["released_at"] = time.time()
        storage.write_bytes(lease.url, json.dumps(lease.record).encode())


def _generations(root: str, county: str, year: int) -> list[str]:
    return storage.glob(storage.join(lease_folder(root, county, year), "[0-9]*.json"))


def _claim(root: str, county: str, year: int, owner: str, stale_after: float,
           poll: float) -> Lease:
    waited_for = None
    while True:
        urls = _generations(root, county, year)
        if urls:
            latest = json.loads(storage.read_bytes(urls[-1]))
            live = (latest.get("released_at") is None
                    and time.time() - float(latest["heartbeat_at"]) < stale_after)
            if live and latest["owner"] != owner:
                if waited_for != latest["owner"]:
                    log.info("%s %d: held by %s, waiting", county, year, latest["owner"])
                    waited_for = latest["owner"]
                time.sleep(poll)
                continue
            if live or latest.get("released_at") is None:
                log.warning("%s %d: taking over the lease of %s (%s)", county, year,
                            latest["owner"], "same owner" if live else "stale")
        generation = int(urls[-1].rsplit("/", 1)[1].split(".", 1)[0]) + 1 if urls else 1
        now = time.time()
        record = {"county": county, "year": year, "owner": owner, "generation": generation,
                  "claimed_at": now, "heartbeat_at": now, "released_at": None}
        url = storage.join(lease_folder(root, county, year), f"{generation:06d}.json")
        if _create_exclusive(url, json.dumps(record).encode()):
            return Lease(url, record)
        # Another claimant won this generation: look again.


def _heartbeat(lease: Lease, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        lease.record["heartbeat_at"] = time.time()
        try:
            storage.write_bytes(lease.url, json.dumps(lease.record).encode())
        except Exception:  # a missed beat is not fatal; stale_after is many beats
            log.warning("cannot renew the lease %s", lease.url, exc_info=True)


def _create_exclusive(url: str, data: bytes) -> bool:
    """Create an object only if none exists: True if this call created it."""
    fs, path = storage.filesystem(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Written whole in a temporary file, then linked: a reader never sees it half
        # written, and link() fails if the name exists (atomic on POSIX).
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    try:  # adlfs uploads "xb" with If-None-Match: *: the store decides who was first
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
