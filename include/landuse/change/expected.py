"""How much of a change count model error alone would produce, with an interval.

The rates come from the model's confusion between the three groups on its *test* counties
(held out of training and of the model's choice; see :mod:`landuse.models.tracking`). A tile
whose year-A group is ``g`` is called ``h`` in year B, with nothing having changed on the
ground, with probability ``r[g, h]`` = test tiles of group ``g`` predicted ``h`` / test tiles
of group ``g``. Summed over tiles, that is the count of transitions ``g -> h`` expected from
model error alone. Year A's group is the NLCD label (reference ``labels``) or the same
model's prediction, taken as right (reference ``predictions``): then the figure is the
chance that year B's call disagrees with a correct year-A call.

The interval reflects both the finite test set (each rate drawn from its Jeffreys posterior,
Beta(k + ½, n - k + ½)) and the chance in which tiles err (a binomial count per group).
Uncertain predictions take part in no transition; the test rates count every test tile, so
with a confidence threshold the expectation errs on the high side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from landuse import labels

INTERVAL = 0.95
DRAWS = 4000


def rates(group_confusion: Sequence[Sequence[int]],
          groups: Sequence[str] = labels.GROUPS) -> pd.DataFrame:
    """Counts of the test confusion between groups (rows truth, columns prediction)."""
    matrix = np.asarray(group_confusion, dtype=np.int64)
    if matrix.shape != (len(groups), len(groups)) or (matrix < 0).any():
        raise ValueError(f"a group confusion matrix is {len(groups)}x{len(groups)} counts, "
                         f"got {matrix.tolist()}")
    return pd.DataFrame(matrix, index=list(groups), columns=list(groups))


def expected_false(
    year_a_groups: pd.Series,
    transitions: Iterable[tuple[str, str]],
    group_confusion: Sequence[Sequence[int]],
    *,
    groups: Sequence[str] = labels.GROUPS,
    seed: int = 0,
    draws: int = DRAWS,
) -> dict[str, Any]:
    """The count of ``transitions`` expected from model error alone, with an interval.

    Args:
        year_a_groups: year-A group of every compared tile (tiles of other groups, e.g.
            water, or without a group, count for nothing).
        transitions: the (from, to) group pairs counted together, e.g. the two that make
            "newly developed".
        group_confusion: the model's test confusion between ``groups``.
        groups: the groups of the confusion's rows and columns, in order.
        seed: for the interval's random draws (the figure is reproducible).
        draws: Monte Carlo draws for the interval.

    Returns:
        ``expected`` (mean), ``low`` and ``high`` (the :data:`INTERVAL` interval), per
        source group the tiles and the rate used, and ``untested``: compared tiles of a
        group the test counties had no tile of (no rate, so counted for nothing).

    Raises:
        ValueError: a transition names a group the confusion matrix lacks.
    """
    counts = rates(group_confusion, groups)
    rng = np.random.default_rng(seed)
    present = year_a_groups.value_counts()
    total = np.zeros(draws)
    mean = 0.0
    per_group: dict[str, dict[str, Any]] = {}
    untested: dict[str, int] = {}
    targets: dict[str, list[str]] = {}
    for source, target in transitions:
        if source not in counts.index or target not in counts.columns:
            raise ValueError(f"transition {source} -> {target}: groups are {list(counts.index)}")
        targets.setdefault(source, []).append(target)
    for source, to in targets.items():
        tiles = int(present.get(source, 0))
        if not tiles:
            continue
        row = counts.loc[source]
        n, k = int(row.sum()), int(row[to].sum())
        if n == 0:  # no test tile of this group: its error rate is unknown
            untested[source] = tiles
            continue
        rate = k / n
        mean += tiles * rate
        total += rng.binomial(tiles, rng.beta(k + 0.5, n - k + 0.5, size=draws))
        per_group[source] = {"tiles": tiles, "rate": round(rate, 4), "test_tiles": n,
                             "to": to}
    tail = (1 - INTERVAL) / 2
    return {"expected": round(mean, 1), "low": int(np.quantile(total, tail)),
            "high": int(np.ceil(np.quantile(total, 1 - tail))), "interval": INTERVAL,
            "per_group": per_group, "untested": untested}


def describe(observed: int, expected: dict[str, Any], what: str) -> str:
    """"N newly developed, about F of them expected from model error (95 % interval a-b)"."""
    return (f"{observed} {what}, about {expected['expected']:g} of them expected from model "
            f"error alone ({expected['interval']:.0%} interval {expected['low']}-"
            f"{expected['high']})")
