"""Reviews of a change report: which tiles to ask about, the analysts' answers, what they
measure, and the labels they teach.

A change report flags tiles (the no-change test's significant tiles, embedding hotspots and
newly developed tiles). An analyst looks at a flagged tile in year A and year B and answers
*real change*, *no change* or *can't tell*, and may set the true class of either year.

Answers are append-only: each is one small JSON object under the report's ``reviews/``
folder (``{root}/change/county=…/{A}-{B}/reviews/``), written once under a name no other
writer can take, so two analysts reviewing the same county at once lose nothing and the
history stays. The latest answer of each user on a tile counts; a tile's verdict is the
majority of its users' verdicts (a tie, or only "can't tell", leaves it unsure).

The review's figures follow the seed's "about a third real", measured: of N flagged tiles R
were reviewed and C confirmed, so the precision among reviewed tiles is C/R with a Wilson
95 % interval, and the real change in the county is C + (N − R)·C/R with the interval that
follows from it. The estimate assumes the reviewed tiles stand for the unreviewed ones; the
queue asks about the most telling tiles first, so a partial review says so.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from landuse import labels, storage
from landuse.change import REVIEWS, SUMMARY, change_url

Verdict = Literal["change", "no_change", "unsure"]
ANSWERS: tuple[str, ...] = ("change", "no_change", "unsure")
ANSWER_TEXT = {"change": "real change", "no_change": "no change", "unsure": "can't tell"}
REVIEW_SECTION = "## Review"
# Kinds of flag, in the order the queue asks about them (the most telling first).
FLAGS = ("significant", "hotspot", "newly_developed")
FLAG_TEXT = {"significant": "no-change test rejected", "hotspot": "embedding hotspot",
             "newly_developed": "newly developed", "uncertain": "least confident call"}
# After the flagged tiles, the queue asks about this many of the model's least confident
# calls: their answers teach the model most.
UNCERTAIN_TILES = 50
# Tiles are spread over the county in blocks of this many tiles a side: the queue takes
# the best tile of every block before the second of any.
SPREAD_BLOCK = 10
Z95 = 1.959963984540054
_TILE_ID = re.compile(r"^(\d{4,6})_(-?\d{1,9})_(-?\d{1,9})\Z")
_USER = re.compile(r"^[\w .@+-]{1,128}\Z")  # stored in JSON only, never in a name


class ReviewError(ValueError):
    """An answer that does not fit the report (the message names what is wrong)."""


def reviews_url(report_url: str) -> str:
    """The folder of a report's answers."""
    return storage.join(report_url, REVIEWS)


def tile_position(tile_id: str) -> tuple[int, int]:
    """A tile's column and row on its county's grid, from its id (``{epsg}_{col}_{row}``).

    Raises:
        ReviewError: not a tile id.
    """
    match = _TILE_ID.fullmatch(tile_id)
    if not match:
        raise ReviewError(f"{tile_id!r} is not a tile id")
    return int(match[2]), int(match[3])


# --- the queue ----------------------------------------------------------------------------


def flag_kinds(tiles: pd.DataFrame) -> pd.Series:
    """Each tile's first kind of flag (:data:`FLAGS` order), None where it is not flagged."""
    kind = pd.Series(None, index=tiles.index, dtype=object)
    for flag in reversed(FLAGS):
        if flag in tiles:
            kind[tiles[flag].fillna(False).astype(bool)] = flag
    return kind


def queue(tiles: pd.DataFrame, uncertain: int = UNCERTAIN_TILES,
          block: int = SPREAD_BLOCK) -> pd.DataFrame:
    """The tiles to ask about, in order: flagged tiles first (no-change test by p-value,
    then hotspots by embedding distance, then newly developed tiles by confidence), then the
    ``uncertain`` least confident calls among the rest; within each kind spread over the
    county (the best tile of every ``block``×``block`` block before the second of any).

    Returns:
        ``tile_id``, ``reason`` (the kind) and ``rank`` (0 first), one row per tile.
    """
    t = tiles.reset_index(drop=True)
    kind = flag_kinds(t)
    confidence = t["b_confidence"] if "b_confidence" in t else pd.Series(np.nan, t.index)
    priority = {"significant": t.get("p_no_change", pd.Series(np.nan, t.index)),
                "hotspot": -t.get("embedding_distance", pd.Series(np.nan, t.index)),
                "newly_developed": confidence}
    parts = []
    for flag in FLAGS:
        rows = t[kind == flag]
        parts.append(_spread(rows.assign(_p=priority[flag][rows.index]), block)
                     .assign(reason=flag))
    rest = t[kind.isna() & confidence.notna()]
    rest = rest.assign(_p=confidence[rest.index]).nsmallest(uncertain, "_p", keep="first")
    parts.append(_spread(rest, block).assign(reason="uncertain"))
    out = pd.concat(parts, ignore_index=True)[["tile_id", "reason"]]
    return out.assign(rank=np.arange(len(out)))


def _spread(rows: pd.DataFrame, block: int) -> pd.DataFrame:
    """``rows`` by priority ``_p`` (NaN last), but round-robin over spatial blocks."""
    if rows.empty:
        return rows
    pos = np.array([tile_position(t) for t in rows["tile_id"]])
    rows = rows.assign(_block=[f"{c // block}_{r // block}" for c, r in pos])
    rows = rows.sort_values(["_p", "tile_id"], na_position="last", kind="stable")
    rows = rows.assign(_turn=rows.groupby("_block").cumcount())
    return rows.sort_values(["_turn", "_p", "tile_id"], na_position="last", kind="stable")


# --- answers ------------------------------------------------------------------------------


def check_answer(tiles: pd.DataFrame, tile_id: str, answer: str, class_a: str | None,
                 class_b: str | None) -> None:
    """Refuse an answer that does not fit the report.

    Raises:
        ReviewError: a tile that is not in the report, an answer or class that is not one
            of :data:`ANSWERS` / :data:`landuse.labels.CLASSES`.
    """
    tile_position(tile_id)
    if tile_id not in set(tiles["tile_id"]):
        raise ReviewError(f"tile {tile_id} is not in this report")
    if answer not in ANSWERS:
        raise ReviewError(f"answer {answer!r} is not one of {list(ANSWERS)}")
    for year, klass in (("A", class_a), ("B", class_b)):
        if klass is not None and klass not in labels.CLASSES:
            raise ReviewError(f"class of year {year} {klass!r} is not one of "
                              f"{list(labels.CLASSES)}")


def record(report_url: str, tiles: pd.DataFrame, *, user: str, tile_id: str, answer: str,
           class_a: str | None = None, class_b: str | None = None, model_id: str | None = None,
           now: datetime | None = None) -> dict[str, Any]:
    """Check one answer against the report's tiles and append it (one new object).

    Returns:
        The answer as stored.

    Raises:
        ReviewError: see :func:`check_answer`, or a user name that is not a plain name.
    """
    check_answer(tiles, tile_id, answer, class_a, class_b)
    if not _USER.fullmatch(user):
        raise ReviewError(f"user {user!r} is not a plain user name")
    at = (now or datetime.now(UTC)).astimezone(UTC)
    entry = {"tile_id": tile_id, "answer": answer, "class_a": class_a, "class_b": class_b,
             "user": user, "at": at.isoformat(timespec="microseconds"), "model_id": model_id}
    # Time first so that names sort by time; a random part so no two writers share a name.
    name = f"{at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:16]}.json"
    storage.write_bytes(storage.join(reviews_url(report_url), name),
                        json.dumps(entry, sort_keys=True).encode())
    return entry


ANSWER_COLUMNS = ["tile_id", "answer", "class_a", "class_b", "user", "at", "model_id"]


def import_answers(report_url: str, answers: pd.DataFrame, user: str) -> int:
    """Append answers given elsewhere (a field survey, a review in a GIS), one row per tile
    with ``tile_id``, ``answer`` and optional ``class_a``/``class_b``, as ``user``'s.
    Every row is checked against the report before any is written.

    Returns:
        The number of answers appended.

    Raises:
        ReviewError: no whole report at ``report_url``, a missing column, or a row that does
            not fit the report (the message names the row).
    """
    if not storage.exists(storage.join(report_url, SUMMARY)):
        raise ReviewError(f"no change report at {report_url}")
    missing = sorted({"tile_id", "answer"} - set(answers.columns))
    if missing:
        raise ReviewError(f"answers lack column(s) {missing}")
    tiles = storage.read_parquet(storage.join(report_url, "tiles.parquet")).to_pandas()
    summary = json.loads(storage.read_bytes(storage.join(report_url, SUMMARY)))
    rows = [{k: (None if pd.isna(v) else v) for k, v in row.items()}
            for row in answers.to_dict("records")]
    for i, row in enumerate(rows):
        try:
            check_answer(tiles, str(row["tile_id"]), str(row["answer"]), row.get("class_a"),
                         row.get("class_b"))
        except ReviewError as err:
            raise ReviewError(f"row {i + 1}: {err}") from err
    for row in rows:
        record(report_url, tiles, user=user, tile_id=str(row["tile_id"]),
               answer=str(row["answer"]), class_a=row.get("class_a"),
               class_b=row.get("class_b"), model_id=summary.get("model_b"))
    return len(rows)


def read_answers(report_url: str) -> pd.DataFrame:
    """Every answer given on a report, oldest first (the whole history)."""
    names = sorted(storage.glob(storage.join(reviews_url(report_url), "*.json")))
    rows = [json.loads(storage.read_bytes(name)) for name in names]
    frame = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    return frame.sort_values("at", kind="stable").reset_index(drop=True)


def latest(answers: pd.DataFrame) -> pd.DataFrame:
    """The latest answer of each user on each tile."""
    return answers.drop_duplicates(["tile_id", "user"], keep="last").reset_index(drop=True)


def verdicts(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per answered tile: ``verdict`` (the majority of its users' latest answers,
    ``unsure`` on a tie), ``class_a``/``class_b`` (the class most users set, None where they
    disagree or none set one) and ``users``."""
    columns = ["tile_id", "verdict", "class_a", "class_b", "users"]
    if answers.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for tile_id, group in latest(answers).groupby("tile_id", sort=True):
        votes = group["answer"].value_counts()
        change, no_change = votes.get("change", 0), votes.get("no_change", 0)
        verdict = ("change" if change > no_change else "no_change" if no_change > change
                   else "unsure")
        rows.append({"tile_id": tile_id, "verdict": verdict, "class_a": _mode(group["class_a"]),
                     "class_b": _mode(group["class_b"]), "users": group["user"].nunique()})
    return pd.DataFrame(rows, columns=columns)


def _mode(values: pd.Series) -> str | None:
    counts = values.dropna().value_counts()
    if counts.empty or (len(counts) > 1 and counts.iloc[0] == counts.iloc[1]):
        return None
    return str(counts.index[0])


# --- what the review measured -------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k``/``n`` (``(0, 1)`` when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def figures(tiles: pd.DataFrame, answers: pd.DataFrame) -> dict[str, Any]:
    """The review's figures over the report's flagged tiles: flagged N, reviewed R (a
    verdict of change or no change), confirmed C, unsure U, the precision C/R with its 95 %
    interval and the estimated real change in the county, overall and per kind of flag."""
    kind = flag_kinds(tiles.reset_index(drop=True))
    ids = tiles["tile_id"].reset_index(drop=True)
    v = verdicts(answers).set_index("tile_id")["verdict"] if not answers.empty else pd.Series(
        dtype=object)
    verdict = ids.map(v)
    out: dict[str, Any] = {**_measure(verdict[kind.notna()]),
                           "answers": len(answers),
                           "users": int(answers["user"].nunique()) if len(answers) else 0,
                           "answered_unflagged": int(verdict[kind.isna()].notna().sum())}
    out["by_flag"] = {flag: _measure(verdict[kind == flag]) for flag in FLAGS
                      if (kind == flag).any()}
    out["note"] = ("the interval assumes the reviewed tiles stand for the unreviewed flagged "
                   "ones; the queue asks about the most telling tiles first"
                   if 0 < out["reviewed"] < out["flagged"] else
                   "every flagged tile was reviewed" if out["flagged"] and
                   out["reviewed"] == out["flagged"] else "no flagged tile reviewed yet")
    return out


def _measure(verdict: pd.Series) -> dict[str, Any]:
    n = len(verdict)
    confirmed = int((verdict == "change").sum())
    reviewed = confirmed + int((verdict == "no_change").sum())
    unsure = int((verdict == "unsure").sum())
    out: dict[str, Any] = {"flagged": n, "reviewed": reviewed, "confirmed": confirmed,
                           "unsure": unsure}
    if reviewed:
        lo, hi = wilson(confirmed, reviewed)
        rest = n - reviewed
        out.update(precision=round(confirmed / reviewed, 4),
                   precision_interval=[round(lo, 4), round(hi, 4)],
                   estimated_real=round(confirmed + rest * confirmed / reviewed, 1),
                   estimated_real_interval=[round(confirmed + rest * lo, 1),
                                            round(confirmed + rest * hi, 1)])
    return out


def markdown(review: dict[str, Any]) -> str:
    """The review's section of report.md."""
    lines = [REVIEW_SECTION, ""]
    if not review.get("reviewed"):
        lines.append(f"{review.get('flagged', 0)} tiles flagged; none reviewed yet "
                     f"({review.get('status', 'unreviewed')}).")
        return "\n".join(lines) + "\n"
    lo, hi = review["precision_interval"]
    elo, ehi = review["estimated_real_interval"]
    lines += [
        f"Of {review['flagged']} flagged tiles, {review['reviewed']} were reviewed by "
        f"{review['users']} analyst(s) and {review['confirmed']} confirmed as real change "
        f"({review['unsure']} can't tell): precision {review['precision']:.2f} "
        f"(95 % interval {lo:.2f}-{hi:.2f}).",
        f"Estimated real change among the flagged tiles: {review['estimated_real']:.0f} "
        f"(95 % interval {elo:.0f}-{ehi:.0f}); {review['note']}.", "",
        "| flag | flagged | reviewed | confirmed | precision (95 % interval) |",
        "|---|---|---|---|---|"]
    for flag, m in review["by_flag"].items():
        p = (f"{m['precision']:.2f} ({m['precision_interval'][0]:.2f}-"
             f"{m['precision_interval'][1]:.2f})" if m["reviewed"] else "-")
        lines.append(f"| {FLAG_TEXT[flag]} | {m['flagged']} | {m['reviewed']} | "
                     f"{m['confirmed']} | {p} |")
    return "\n".join(lines) + "\n"


def publish(report_url: str, status: str = "reviewed") -> dict[str, Any]:
    """Publish the report again with its review's figures: ``summary.json`` gains
    ``review`` (``status``: reviewed / unreviewed / in review) and report.md a review section
    (replacing an earlier one); summary.json, the commit marker, is written last.

    Returns:
        The review's figures.

    Raises:
        ReviewError: no whole report at ``report_url``.
    """
    marker = storage.join(report_url, SUMMARY)
    if not storage.exists(marker):
        raise ReviewError(f"no change report at {report_url}")
    summary = json.loads(storage.read_bytes(marker))
    tiles = storage.read_parquet(storage.join(report_url, "tiles.parquet")).to_pandas()
    review = {"status": status, **figures(tiles, read_answers(report_url)),
              "published": datetime.now(UTC).isoformat(timespec="seconds")}
    md_url = storage.join(report_url, "report.md")
    md = storage.read_bytes(md_url).decode() if storage.exists(md_url) else ""
    md = md.split(f"\n{REVIEW_SECTION}\n", 1)[0].rstrip("\n") + "\n\n" + markdown(review)
    storage.write_bytes(md_url, md.encode())
    summary["review"] = review
    storage.write_bytes(marker, json.dumps(summary, indent=2, default=str).encode())
    return review


# --- what reviews teach -------------------------------------------------------------------


def reviewed_labels(root: str, county: str) -> pd.DataFrame:
    """The classes analysts set on a county's tiles, over all its reviewed reports.

    A verdict's class of year A labels the tile in year A, of year B in year B; a "no
    change" verdict with one class labels both years. Where two reports (or a no-change
    verdict and a set class) give one tile-year different classes, the tile-year is left out
    (``conflicts`` in the frame's ``attrs`` counts them).

    Returns:
        ``county``, ``year``, ``tile_id``, ``label``, ``users``, ``pair``.
    """
    columns = ["county", "year", "tile_id", "label", "users", "pair"]
    rows = []
    pattern = storage.join(change_url(root, county, 1000, 1001).rsplit("/", 1)[0], "*",
                           REVIEWS, "*.json")
    folders = sorted({u.rsplit("/", 2)[0] for u in storage.glob(pattern)})
    for folder in folders:
        pair = folder.rsplit("/", 1)[1]
        year_a, year_b = (int(y) for y in pair.split("-"))
        for v in verdicts(read_answers(folder)).itertuples():
            a, b = v.class_a, v.class_b
            if v.verdict == "no_change":
                a, b = a or b, b or a
            for year, klass in ((year_a, a), (year_b, b)):
                if klass:
                    rows.append({"county": county, "year": year, "tile_id": v.tile_id,
                                 "label": klass, "users": v.users, "pair": pair})
    frame = pd.DataFrame(rows, columns=columns)
    classes = frame.groupby(["year", "tile_id"])["label"].transform("nunique")
    out = frame[classes == 1].drop_duplicates(["year", "tile_id"]).reset_index(drop=True)
    out.attrs["conflicts"] = int(frame[classes > 1][["year", "tile_id"]]
                                 .drop_duplicates().shape[0])
    return out
