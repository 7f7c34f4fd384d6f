"""Land-use classes, the NLCD mapping the seed work used, and the colour legends of the maps.

The seed's six classes and their NLCD codes are exactly those of the Embarrassingly Parallel
Image Classification work; Water (NLCD 11) is a seventh class here, in a group of its own,
so a lake is mapped as water rather than as the nearest land class. Perennial ice/snow (12)
is not a class: such tiles are kept in manifests but never trained on. The class set a
model learns belongs to its dataset (see :mod:`landuse.splits`); the seed's 6-class and
3-group figures are still reported its way, over tiles that are not water.
"""

from __future__ import annotations

from typing import Final

import numpy as np

SEED_CLASSES: Final[tuple[str, ...]] = (
    "Developed",
    "Barren",
    "Forest",
    "Shrub",
    "Herbaceous",
    "Cultivated",
)
WATER_CLASS: Final = "Water"
CLASSES: Final[tuple[str, ...]] = (*SEED_CLASSES, WATER_CLASS)
SEED_GROUPS: Final[tuple[str, ...]] = ("Developed", "Cultivated", "Undeveloped")
GROUPS: Final[tuple[str, ...]] = (*SEED_GROUPS, WATER_CLASS)

NLCD_TO_CLASS: Final[dict[int, str]] = {
    **dict.fromkeys((21, 22, 23, 24), "Developed"),
    31: "Barren",
    **dict.fromkeys((41, 42, 43, 90), "Forest"),
    **dict.fromkeys((51, 52), "Shrub"),
    **dict.fromkeys((71, 72, 73, 74, 95), "Herbaceous"),
    **dict.fromkeys((81, 82), "Cultivated"),
}
NLCD_WATER: Final = 11
# Every land-cover code that is a class: the seed's mapping and open water.
NLCD_CLASSES: Final[dict[int, str]] = {**NLCD_TO_CLASS, NLCD_WATER: WATER_CLASS}
# Valid NLCD codes that are deliberately not land-use classes.
NLCD_EXCLUDED: Final[dict[int, str]] = {12: "Ice"}
# Codes used for "no data" across NLCD releases (0 up to 2016, 250 from 2019 on).
NLCD_NODATA: Final[frozenset[int]] = frozenset({0, 250})

CLASS_TO_GROUP: Final[dict[str, str]] = {
    "Developed": "Developed",
    "Cultivated": "Cultivated",
    "Barren": "Undeveloped",
    "Forest": "Undeveloped",
    "Shrub": "Undeveloped",
    "Herbaceous": "Undeveloped",
    WATER_CLASS: WATER_CLASS,
}

RGB = tuple[int, int, int]

# The official NLCD legend colours, for label previews.
NLCD_COLOURS: Final[dict[int, RGB]] = {
    11: (70, 107, 159),
    12: (209, 222, 248),
    21: (222, 197, 197),
    22: (217, 146, 130),
    23: (235, 0, 0),
    24: (171, 0, 0),
    31: (179, 172, 159),
    41: (104, 171, 95),
    42: (28, 95, 44),
    43: (181, 197, 143),
    51: (175, 150, 60),
    52: (204, 184, 121),
    71: (223, 223, 194),
    72: (209, 209, 130),
    73: (163, 204, 81),
    74: (130, 186, 158),
    81: (220, 217, 57),
    82: (171, 108, 40),
    90: (184, 217, 235),
    95: (108, 159, 184),
}
# Six-class map palette, after the NLCD colours of each class's main code.
CLASS_COLOURS: Final[dict[str, RGB]] = {
    "Developed": (235, 0, 0),
    "Barren": (179, 172, 159),
    "Forest": (28, 95, 44),
    "Shrub": (204, 184, 121),
    "Herbaceous": (223, 223, 194),
    "Cultivated": (171, 108, 40),
    WATER_CLASS: (70, 107, 159),
}
# The seed's county map: red developed, white cultivated, green undeveloped; water blue.
GROUP_COLOURS: Final[dict[str, RGB]] = {
    "Developed": (255, 0, 0),
    "Cultivated": (255, 255, 255),
    "Undeveloped": (0, 150, 0),
    WATER_CLASS: (70, 107, 159),
}
NO_DATA_COLOUR: Final[RGB] = (0, 0, 0)


def class_of(code: int) -> str:
    """Return the land-use class of an NLCD code.

    Raises:
        KeyError: ``code`` is ice, nodata, or not an NLCD code; the message says which.
    """
    if code in NLCD_CLASSES:
        return NLCD_CLASSES[code]
    if code in NLCD_EXCLUDED:
        raise KeyError(f"NLCD code {code} ({NLCD_EXCLUDED[code]}) is not a land-use class")
    raise KeyError(f"{code} is not a known NLCD land-cover code")


# Categories of a label cell: the classes (0-6, water last), then these.
WATER = CLASSES.index(WATER_CLASS)
ICE, NODATA, UNKNOWN = 7, 8, 9
CATEGORY_NAMES: Final[tuple[str, ...]] = (*CLASSES, "Ice")


def category_lookup() -> np.ndarray:
    """A table from NLCD code (0-65535) to label-cell category: class index 0-6 (water is
    6), then ICE, NODATA (code 0) or UNKNOWN. Maps whole label rasters at once."""
    table = np.full(65536, UNKNOWN, dtype=np.uint8)
    for code, name in NLCD_CLASSES.items():
        table[code] = CLASSES.index(name)
    table[12] = ICE
    table[0] = NODATA
    return table


def is_known_code(code: int) -> bool:
    """Whether ``code`` is a land-cover code of NLCD (a class or ice)."""
    return code in NLCD_CLASSES or code in NLCD_EXCLUDED
