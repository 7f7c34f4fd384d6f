"""Scoring fixtures: tiled synthetic counties with manifests, and a hand-built ONNX bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from landuse.models.preprocessing import PreprocessSpec

CLASSES = ("Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated")


@pytest.fixture(scope="session")
def tiled(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> Path:
    """A storage root with manifests (and chips of trainable tiles) of both synthetic counties,
    2010 and 2016."""
    from landuse import counties
    from landuse.tiling import TilingConfig, build_county

    root = tmp_path_factory.mktemp("scoring-root")
    registry = counties.load_registry(str(synthetic / "counties.json"))
    for county in registry.values():
        build_county(county, [2010, 2016], str(root), TilingConfig(tile_px=64))
    return root


@pytest.fixture(scope="session")
def tiled_all(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> Path:
    """Synthetic county 1, 2010 and 2016, tiled with a chip for every tile (chips='all')."""
    from landuse import counties
    from landuse.tiling import TilingConfig, build_county

    root = tmp_path_factory.mktemp("scoring-root-all")
    county = counties.load_registry(str(synthetic / "counties.json"))["synthetic-county-1"]
    build_county(county, [2010, 2016], str(root), TilingConfig(tile_px=64, chips="all"))
    return root


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, onnx_kit) -> Path:
    """A six-class ONNX bundle (channel means -> linear -> softmax) on 64 px input."""
    folder = tmp_path_factory.mktemp("bundles") / "six-class"
    spec = PreprocessSpec(input_size=64, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0))
    onnx_kit.bundle(folder, spec, CLASSES)
    return folder
