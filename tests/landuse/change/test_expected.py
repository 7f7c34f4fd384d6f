"""Change expected from model error alone: rates from the test confusion, and the interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from landuse import labels
from landuse.change.expected import describe, expected_false

# rows truth, columns prediction: Developed, Cultivated, Undeveloped (the seed's groups)
CONFUSION = [[90, 5, 5],
             [10, 80, 10],
             [20, 0, 180]]
SEED = labels.SEED_GROUPS


def test_expected_count_is_tiles_times_the_test_error_rate():
    groups = pd.Series(["Cultivated"] * 300 + ["Undeveloped"] * 500 + ["Developed"] * 50
                       + ["Water"] * 20)
    e = expected_false(groups, [("Cultivated", "Developed"), ("Undeveloped", "Developed")],
                       CONFUSION, groups=SEED)
    assert e["expected"] == pytest.approx(300 * 0.1 + 500 * 0.1)  # 80
    assert e["per_group"]["Cultivated"] == {"tiles": 300, "rate": 0.1, "test_tiles": 100,
                                            "to": ["Developed"]}
    assert e["low"] < 80 < e["high"]
    # the interval holds both the binomial spread and the test set's size: it is wider than
    # the binomial alone (about ±17) and narrows as the test set grows
    assert e["high"] - e["low"] > 2 * 1.96 * np.sqrt(300 * 0.09 + 500 * 0.09)
    big = expected_false(groups, [("Cultivated", "Developed"), ("Undeveloped", "Developed")],
                         (np.asarray(CONFUSION) * 100).tolist(), groups=SEED)
    assert big["expected"] == e["expected"]
    assert big["high"] - big["low"] < e["high"] - e["low"]
    assert describe(95, e, "tiles newly developed").startswith(
        "95 tiles newly developed, about 80 of them expected from model error alone (95% "
        "interval ")


def test_a_perfect_model_expects_no_false_change_and_same_seed_same_interval():
    groups = pd.Series(["Cultivated"] * 40)
    perfect = [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    e = expected_false(groups, [("Cultivated", "Developed")], perfect, groups=SEED)
    assert e["expected"] == 0 and e["low"] == 0
    assert e["high"] > 0  # ten test tiles cannot prove a zero error rate
    assert e == expected_false(groups, [("Cultivated", "Developed")], perfect, groups=SEED)


def test_water_has_its_own_rates_and_an_untested_group_counts_for_nothing():
    # four groups: the seed's three and Water
    confusion = [[90, 5, 5, 0], [10, 80, 10, 0], [20, 0, 180, 0], [0, 0, 10, 40]]
    groups = pd.Series(["Water"] * 100 + ["Cultivated"] * 10)
    e = expected_false(groups, [("Water", "Undeveloped"), ("Cultivated", "Developed")],
                       confusion)
    assert e["expected"] == pytest.approx(100 * 0.2 + 10 * 0.1)
    no_water = [[90, 5, 5, 0], [10, 80, 10, 0], [20, 0, 180, 0], [0, 0, 0, 0]]
    e = expected_false(groups, [("Water", "Developed"), ("Cultivated", "Developed")],
                       no_water)
    assert e["untested"] == {"Water": 100} and e["expected"] == pytest.approx(1.0)


def test_unknown_groups_and_bad_matrices_are_errors():
    groups = pd.Series(["Cultivated"] * 3)
    with pytest.raises(ValueError, match=r"transition Cultivated -> Lava: groups are"):
        expected_false(groups, [("Cultivated", "Lava")], CONFUSION, groups=SEED)
    with pytest.raises(ValueError, match=r"3x3 counts"):
        expected_false(groups, [("Cultivated", "Developed")], [[1, 2], [3, 4]], groups=SEED)
