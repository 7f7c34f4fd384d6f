"""The one read path: a split's tiles read from their scenes are the chips exported from
them, a model trained on either is the same model, and the cache spares storage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landuse import storage, tiles
from landuse.models.preprocessing import ImageError, PreprocessSpec
from landuse.tiles import TileCache, read_tiles
from landuse.tiling import export_chips, manifest_url

SPEC = PreprocessSpec(input_size=224)  # the tiles' size: chips need no resizing


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    """Two synthetic counties, 2010 and 2016, tiled at 224 px, split by county: (root, split)."""
    from landuse.counties import load_registry
    from landuse.splits import build_dataset
    from landuse.synthetic import make_synthetic
    from landuse.tiling import TilingConfig, build_county

    out = tmp_path_factory.mktemp("tiles")
    make_synthetic(str(out / "synthetic"), counties=2, size_m=896, res_m=4.0, seed=0)
    registry = load_registry(str(out / "synthetic" / "counties.json"))
    root = str(out / "root")
    manifests = [r.manifest_url for county in registry.values()
                 for r in build_county(county, [2010, 2016], root,
                                       TilingConfig(purity_threshold=0.9))]
    built = build_dataset(manifests, str(out / "dataset"), val_counties=["synthetic-county-2"])
    return root, storage.read_parquet(built.url).to_pandas()


def chip_split(root: str, split: pd.DataFrame, dest: Path) -> pd.DataFrame:
    """The split as a split of exported chips only (no scene columns): the chip path."""
    urls = {}
    for (county, year), _ in split.groupby(["county", "year"]):
        listed = pd.read_parquet(export_chips(manifest_url(root, county, int(year)),
                                              str(dest / county / str(year))))
        urls.update({(county, year, t): u for t, u in zip(listed["tile_id"],
                                                          listed["image_url"], strict=True)})
    chips = split.drop(columns=list(tiles.SCENE_COLUMNS))
    chips["image_url"] = [urls[(c, y, t)] for c, y, t in
                          zip(split["county"], split["year"], split["tile_id"], strict=True)]
    return chips


def test_tiles_read_from_scenes_are_the_exported_chips(dataset, tmp_path):
    root, split = dataset
    from_scenes = read_tiles(split, SPEC)
    from_chips = read_tiles(chip_split(root, split, tmp_path), SPEC)
    assert from_scenes.shape == (len(split), 224, 224, 3) and from_scenes.std() > 0
    assert from_scenes.tobytes() == from_chips.tobytes()  # equal by construction


def test_a_model_trained_on_chips_or_on_scenes_is_the_same_model(dataset, tmp_path):
    from landuse.models.keras_trainer import TrainConfig, train_keras
    from landuse.models.runners import OnnxRunner

    root, split = dataset
    config = TrainConfig(epochs=2, batch_size=8, dense_units=8)
    trained = {}
    for source, frame in (("scenes", split), ("chips", chip_split(root, split, tmp_path))):
        url = str(tmp_path / f"{source}.parquet")
        frame.to_parquet(url)
        trained[source] = train_keras(url, tmp_path / source, config).bundle
    val = split[split["split"] == "validation"]
    pixels = read_tiles(val, trained["scenes"].spec.preprocessing)
    a, b = (OnnxRunner(trained[s]).predict(pixels) for s in ("scenes", "chips"))
    np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("accuracy", "group_accuracy", "confusion"):
        assert trained["scenes"].spec.metrics[key] == trained["chips"].spec.metrics[key]


def test_each_scene_is_opened_once_per_batch(dataset, monkeypatch):
    _, split = dataset
    opened: list[str] = []
    real_open = tiles.open_raster

    def counting(url: str):  # type: ignore[no-untyped-def]
        opened.append(url)
        return real_open(url)

    monkeypatch.setattr(tiles, "open_raster", counting)
    shuffled = split.sample(frac=1.0, random_state=1)
    read_tiles(shuffled, SPEC)
    assert sorted(opened) == sorted(split["scene_url"].unique())


def test_later_epochs_come_from_the_cache_not_from_storage(dataset, tmp_path):
    _, split = dataset
    scene = Path(split["scene_url"].iloc[0])
    moved = split.assign(scene_url=split["scene_url"].str.replace(
        str(scene.parent), str(tmp_path / "scenes"), regex=False))
    shutil.copytree(scene.parent, tmp_path / "scenes")
    cache = TileCache(moved, SPEC, tmp_path)
    first = cache.get(np.arange(len(moved))[::-1]).copy()
    shutil.rmtree(tmp_path / "scenes")  # storage gone: a second epoch does not notice
    again = cache.get(np.arange(len(moved))[::-1])
    assert again.tobytes() == first.tobytes()
    assert cache.all().tobytes() == read_tiles(split, SPEC).tobytes()


def test_a_tile_with_neither_scene_nor_chip_is_named(dataset):
    _, split = dataset
    row = split.iloc[:1].assign(scene_url=None, image_url=None)
    with pytest.raises(ImageError, match=f"tile {row['tile_id'].iloc[0]}: neither"):
        read_tiles(row, SPEC)
