"""Land-use classes: the seed's NLCD mapping plus Water, the groups, class_of errors and the
legends."""

from __future__ import annotations

import numpy as np
import pytest

from landuse import labels

# The Embarrassingly Parallel Image Classification mapping, written out independently.
SEED_MAPPING = {
    "Developed": {21, 22, 23, 24},
    "Barren": {31},
    "Forest": {41, 42, 43, 90},
    "Shrub": {51, 52},
    "Herbaceous": {71, 72, 73, 74, 95},
    "Cultivated": {81, 82},
}
ALL_NLCD_CODES = {11, 12, *set().union(*SEED_MAPPING.values())}


def test_nlcd_to_class_is_exactly_the_seed_mapping():
    inverted: dict[str, set[int]] = {}
    for code, name in labels.NLCD_TO_CLASS.items():
        inverted.setdefault(name, set()).add(code)
    assert inverted == SEED_MAPPING


def test_classes_are_the_seed_six_and_water():
    assert labels.SEED_CLASSES == tuple(SEED_MAPPING)
    assert labels.CLASSES == (*labels.SEED_CLASSES, "Water")
    assert labels.NLCD_CLASSES == {**labels.NLCD_TO_CLASS, 11: "Water"}


def test_water_is_a_class_and_ice_is_not():
    assert labels.class_of(11) == "Water"
    assert 11 not in labels.NLCD_TO_CLASS  # the seed's mapping stays the seed's
    assert labels.NLCD_EXCLUDED == {12: "Ice"}
    assert labels.is_known_code(11) and labels.is_known_code(12)


def test_class_to_group():
    assert labels.CLASS_TO_GROUP == {
        "Developed": "Developed",
        "Cultivated": "Cultivated",
        "Barren": "Undeveloped",
        "Forest": "Undeveloped",
        "Shrub": "Undeveloped",
        "Herbaceous": "Undeveloped",
        "Water": "Water",
    }
    assert set(labels.CLASS_TO_GROUP.values()) == set(labels.GROUPS)
    assert labels.GROUPS == (*labels.SEED_GROUPS, "Water")


@pytest.mark.parametrize(("code", "name"), [(21, "Developed"), (90, "Forest"), (95, "Herbaceous")])
def test_class_of(code, name):
    assert labels.class_of(code) == name


@pytest.mark.parametrize(("code", "words"), [(12, "Ice")])
def test_class_of_ice_says_why(code, words):
    with pytest.raises(KeyError, match=f"{code}.*{words}.*not a land-use class"):
        labels.class_of(code)


@pytest.mark.parametrize("code", [0, 250, 99, 13, 255])
def test_class_of_unknown_codes(code):
    with pytest.raises(KeyError, match=f"{code} is not a known NLCD"):
        labels.class_of(code)
    assert not labels.is_known_code(code)


def test_category_lookup_table():
    table = labels.category_lookup()
    for name, codes in SEED_MAPPING.items():
        for code in codes:
            assert labels.CATEGORY_NAMES[table[code]] == name
    assert (table[11], table[12], table[0]) == (labels.WATER, labels.ICE, labels.NODATA)
    assert labels.CATEGORY_NAMES[labels.WATER] == "Water"
    others = [*sorted(set(range(1, 256)) - ALL_NLCD_CODES), 300, 65535]
    assert np.all(table[others] == labels.UNKNOWN)


def _valid_rgb(colour) -> bool:
    return len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)


def test_nlcd_legend_covers_every_code():
    assert set(labels.NLCD_COLOURS) == ALL_NLCD_CODES
    assert all(_valid_rgb(c) for c in labels.NLCD_COLOURS.values())
    assert len(set(labels.NLCD_COLOURS.values())) == len(labels.NLCD_COLOURS)


def test_class_and_group_legends_are_complete_and_distinct():
    for legend, keys in (
        (labels.CLASS_COLOURS, labels.CLASSES),
        (labels.GROUP_COLOURS, labels.GROUPS),
    ):
        assert set(legend) == set(keys)
        assert all(_valid_rgb(c) for c in legend.values())
        assert len(set(legend.values())) == len(legend)
        assert labels.NO_DATA_COLOUR not in legend.values()
