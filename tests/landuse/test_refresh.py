"""Which NAIP vintages a refresh run processes, how counties fan out, and the
per-county-year lease that makes overlapping runs process each vintage once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from landuse import counties, storage
from landuse.refresh import (
    available_vintages,
    batches,
    county_year_lease,
    is_processed,
    lease_history,
    plan_refresh,
    processed_by_county,
    processed_vintages,
    vintages_to_process,
)

US_COUNTIES = 3143
AIRFLOW_MAX_MAP_LENGTH = 1024  # [core] max_map_length's default


@pytest.mark.parametrize(
    ("processed", "start", "end", "expected"),
    [
        (set(), 2010, 2011, [2010]),          # backfill run of 2010
        ({2010}, 2016, 2017, [2016]),         # backfill run of 2016
        ({2010}, 2012, 2013, []),             # a year without a vintage
        ({2010, 2016}, 2016, 2017, []),       # a rerun finds nothing left
        ({2010}, 2025, 2026, [2016, 2020]),   # scheduled: late-published vintages caught up
        ({2016}, 2025, 2026, [2020]),         # ...but never older than the last processed
        ({2016}, 2010, 2011, [2010]),         # a backfill of the past still does its year
    ],
)
def test_vintages_to_process(processed, start, end, expected):
    assert vintages_to_process([2010, 2016, 2020], processed, start, end) == expected


@pytest.fixture()
def registry(synthetic: Path) -> dict[str, counties.County]:
    return counties.load_registry(str(synthetic / "counties.json"))


def test_available_vintages_come_from_the_catalogue(registry):
    assert available_vintages(registry["synthetic-county-1"]) == [2010, 2016]


def _commit(root: str, county: str, year: int) -> None:
    storage.write_bytes(storage.join(root, "predictions", f"county={county}", f"year={year}",
                                     "predictions.parquet"), b"x")


def test_processed_means_predictions_committed(tmp_path: Path):
    root = str(tmp_path)
    _commit(root, "a-county", 2010)
    _commit(root, "b-county", 2016)
    storage.write_bytes(storage.join(root, "naip", "a-county", "2016", "manifest.parquet"),
                        b"x")  # tiled but not scored: not processed
    assert processed_vintages(root, "a-county") == {2010}
    assert processed_vintages(root, "another") == set()
    assert processed_by_county(root) == {"a-county": {2010}, "b-county": {2016}}
    assert is_processed(root, "a-county", 2010) and not is_processed(root, "a-county", 2016)


def test_plan_refresh_filters_states_and_skips_done(tmp_path: Path, registry):
    root = str(tmp_path)
    _commit(root, "synthetic-county-1", 2010)
    jobs = plan_refresh(registry.values(), root, 2016, 2017, states=["ND"])
    assert jobs == [{"county": "synthetic-county-1", "years": [2016]},  # 2010 done
                    {"county": "synthetic-county-2", "years": [2010, 2016]}]  # in order
    assert plan_refresh(registry.values(), root, 2016, 2017, states=["ma"]) == []


def test_every_us_county_fits_in_airflows_map_length():
    names = [f"county-{i}" for i in range(US_COUNTIES)]
    planned = batches(names, AIRFLOW_MAX_MAP_LENGTH)
    assert len(planned) == AIRFLOW_MAX_MAP_LENGTH
    assert [n for batch in planned for n in batch] == names  # each once, in order
    assert {len(b) for b in planned} == {3, 4}  # as even as it gets: 3143 = 1024 * 3 + 71


@pytest.mark.parametrize(("n", "limit", "sizes"), [
    (0, 5, []), (3, 5, [1, 1, 1]), (5, 5, [1] * 5), (6, 5, [2, 1, 1, 1, 1]), (7, 1, [7]),
])
def test_batches_are_single_while_they_fit(n, limit, sizes):
    assert [len(b) for b in batches(list(range(n)), limit)] == sizes


def test_batches_need_a_positive_limit():
    with pytest.raises(ValueError, match="max_batches must be at least 1, got 0"):
        batches([1], 0)


def test_lease_records_holder_and_outcome(tmp_path: Path):
    root = str(tmp_path)
    with county_year_lease(root, "a-county", 2016, "run-a") as lease:
        lease.record["outcome"] = "processed"
    with county_year_lease(root, "a-county", 2016, "run-b") as lease:
        lease.record["outcome"] = "skipped"
    history = lease_history(root, "a-county", 2016)
    assert [(h["generation"], h["owner"], h["outcome"]) for h in history] == [
        (1, "run-a", "processed"), (2, "run-b", "skipped")]
    assert all(h["released_at"] >= h["claimed_at"] for h in history)


def _hold(root, county, year, owner, entered, release, log):
    with county_year_lease(root, county, year, owner, poll=0.05):
        log.append((owner, "in", time.monotonic()))
        entered.set()
        release.wait(10)
        log.append((owner, "out", time.monotonic()))


def test_two_county_years_are_held_at_once(tmp_path: Path):
    root, log = str(tmp_path), []
    release = threading.Event()
    entered = [threading.Event(), threading.Event()]
    threads = [threading.Thread(target=_hold, args=(root, c, 2016, c, e, release, log))
               for c, e in zip(("a-county", "b-county"), entered, strict=True)]
    for t in threads:
        t.start()
    assert all(e.wait(10) for e in entered)  # both inside before either may leave
    release.set()
    for t in threads:
        t.join(10)
    assert sorted(o for o, what, _ in log if what == "in") == ["a-county", "b-county"]


def test_a_second_owner_waits_for_the_county_year(tmp_path: Path):
    root, log = str(tmp_path), []
    release = threading.Event()
    first, second = threading.Event(), threading.Event()
    a = threading.Thread(target=_hold, args=(root, "a-county", 2016, "run-a", first, release,
                                             log))
    a.start()
    assert first.wait(10)
    b = threading.Thread(target=_hold, args=(root, "a-county", 2016, "run-b", second,
                                             threading.Event(), log))
    b.start()
    assert not second.wait(0.5)  # run-b waits while run-a holds the lease...
    release.set()
    assert second.wait(10)  # ...and gets it once run-a releases it
    b.join(15)
    a.join(10)
    order = [(o, what) for o, what, _ in sorted(log, key=lambda e: e[2])]
    assert order == [("run-a", "in"), ("run-a", "out"), ("run-b", "in"), ("run-b", "out")]


def test_racing_claimants_get_one_generation_each(tmp_path: Path):
    """Eight threads claim one county-year at once: each holds it alone, in turn."""
    root, inside, overlaps = str(tmp_path), [], []
    start = threading.Barrier(8)

    def claim(owner: str) -> None:
        start.wait()
        with county_year_lease(root, "a-county", 2016, owner, poll=0.01):
            inside.append(owner)
            if len(inside) > 1:
                overlaps.append(list(inside))
            time.sleep(0.02)
            inside.remove(owner)

    threads = [threading.Thread(target=claim, args=(f"run-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == []
    history = lease_history(root, "a-county", 2016)
    assert [h["generation"] for h in history] == list(range(1, 9))
    assert sorted(h["owner"] for h in history) == [f"run-{i}" for i in range(8)]


def _leave_lease(root: str, owner: str, beat_age: float) -> None:
    """A lease as a killed holder leaves it: never released, last beat ``beat_age`` ago."""
    now = time.time()
    storage.write_bytes(_first_lease(root),
                        json.dumps({"owner": owner, "generation": 1, "claimed_at": now - 999,
                                    "heartbeat_at": now - beat_age,
                                    "released_at": None}).encode())


def test_a_stale_lease_is_taken_over(tmp_path: Path):
    root = str(tmp_path)
    _leave_lease(root, "killed-run", beat_age=61)
    with county_year_lease(root, "a-county", 2016, "run-b", stale_after=60, poll=0.01):
        pass
    assert [h["owner"] for h in lease_history(root, "a-county", 2016)] == ["killed-run",
                                                                           "run-b"]


def test_a_retry_takes_over_its_own_lease_at_once(tmp_path: Path):
    root = str(tmp_path)
    _leave_lease(root, "run-a/try", beat_age=0)  # fresh, but ours: a killed earlier try
    with county_year_lease(root, "a-county", 2016, "run-a/try", stale_after=60, poll=10):
        pass
    assert len(lease_history(root, "a-county", 2016)) == 2


def test_heartbeat_keeps_a_long_holder_live(tmp_path: Path):
    root = str(tmp_path)
    with county_year_lease(root, "a-county", 2016, "run-a", heartbeat=0.05):
        time.sleep(0.3)
        record = json.loads(storage.read_bytes(_first_lease(root)))
    assert record["heartbeat_at"] > record["claimed_at"] and record["released_at"] is None


def _first_lease(root: str) -> str:
    return storage.join(root, "refresh", "leases", "county=a-county", "year=2016",
                        "000001.json")


def test_the_lease_is_released_when_the_work_fails(tmp_path: Path):
    root = str(tmp_path)
    with pytest.raises(RuntimeError), county_year_lease(root, "a-county", 2016, "run-a"):
        raise RuntimeError("scoring failed")
    # A waiting run does not wait for a failed holder: it claims at once.
    with county_year_lease(root, "a-county", 2016, "run-b", poll=30):
        pass
    assert [h["released_at"] is not None for h in lease_history(root, "a-county", 2016)] == [
        True, True]


def test_leases_on_blob_storage_are_exclusive(azurite, azure_env):
    """On Azurite: a generation another claimant created is not overwritten."""
    root = f"abfs://{azure_env}/landuse"
    _leave_lease(root, "run-a", beat_age=0)  # live, someone else's
    from landuse.refresh import _create_exclusive

    url = _first_lease(root)
    assert not _create_exclusive(url, b"{}")
    assert json.loads(storage.read_bytes(url))["owner"] == "run-a"
    with county_year_lease(root, "a-county", 2017, "run-b"):
        pass
    assert [h["owner"] for h in lease_history(root, "a-county", 2017)] == ["run-b"]
