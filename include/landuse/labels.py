"""Land-use classes, the NLCD mapping the seed work used, and the colour legends of the maps.

The six classes and their NLCD codes are exactly those of the Embarrassingly Parallel Image
Classification work. Water (11) and perennial ice/snow (12) are not classes: tiles whose
plurality is one of them are kept in manifests (for county-wide maps) but never trained on.
"""

from __future__ import annotations

from typing import Final

import numpy as np

CLASSES: Final[tuple[str, ...]] = (
    "Developed",
    "Barren",
    "Forest",
    "Shrub",
    "Herbaceous",
    "Cultivated",
)
GROUPS: Final[tuple[str, ...]] = ("Developed", "Cultivated", "Undeveloped")

NLCD_TO_CLASS: Final[dict[int, str]] = {
    **dict.fromkeys((21, 22, 23, 24), "Developed"),
    31: "Barren",
    **dict.fromkeys((41, 42, 43, 90), "Forest"),
    **dict.fromkeys((51, 52), "Shrub"),
    **dict.fromkeys((71, 72, 73, 74, 95), "Herbaceous"),
    **dict.fromkeys((81, 82), "Cultivated"),
}
# Valid NLCD codes that are deliberately not land-use classes.
NLCD_EXCLUDED: Final[dict[int, str]] = {11: "Water", 12: "Ice"}
# Codes used for "no data" across NLCD releases (0 up to 2016, 250 from 2019 on).
NLCD_NODATA: Final[frozenset[int]] = frozenset({0, 250})

CLASS_TO_GROUP: Final[dict[str, str]] = {
    "Developed": "Developed",
    "Cultivated": "Cultivated",
    "Barren": "Undeveloped",
    "Forest": "Undeveloped",
    "Shrub": "Undeveloped",
    "Herbaceous": "Undeveloped",
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
}
# The seed's county map: red developed, white cultivated, green undeveloped.
GROUP_COLOURS: Final[dict[str, RGB]] = {
    "Developed": (255, 0, 0),
    "Cultivated": (255, 255, 255),
    "Undeveloped": (0, 150, 0),
}
NO_DATA_COLOUR: Final[RGB] = (0, 0, 0)


def class_of(code: int) -> str:
    """Return the land-use class of an NLCD code.

    Raises:
        KeyError: ``code`` is water/ice, nodata, or not an NLCD code; the message says which.
    """
    if code in NLCD_TO_CLASS:
        return NLCD_TO_CLASS[code]
    if code in NLCD_EXCLUDED:
        raise KeyError(f"NLCD code {code} ({NLCD_EXCLUDED[code]}) is not a land-use class")
    raise KeyError(f"{code} is not a known NLCD land-cover code")


# Categories of a label cell: the six classes (0-5), then these.
WATER, ICE, NODATA, UNKNOWN = 6, 7, 8, 9
CATEGORY_NAMES: Final[tuple[str, ...]] = (*CLASSES, "Water", "Ice")


def category_lookup() -> np.ndarray:
    """A table from NLCD code (0-65535) to label-cell category: class index 0-5, then
    WATER, ICE, NODATA (code 0) or UNKNOWN. Maps whole label rasters at once."""
    table = np.full(65536, UNKNOWN, dtype=np.uint8)
    for code, name in NLCD_TO_CLASS.items():
        table[code] = CLASSES.index(name)
    table[11], table[12] = WATER, ICE
    table[0] = NODATA
    return table


def is_known_code(code: int) -> bool:
    """Whether ``code`` is a land-cover code of NLCD (a class, water or ice)."""
    return code in NLCD_TO_CLASS or code in NLCD_EXCLUDED
