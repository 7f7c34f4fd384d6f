"""Project-wide defaults, overridable through environment variables.

``LANDUSE_STORAGE_ROOT``: where outputs go (a folder or ``abfs://container/prefix``);
default ``output/`` in the project. ``LANDUSE_REGISTRY``: the county registry; default the
bundled sample's ``sample/counties.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = PROJECT_ROOT / "sample"


def storage_root() -> str:
    """Default storage root URL for pipeline outputs."""
    return os.environ.get("LANDUSE_STORAGE_ROOT", str(PROJECT_ROOT / "output"))


def registry() -> str:
    """Default county registry URL."""
    return os.environ.get("LANDUSE_REGISTRY", str(SAMPLE / "counties.json"))
