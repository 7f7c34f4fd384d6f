"""Reviews of a change report: the queue, append-only answers, verdicts, figures, labels."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landuse import review, storage


def _tiles(n: int = 20) -> pd.DataFrame:
    """A 20 x n strip of tiles: a few flagged of each kind, confidences falling with col."""
    cols = np.arange(n)
    t = pd.DataFrame({"tile_id": [f"32614_{c}_{r}" for c in cols for r in range(20)]})
    c = t["tile_id"].str.split("_").str[1].astype(int)
    r = t["tile_id"].str.split("_").str[2].astype(int)
    t["b_confidence"] = 1.0 - (c * 20 + r) / (len(t) + 1)
    t["significant"] = (r == 0) & (c < 6)
    t["p_no_change"] = np.where(t["significant"], 0.001 * (c + 1), 0.9)
    t["hotspot"] = (r == 5) & (c < 4)
    t["embedding_distance"] = np.where(t["hotspot"], 10.0 - c, 1.0)
    t["newly_developed"] = (r == 10) & (c < 3)
    return t


def test_the_queue_asks_flagged_tiles_first_then_the_least_confident_spread_out():
    t = _tiles()
    q = review.queue(t, uncertain=30, block=10)
    assert list(q["rank"]) == list(range(len(q)))
    assert q["tile_id"].is_unique
    reasons = list(q["reason"])
    # Kinds in order: the test's tiles, then hotspots, newly developed, least confident.
    assert reasons == (["significant"] * 6 + ["hotspot"] * 4 + ["newly_developed"] * 3
                       + ["uncertain"] * 30)
    assert list(q["tile_id"][:6]) == [f"32614_{c}_0" for c in range(6)]  # by p-value
    assert list(q["tile_id"][6:10]) == [f"32614_{c}_5" for c in range(4)]  # by distance
    # The 30 least confident unflagged tiles lie in cols 18-19 (two 10x10 blocks): the
    # queue alternates between the blocks instead of exhausting one corner first.
    uncertain = q[q["reason"] == "uncertain"]["tile_id"].map(review.tile_position)
    blocks = [r // 10 for _, r in uncertain]
    assert blocks[:4] in ([0, 1, 0, 1], [1, 0, 1, 0])
    flagged = set(t.loc[t["significant"] | t["hotspot"] | t["newly_developed"], "tile_id"])
    assert not flagged & set(q[q["reason"] == "uncertain"]["tile_id"])


def test_answers_are_checked_against_the_report(tmp_path: Path):
    t = _tiles()
    url = str(tmp_path / "report")
    with pytest.raises(review.ReviewError, match="not in this report"):
        review.record(url, t, user="ana", tile_id="32614_99_99", answer="change")
    with pytest.raises(review.ReviewError, match="not a tile id"):
        review.record(url, t, user="ana", tile_id="../x", answer="change")
    with pytest.raises(review.ReviewError, match="answer 'maybe'"):
        review.record(url, t, user="ana", tile_id="32614_0_0", answer="maybe")
    with pytest.raises(review.ReviewError, match="class of year B 'Wetland'"):
        review.record(url, t, user="ana", tile_id="32614_0_0", answer="change",
                      class_b="Wetland")
    with pytest.raises(review.ReviewError, match="user"):
        review.record(url, t, user="a/b", tile_id="32614_0_0", answer="change")
    assert review.read_answers(url).empty


def test_the_latest_answer_per_user_counts_and_the_history_stays(tmp_path: Path):
    t = _tiles()
    url = str(tmp_path / "report")
    t0 = datetime(2026, 12, 7, tzinfo=UTC)
    review.record(url, t, user="ana", tile_id="32614_0_0", answer="no_change", now=t0)
    review.record(url, t, user="ana", tile_id="32614_0_0", answer="change",
                  class_b="Developed", now=t0 + timedelta(minutes=1))
    review.record(url, t, user="bo", tile_id="32614_0_0", answer="change", now=t0)
    review.record(url, t, user="bo", tile_id="32614_1_0", answer="no_change", now=t0)
    review.record(url, t, user="ana", tile_id="32614_1_0", answer="change", now=t0)
    history = review.read_answers(url)
    assert len(history) == 5
    v = review.verdicts(history).set_index("tile_id")
    assert v.loc["32614_0_0", "verdict"] == "change"
    assert v.loc["32614_0_0", "class_b"] == "Developed"
    assert v.loc["32614_0_0", "users"] == 2
    assert v.loc["32614_1_0", "verdict"] == "unsure"  # one each way


def test_two_analysts_at_once_lose_nothing(tmp_path: Path):
    t = _tiles()
    url = str(tmp_path / "report")
    ids = list(t["tile_id"][:40])

    def answer(user: str) -> None:
        for tile_id in ids:
            review.record(url, t, user=user, tile_id=tile_id, answer="change")

    threads = [threading.Thread(target=answer, args=(u,)) for u in ("ana", "bo")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    answers = review.read_answers(url)
    assert len(answers) == 80
    assert answers.groupby("user").size().to_dict() == {"ana": 40, "bo": 40}


def test_figures_measure_precision_and_the_real_change_with_intervals(tmp_path: Path):
    t = _tiles()
    url = str(tmp_path / "report")
    flagged = list(t.loc[t["significant"], "tile_id"])  # 6 of 13 flagged tiles
    for i, tile_id in enumerate(flagged):
        review.record(url, t, user="ana", tile_id=tile_id,
                      answer="change" if i < 2 else "no_change" if i < 5 else "unsure")
    f = review.figures(t, review.read_answers(url))
    assert (f["flagged"], f["reviewed"], f["confirmed"], f["unsure"]) == (13, 5, 2, 1)
    assert f["precision"] == pytest.approx(0.4)
    lo, hi = f["precision_interval"]
    assert (lo, hi) == pytest.approx(review.wilson(2, 5), abs=1e-4)
    assert 0.05 < lo < 0.4 < hi < 0.85
    assert f["estimated_real"] == pytest.approx(2 + 8 * 0.4, abs=0.05)
    assert f["estimated_real_interval"][0] <= f["estimated_real"] <= f[
        "estimated_real_interval"][1]
    assert f["by_flag"]["significant"]["reviewed"] == 5
    assert f["by_flag"]["hotspot"]["reviewed"] == 0
    assert "stand for" in f["note"]


def test_wilson_matches_the_textbook_values():
    # Wilson (1927) interval, as given by statsmodels' proportion_confint(method="wilson").
    assert review.wilson(2, 5) == pytest.approx((0.1176, 0.7693), abs=1e-4)
    assert review.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert review.wilson(0, 0) == (0.0, 1.0)


def _report(url: str, t: pd.DataFrame) -> None:
    """A published report's files that reviews read: tiles, report.md, summary.json."""
    import pyarrow as pa

    storage.write_parquet(f"{url}/tiles.parquet", pa.Table.from_pandas(t, preserve_index=False))
    storage.write_bytes(f"{url}/report.md", b"# Change\n\nbody\n")
    storage.write_bytes(f"{url}/summary.json",
                        json.dumps({"county": "x", "model_b": "m@1"}).encode())


def test_publishing_adds_the_review_to_the_summary_and_report(tmp_path: Path):
    t = _tiles()
    url = str(tmp_path / "report")
    _report(url, t)
    first = review.publish(url, status="unreviewed")
    assert first["reviewed"] == 0
    review.record(url, t, user="ana", tile_id="32614_0_0", answer="change")
    second = review.publish(url)
    summary = json.loads(storage.read_bytes(f"{url}/summary.json"))
    assert summary["county"] == "x" and summary["review"]["confirmed"] == 1
    assert summary["review"]["status"] == "reviewed"
    md = storage.read_bytes(f"{url}/report.md").decode()
    assert md.count(review.REVIEW_SECTION) == 1 and md.startswith("# Change\n\nbody\n")
    assert "1 confirmed as real change" in md
    assert second["precision"] == 1.0
    with pytest.raises(review.ReviewError, match="no change report"):
        review.publish(str(tmp_path / "none"))


def test_reviewed_labels_per_year_with_conflicts_left_out(tmp_path: Path):
    from landuse.change.run import change_url

    t = _tiles()
    root = str(tmp_path)
    first, second = change_url(root, "c", 2010, 2016), change_url(root, "c", 2016, 2020)
    review.record(first, t, user="ana", tile_id="32614_0_0", answer="change",
                  class_a="Cultivated", class_b="Developed")
    review.record(first, t, user="ana", tile_id="32614_1_0", answer="no_change",
                  class_b="Water")
    review.record(second, t, user="bo", tile_id="32614_1_0", answer="no_change",
                  class_a="Herbaceous")  # 2016 says Water in one report, Herbaceous here
    review.record(second, t, user="bo", tile_id="32614_2_0", answer="unsure",
                  class_a="Forest")
    got = review.reviewed_labels(root, "c").set_index(["year", "tile_id"])["label"].to_dict()
    assert got == {(2010, "32614_0_0"): "Cultivated", (2016, "32614_0_0"): "Developed",
                   (2010, "32614_1_0"): "Water", (2020, "32614_1_0"): "Herbaceous",
                   (2016, "32614_2_0"): "Forest"}
    assert review.reviewed_labels(root, "c").attrs["conflicts"] == 1
    assert review.reviewed_labels(root, "other").empty


def test_answers_given_elsewhere_are_imported_whole_or_not_at_all(tmp_path: Path):
    t = _tiles()
    url = str(tmp_path / "report")
    _report(url, t)
    bad = pd.DataFrame({"tile_id": ["32614_0_0", "32614_1_0"], "answer": ["change", "perhaps"]})
    with pytest.raises(review.ReviewError, match="row 2: answer 'perhaps'"):
        review.import_answers(url, bad, "survey")
    assert review.read_answers(url).empty  # the good row was not written either
    good = pd.DataFrame({"tile_id": ["32614_0_0", "32614_1_0"], "answer": ["change", "unsure"],
                         "class_a": ["Cultivated", None], "class_b": ["Water", None]})
    assert review.import_answers(url, good, "survey") == 2
    got = review.read_answers(url)
    assert list(got["user"]) == ["survey"] * 2 and set(got["model_id"]) == {"m@1"}
    assert got.set_index("tile_id").loc["32614_0_0", "class_b"] == "Water"
    with pytest.raises(review.ReviewError, match="no change report"):
        review.import_answers(str(tmp_path / "none"), good, "survey")
