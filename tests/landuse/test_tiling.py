"""Tiling: label purity, the anchored tile grid, manifests and PNGs, and failures that commit
nothing. Checked against the synthetic counties' ground truth and the real sample scene."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.warp import transform
from rasterio.windows import Window

from landuse import labels, storage
from landuse.counties import County, load_registry
from landuse.naip import NaipCatalog
from landuse.naip_scene import parse_scene_name
from landuse.raster import RasterError
from landuse.synthetic import _BASE
from landuse.tiling import (
    INPUTS_KEY,
    MANIFEST_SCHEMA,
    TileGrid,
    TilingConfig,
    build_county,
    export_chips,
    label_stats,
    manifest_url,
    tile_scene,
)

SIZE = 224.0
RES = 4.0  # the synthetic fixture's ground sample distance
CONFIG = TilingConfig(tile_px=64, purity_threshold=0.95)


# --- label_stats ---------------------------------------------------------------------------


def test_pure_block():
    stats = label_stats(np.full((8, 8), 41, dtype=np.uint16))
    assert (stats.label, stats.purity, stats.unknown_codes) == ("Forest", 1.0, ())


def test_codes_of_one_class_pool_together():
    codes = np.array([[41, 42], [43, 90]], dtype=np.uint16)
    assert label_stats(codes).label == "Forest"
    assert label_stats(codes).purity == 1.0


def test_plurality_and_purity():
    codes = np.zeros((10, 10), dtype=np.uint16)
    codes[:5] = 82
    codes[5:8] = 21
    codes[8:] = 52
    stats = label_stats(codes)
    assert stats.label == "Cultivated"
    assert stats.purity == pytest.approx(0.5)


def test_water_can_be_the_plurality():
    codes = np.full((10, 10), 11, dtype=np.uint16)
    codes[:4] = 81
    stats = label_stats(codes)
    assert stats.label == "Water"
    assert stats.purity == pytest.approx(0.6)


def test_nodata_counts_against_purity_but_not_for_plurality():
    codes = np.zeros((10, 10), dtype=np.uint16)
    codes[:3] = 31  # 30 % barren, 70 % no data
    stats = label_stats(codes)
    assert stats.label == "Barren"
    assert stats.purity == pytest.approx(0.3)


def test_all_nodata():
    stats = label_stats(np.zeros((4, 4), dtype=np.uint16))
    assert stats.label is None and stats.purity == 0.0


def test_unknown_codes_are_reported():
    codes = np.full((4, 4), 41, dtype=np.uint16)
    codes[0, 0], codes[1, 1], codes[2, 2] = 99, 250, 99
    stats = label_stats(codes)
    assert stats.unknown_codes == (99, 250)
    assert stats.label == "Forest"
    assert stats.purity == pytest.approx(13 / 16)


# --- TileGrid -----------------------------------------------------------------------------


def test_grid_is_anchored_to_multiples_of_the_tile_size():
    grid = TileGrid.inside((579_001.3, 5_097_300.7, 580_400.2, 5_098_700.9), SIZE)
    for col, row, (minx, miny, maxx, maxy) in grid.tiles():
        assert minx == col * SIZE and miny == row * SIZE
        assert maxx - minx == SIZE and maxy - miny == SIZE
        assert minx >= 579_001.3 and maxx <= 580_400.2
        assert miny >= 5_097_300.7 and maxy <= 5_098_700.9
    assert (grid.ncols, grid.nrows) == (6, 6)
    assert grid.bounds[0] == math.ceil(579_001.3 / SIZE) * SIZE


def test_grid_tiles_run_north_to_south_then_west_to_east():
    grid = TileGrid.inside((0.0, 0.0, 448.0, 672.0), SIZE)
    order = [(c, r) for c, r, _ in grid.tiles()]
    assert order == [(0, 2), (1, 2), (0, 1), (1, 1), (0, 0), (1, 0)]


def test_exact_edges_and_too_small_extents():
    assert (TileGrid.inside((0.0, 0.0, 448.0, 448.0), SIZE).ncols) == 2
    assert TileGrid.inside((0.001, 0.0, 448.0, 448.0), SIZE).ncols == 1
    assert TileGrid.inside((10.0, 10.0, 200.0, 200.0), SIZE).ncols == 0
    assert list(TileGrid.inside((10.0, 10.0, 200.0, 200.0), SIZE).tiles()) == []


def test_same_ground_gives_the_same_tiles_in_two_vintages():
    # Two acquisitions of one quarter quad never share an exact extent.
    a = TileGrid.inside((579_040.0, 5_097_344.0, 580_384.0, 5_098_688.0), SIZE)
    b = TileGrid.inside((579_036.3, 5_097_346.2, 580_387.1, 5_098_690.5), SIZE)
    tiles_a = {(c, r): bounds for c, r, bounds in a.tiles()}
    tiles_b = {(c, r): bounds for c, r, bounds in b.tiles()}
    assert tiles_b.keys() <= tiles_a.keys()
    assert len(tiles_b) == 30  # b's bottom edge is 2.2 m north of a's: one row fewer
    assert all(tiles_a[k] == tiles_b[k] for k in tiles_b)


def test_label_transform_is_aligned_with_the_tiles():
    grid = TileGrid.inside((0.0, 0.0, 448.0, 672.0), SIZE)
    tf = grid.label_transform(32)
    assert tf @ (0, 0) == (0.0, 672.0)
    assert tf @ (64, 96) == (448.0, 0.0)


def test_config_validation():
    with pytest.raises(ValueError):
        TilingConfig(bands=("nir", "red", "green"))
    with pytest.raises(ValueError):
        TilingConfig(tile_px=8)
    with pytest.raises(ValueError):
        TilingConfig(purity=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        TilingConfig(chips="some")  # type: ignore[arg-type]


# --- tiling the synthetic counties --------------------------------------------------------


@pytest.fixture(scope="module")
def registry(synthetic):
    return load_registry(str(synthetic / "counties.json"))


@pytest.fixture(scope="module")
def tiled(registry, tmp_path_factory):
    """Both synthetic counties tiled for 2010 and 2016: (root, results, manifests)."""
    root = str(tmp_path_factory.mktemp("tiles"))
    results = []
    for county in registry.values():
        results.extend(build_county(county, [2016, 2010], root, CONFIG))
    frames = {(r.county, r.year): pd.read_parquet(r.manifest_url) for r in results}
    return root, results, frames


def test_one_manifest_per_county_year(tiled, registry):
    root, results, _ = tiled
    assert [(r.county, r.year) for r in results] == [
        (name, year) for name in registry for year in (2010, 2016)
    ]
    for r in results:
        assert r.manifest_url == manifest_url(root, r.county, r.year)
        assert r.manifest_url == f"{root}/naip/{r.county}/{r.year}/manifest.parquet"
        assert len(r.scenes) == 1
        assert parse_scene_name(r.scenes[0]).year == r.year


def test_manifest_schema(tiled):
    _, results, _ = tiled
    schema = pq.read_schema(results[0].manifest_url)
    assert schema.names == MANIFEST_SCHEMA.names
    for column in (
        "tile_id", "county", "year", "scene", "col_off", "row_off", "width", "height",
        "minx", "miny", "maxx", "maxy", "crs", "label", "group", "purity", "image_url",
        "trainable",
    ):
        assert column in schema.names
    assert schema.field("year").type == "int32"
    assert schema.field("trainable").type == "bool"
    assert schema.field("purity").type == "float"


def test_manifest_rows_describe_their_tiles(tiled, registry):
    _, results, frames = tiled
    for r in results:
        m = frames[(r.county, r.year)]
        county = registry[r.county]
        assert len(m) == r.tiles == 36  # 1344 m scenes: 6 x 6 tiles of 224 m
        assert m["tile_id"].is_unique and list(m["tile_id"]) == sorted(m["tile_id"])
        assert (m["county"] == r.county).all() and (m["year"] == r.year).all()
        assert (m["scene"] == r.scenes[0]).all()
        assert (m["crs"] == "EPSG:26914").all()
        assert (m["synthetic"]).all()
        assert (m["maxx"] - m["minx"] == SIZE).all() and (m["maxy"] - m["miny"] == SIZE).all()
        assert ((m["minx"] % SIZE) == 0).all() and ((m["miny"] % SIZE) == 0).all()
        ids = "26914_" + (m["minx"] // SIZE).astype(int).astype(str) + "_"
        assert (m["tile_id"] == ids + (m["miny"] // SIZE).astype(int).astype(str)).all()
        assert (m["width"] == SIZE / RES).all() and (m["height"] == SIZE / RES).all()
        with rasterio.open(storage.join(county.naip, r.scenes[0])) as src:
            left, top = src.transform.c, src.transform.f
        assert np.allclose(m["col_off"], (m["minx"] - left) / RES)
        assert np.allclose(m["row_off"], (top - m["maxy"]) / RES)
        assert m["trainable"].sum() == r.trainable


def test_same_tile_ids_in_both_years(tiled, registry):
    _, _, frames = tiled
    for name in registry:
        assert list(frames[(name, 2010)]["tile_id"]) == list(frames[(name, 2016)]["tile_id"])


def test_tiling_writes_manifests_not_images(tiled):
    root, _, frames = tiled
    for m in frames.values():
        assert m["image_url"].isna().all()  # training and scoring read the scenes
    assert not list(Path(root).rglob("*.png"))


def test_exported_chips_are_the_chips_tiling_would_cut(tiled, registry, tmp_path):
    root, _, _ = tiled
    config = CONFIG.model_copy(update={"chips": "trainable"})
    [cut] = build_county(registry["synthetic-county-1"], [2010], str(tmp_path / "cut"), config)
    m = pd.read_parquet(cut.manifest_url)
    chips = m[m["trainable"]]
    folder = f"{tmp_path}/cut/naip/synthetic-county-1/2010/tiles"
    assert 0 < len(chips) < len(m)
    assert list(chips["image_url"]) == [f"{folder}/{t}.png" for t in chips["tile_id"]]
    assert m.loc[~m["trainable"], "image_url"].isna().all()

    listed_url = export_chips(manifest_url(root, "synthetic-county-1", 2010),
                              str(tmp_path / "exported"))
    listed = pd.read_parquet(listed_url)
    assert listed_url == f"{tmp_path}/exported/chips.parquet"
    assert list(listed["tile_id"]) == list(chips["tile_id"])
    for exported, at_tiling in zip(listed["image_url"], chips["image_url"], strict=True):
        assert storage.read_bytes(exported) == storage.read_bytes(at_tiling)
        with Image.open(io.BytesIO(storage.read_bytes(exported))) as img:
            assert (img.format, img.size, img.mode) == ("PNG", (CONFIG.tile_px,) * 2, "RGB")
    every = pd.read_parquet(export_chips(manifest_url(root, "synthetic-county-1", 2010),
                                         str(tmp_path / "every"), "all"))
    assert len(every) == (m["status"] != "empty").sum()


def test_chips_need_a_manifest_from_tiling(tiled, tmp_path):
    _, _, frames = tiled
    bare = tmp_path / "manifest.parquet"
    frames[("synthetic-county-1", 2010)].to_parquet(bare)  # no record of the tiling
    with pytest.raises(ValueError, match="does not record its tiling"):
        export_chips(str(bare))


def test_trainable_tiles_are_pure_classes(tiled):
    _, _, frames = tiled
    all_rows = pd.concat(frames.values())
    train = all_rows[all_rows["trainable"]]
    assert len(train) >= 10
    assert (train["purity"] >= CONFIG.purity_threshold).all()
    assert train["label"].isin(labels.CLASSES).all()
    assert (train["group"] == train["label"].map(labels.CLASS_TO_GROUP)).all()
    assert train["note"].isna().all() and (train["status"] == "ok").all()
    rest = all_rows[~all_rows["trainable"]]
    assert rest["note"].notna().all()
    impure = rest[rest["label"].isin(labels.CLASSES)]
    assert (impure["purity"] < CONFIG.purity_threshold).all()


def test_water_is_a_class_of_its_own_group(tiled):
    _, _, frames = tiled
    all_rows = pd.concat(frames.values())
    water = all_rows[all_rows["label"] == "Water"]
    assert len(water) > 0
    assert (water["group"] == "Water").all()
    pure = water["purity"] >= CONFIG.purity_threshold
    assert pure.any() and (water["trainable"] == pure).all()  # trainable like any class


def _nlcd_at(url, xs, ys):
    with rasterio.open(url) as src:
        ax, ay = transform("EPSG:26914", src.crs, list(xs), list(ys))
        return np.array([int(v[0]) for v in src.sample(zip(ax, ay, strict=True))])


def test_labels_agree_with_the_synthetic_truth(tiled, registry, synthetic):
    """Trainable tiles: the label is the NLCD class on the ground and the imagery's class."""
    _, _, frames = tiled
    names = list(_BASE)
    centroids = np.array([_BASE[n] for n in names], dtype=float)
    checked = 0
    for (county_name, year), m in frames.items():
        county = registry[county_name]
        nlcd = str(synthetic / "nlcd" / f"nlcd_{year}_synthetic.tif")
        train = m[m["trainable"]]
        # 1. Re-read the 30 m Albers NLCD at points inside each tile.
        for fx, fy in ((0.5, 0.5), (0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)):
            xs = train["minx"] + fx * SIZE
            ys = train["miny"] + fy * SIZE
            codes = _nlcd_at(nlcd, xs, ys)
            assert [labels.NLCD_CLASSES.get(c) for c in codes] == list(train["label"])
        # 2. The imagery of each tile looks like its label's parcels (R, G, B, NIR means).
        with rasterio.open(storage.join(county.naip, m["scene"].iloc[0])) as src:
            for row in train.itertuples():
                window = Window(row.col_off, row.row_off, row.width, row.height)
                means = src.read(window=window).reshape(4, -1).mean(axis=1)
                nearest = names[int(np.argmin(((centroids - means) ** 2).sum(axis=1)))]
                assert nearest == row.label, (county_name, year, row.tile_id)
                checked += 1
    assert checked >= 10


def test_labels_follow_the_nlcd_vintage_of_the_year(tiled):
    """Planted development: some tile turns Developed between 2010 and 2016, none goes back."""
    _, _, frames = tiled
    became = 0
    for name in ("synthetic-county-1", "synthetic-county-2"):
        a = frames[(name, 2010)].set_index("tile_id")
        b = frames[(name, 2016)].set_index("tile_id")
        was_dev = a["label"] == "Developed"
        is_dev = b["label"] == "Developed"
        assert not (was_dev & ~is_dev & (a["purity"] == 1.0)).any()
        became += int((~was_dev & is_dev).sum())
    assert became > 0


def test_nir_is_the_fourth_png_channel(registry, tmp_path):
    county = registry["synthetic-county-1"]
    config = TilingConfig(tile_px=int(SIZE / RES), bands=("red", "green", "blue", "nir"),
                          chips="all")
    [result] = build_county(county, [2010], str(tmp_path), config)
    m = pd.read_parquet(result.manifest_url)
    assert (m["bands"] == "red,green,blue,nir").all()
    with rasterio.open(storage.join(county.naip, result.scenes[0])) as src:
        scene = src.read()
    for row in m.itertuples():
        with Image.open(row.image_url) as img:
            assert img.mode == "RGBA" and img.size == (56, 56)
            png = np.asarray(img).transpose(2, 0, 1)
        r0, c0 = int(row.row_off), int(row.col_off)
        expected = scene[:, r0 : r0 + 56, c0 : c0 + 56]
        assert np.array_equal(png, expected), row.tile_id  # 56 px = no resampling
        assert png[3].min() < 255
    # Resampled to other sizes, the 4th channel is still band 4, not an opaque alpha.
    config = TilingConfig(tile_px=32, bands=("red", "green", "blue", "nir"), chips="all")
    [result] = build_county(county, [2010], str(tmp_path / "small"), config)
    row = pd.read_parquet(result.manifest_url).iloc[7]
    with Image.open(row["image_url"]) as img:
        png = np.asarray(img).astype(float)
    r0, c0 = int(row["row_off"]), int(row["col_off"])
    block = scene[:, r0 : r0 + 56, c0 : c0 + 56].astype(float)
    assert png.shape == (32, 32, 4)
    for band in range(4):
        assert abs(png[..., band].mean() - block[band].mean()) < 4.0
    assert abs(png[..., 3].mean() - block[2].mean()) > 20  # NIR, not blue


def _files(folder):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_rerun_writes_identical_bytes(registry, tmp_path):
    county = registry["synthetic-county-2"]
    [first] = build_county(county, [2016], str(tmp_path), CONFIG, overwrite=True)
    before = {p: data for p, (_, data) in _files(tmp_path).items()}
    [second] = build_county(county, [2016], str(tmp_path), CONFIG, overwrite=True)
    after = {p: data for p, (_, data) in _files(tmp_path).items()}
    assert first == second
    assert after.keys() == before.keys()
    assert all(after[p] == before[p] for p in before)
    assert not [p for p in after if p.name.startswith(".tmp-")]


def test_a_committed_county_year_is_finished_whatever_the_orchestrator_recorded(
    registry, tmp_path
):
    """A crash between the manifest's commit and Airflow marking the task done: the retry
    finds the manifest made from the same inputs and redoes nothing."""
    county = registry["synthetic-county-2"]
    [first] = build_county(county, [2016], str(tmp_path), CONFIG)
    before = _files(tmp_path)
    (tmp_path / "naip" / county.name / "2016" / ".tmp-crashed.parquet").write_bytes(b"x")
    [again] = build_county(county, [2016], str(tmp_path), CONFIG)
    assert again == first
    after = _files(tmp_path)
    del after[tmp_path / "naip" / county.name / "2016" / ".tmp-crashed.parquet"]
    assert after == before  # same bytes and modification times: not tiled again
    recorded = json.loads(pq.read_schema(first.manifest_url).metadata[INPUTS_KEY])
    assert recorded["county"] == county.name and recorded["year"] == 2016
    assert recorded["config"]["tile_px"] == CONFIG.tile_px
    assert [s["url"] for s in recorded["scenes"]] == [
        s.url for s in NaipCatalog(county.naip).scenes(years=[2016], bbox=county.bbox)]


@pytest.mark.parametrize("change", ["config", "scene", "overwrite"])
def test_other_inputs_tile_the_county_year_again(registry, synthetic, tmp_path, change):
    county = registry["synthetic-county-2"]
    naip = tmp_path / "naip-src"
    shutil.copytree(synthetic / "naip", naip)
    county = county.model_copy(update={"naip": str(naip)})
    root = tmp_path / "out"
    [first] = build_county(county, [2016], str(root), CONFIG)
    manifest = root / "naip" / county.name / "2016" / "manifest.parquet"
    stamp = manifest.stat().st_mtime_ns
    config, overwrite = CONFIG, change == "overwrite"
    if change == "config":
        config = CONFIG.model_copy(update={"purity_threshold": 0.5})
    if change == "scene":  # a re-released scene of the same name
        [found] = NaipCatalog(str(naip)).scenes(years=[2016], bbox=county.bbox)
        scene = found.url
        with rasterio.open(scene) as src:
            profile, pixels = src.profile, src.read()
        with rasterio.open(scene, "w", **{**profile, "compress": "deflate"}) as dst:
            dst.write(pixels)
    [second] = build_county(county, [2016], str(root), config, overwrite=overwrite)
    assert manifest.stat().st_mtime_ns != stamp
    if change == "config":
        assert second.trainable >= first.trainable


def test_overlapping_scenes_of_one_year_give_each_tile_once(registry, synthetic, tmp_path):
    county = registry["synthetic-county-1"]
    naip = tmp_path / "naip"
    naip.mkdir()
    scene = synthetic / "naip" / "synthetic_m_4609757_sw_14_4_20100615.tif"
    shutil.copy(scene, naip / scene.name)
    shutil.copy(scene, naip / "synthetic_m_4609757_sw_14_4_20100701.tif")
    [result] = build_county(county.model_copy(update={"naip": str(naip)}), [2010],
                            str(tmp_path / "out"), CONFIG)
    m = pd.read_parquet(result.manifest_url)
    assert len(result.scenes) == 2
    assert len(m) == 36 and m["tile_id"].is_unique
    assert (m["scene"] == scene.name).all()


def test_nlcd_override_none_gives_unlabelled_tiles(registry, tmp_path):
    [result] = build_county(registry["synthetic-county-1"], [2010], str(tmp_path), CONFIG, nlcd="")
    m = pd.read_parquet(result.manifest_url)
    assert m["label"].isna().all() and not m["trainable"].any()


def test_real_sample_scene_without_nlcd(real_scene, tmp_path):
    bbox = (-99.17, 47.01, -99.15, 47.03)
    county = County(name="stutsman-nd", state="nd", bbox=bbox, naip=str(real_scene.parent))
    [result] = build_county(county, [2016], str(tmp_path), TilingConfig(tile_px=32, chips="all"))
    m = pd.read_parquet(result.manifest_url)
    assert result.scenes == (real_scene.name,)
    assert 10 <= len(m) == result.tiles
    assert m["label"].isna().all() and m["group"].isna().all() and m["purity"].isna().all()
    assert not m["trainable"].any() and result.trainable == 0
    assert (m["note"] == "no NLCD labels").all()
    assert (m["crs"] == "EPSG:26914").all()
    lons, lats = transform("EPSG:26914", "EPSG:4326", list((m["minx"] + m["maxx"]) / 2),
                           list((m["miny"] + m["maxy"]) / 2))
    assert all(bbox[0] <= x <= bbox[2] and bbox[1] <= y <= bbox[3]
               for x, y in zip(lons, lats, strict=True))
    with Image.open(m["image_url"].iloc[0]) as img:
        pixels = np.asarray(img)
    assert pixels.shape == (32, 32, 3) and pixels.std() > 1  # real, varied imagery


def test_tiles_with_no_imagery_are_marked_empty(registry, synthetic, tmp_path):
    county = registry["synthetic-county-1"]
    name = "synthetic_m_4609757_sw_14_4_20100615.tif"
    naip = tmp_path / "naip"
    _rewrite(synthetic / "naip" / name, naip / name, _blank)
    [result] = build_county(county.model_copy(update={"naip": str(naip)}), [2010],
                            str(tmp_path / "out"), CONFIG.model_copy(update={"chips": "all"}))
    m = pd.read_parquet(result.manifest_url).set_index("tile_id")
    corner = m.loc[m["row_off"].eq(0) & m["col_off"].eq(0)].iloc[0]
    assert corner["status"] == "empty" and corner["image_url"] is None
    assert not corner["trainable"] and corner["nodata_fraction"] == 1.0
    half = m.loc[m["row_off"].eq(0) & m["col_off"].eq(56)].iloc[0]
    assert half["nodata_fraction"] == pytest.approx(0.5, abs=0.05)
    assert not half["trainable"]
    assert half["image_url"] is not None
    assert len(m) == 36


# --- failures commit nothing --------------------------------------------------------------


def _blank(data):
    # The top-left tile and half of the next one, plus a margin: bilinear resampling
    # reaches half a pixel beyond a tile's window.
    data[:, :60, :84] = 0
    return data


def _rewrite(src_path, dst_path, change=None, *, crs=True, bands=None):
    with rasterio.open(src_path) as src:
        profile = src.profile
        data = src.read()
    data = change(data) if change else data
    if bands is not None:
        data = data[:bands]
    profile.update(count=data.shape[0])
    if not crs:
        profile.pop("crs")
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return dst_path


SCENE_2010 = "synthetic_m_4609757_sw_14_4_20100615.tif"
SCENE_2016 = "synthetic_m_4609757_sw_14_4_20160615.tif"


@pytest.fixture
def bad_county(registry, tmp_path):
    """County 1 with its own NAIP folder (to be filled by the test) and the synthetic NLCD."""
    naip = tmp_path / "naip"
    naip.mkdir()
    county = registry["synthetic-county-1"].model_copy(update={"naip": str(naip)})
    return county, naip, str(tmp_path / "out")


def _no_manifest(root, county, year):
    assert not storage.exists(manifest_url(root, county, year))


def test_three_bands_when_nir_is_asked(bad_county, synthetic):
    county, naip, root = bad_county
    scene = _rewrite(synthetic / "naip" / SCENE_2010, naip / SCENE_2010, bands=3)
    nir = TilingConfig(tile_px=32, bands=("red", "green", "blue", "nir"))
    with pytest.raises(RasterError, match="has 3 uint8 band") as err:
        build_county(county, [2010], root, nir)
    assert str(scene) in str(err.value)
    _no_manifest(root, county.name, 2010)
    # The same scene is fine for RGB tiles.
    [result] = build_county(county, [2010], root, TilingConfig(tile_px=32))
    assert result.tiles == 36


def test_scene_without_crs(bad_county, synthetic):
    county, naip, root = bad_county
    scene = _rewrite(synthetic / "naip" / SCENE_2010, naip / SCENE_2010, crs=False)
    with pytest.raises(RasterError, match="no CRS") as err:
        build_county(county, [2010], root, CONFIG)
    assert str(scene) in str(err.value)
    _no_manifest(root, county.name, 2010)


def test_corrupt_scene_that_cannot_be_opened(bad_county, synthetic):
    county, naip, root = bad_county
    data = (synthetic / "naip" / SCENE_2010).read_bytes()
    (naip / SCENE_2010).write_bytes(data[: len(data) // 2])  # its directory was at the end
    with pytest.raises(RasterError) as err:
        build_county(county, [2010], root, CONFIG)
    assert str(naip / SCENE_2010) in str(err.value)
    _no_manifest(root, county.name, 2010)


def test_corrupt_scene_failing_half_way(real_scene, tmp_path):
    naip = tmp_path / "naip"
    naip.mkdir()
    data = real_scene.read_bytes()
    (naip / real_scene.name).write_bytes(data[: len(data) * 3 // 4])  # header intact
    county = County(name="stutsman-nd", bbox=(-99.482, 46.631, -98.439, 47.329), naip=str(naip))
    root = str(tmp_path / "out")
    with pytest.raises(RasterError, match="corrupt or truncated") as err:
        # 48 px: full-resolution reads (a smaller tile_px is served from the intact overview)
        build_county(county, [2016], root, TilingConfig(tile_px=48, chips="all"))
    assert str(naip / real_scene.name) in str(err.value)
    # Tiles before the damage were written; without a manifest they are not committed.
    assert list((tmp_path / "out" / "naip" / "stutsman-nd" / "2016" / "tiles").glob("*.png"))
    _no_manifest(root, county.name, 2016)


def test_failed_year_commits_nothing_and_keeps_earlier_years(bad_county, synthetic):
    county, naip, root = bad_county
    shutil.copy(synthetic / "naip" / SCENE_2010, naip / SCENE_2010)
    shutil.copy(synthetic / "naip" / SCENE_2016, naip / SCENE_2016)
    [_, committed] = build_county(county, [2010, 2016], root, CONFIG)
    kept = storage.read_bytes(committed.manifest_url)
    data = (naip / SCENE_2016).read_bytes()
    (naip / SCENE_2016).write_bytes(data[: len(data) // 3])
    with pytest.raises(RasterError, match=SCENE_2016):
        build_county(county, [2010, 2016], root, CONFIG)
    assert storage.exists(manifest_url(root, county.name, 2010))
    # The 2016 manifest of the earlier run is untouched, not replaced by a partial one.
    assert storage.read_bytes(committed.manifest_url) == kept


def test_nlcd_that_does_not_overlap(bad_county, synthetic, tmp_path):
    county, naip, root = bad_county
    shutil.copy(synthetic / "naip" / SCENE_2010, naip / SCENE_2010)
    far = tmp_path / "nlcd" / "nlcd_2011_elsewhere.tif"
    far.parent.mkdir()
    with rasterio.open(
        far, "w", driver="GTiff", width=50, height=50, count=1, dtype="uint8", crs="EPSG:5070",
        transform=Affine(30, 0, 1_500_000, 0, -30, 1_800_000),
    ) as dst:
        dst.write(np.full((1, 50, 50), 41, dtype=np.uint8))
    with pytest.raises(RasterError, match="does not overlap") as err:
        build_county(county, [2010], root, CONFIG, nlcd=str(far.parent))
    assert str(far) in str(err.value)
    _no_manifest(root, county.name, 2010)


def test_county_without_scenes_for_the_year(registry, tmp_path):
    county = registry["synthetic-county-2"]
    root = str(tmp_path)
    with pytest.raises(ValueError, match=r"county synthetic-county-2: no NAIP scenes .*2012"):
        build_county(county, [2012], root, CONFIG)
    _no_manifest(root, county.name, 2012)
    # A year without scenes next to one with scenes is skipped, not committed empty.
    [result] = build_county(county, [2012, 2016], root, CONFIG)
    assert result.year == 2016
    _no_manifest(root, county.name, 2012)


def test_tile_scene_returns_rows_without_committing(registry, synthetic, tmp_path):
    county = registry["synthetic-county-1"]
    scene = parse_scene_name(str(synthetic / "naip" / SCENE_2010))
    seen = {"26914_2585_22756"}
    rows = tile_scene(scene, county, 2010, CONFIG.model_copy(update={"chips": "all"}),
                      str(tmp_path / "tiles"), None, seen)
    assert len(rows) == 35 and "26914_2585_22756" not in {r["tile_id"] for r in rows}
    assert len(seen) == 36
    assert not list(tmp_path.rglob("*.parquet"))
    assert len(list((tmp_path / "tiles").glob("*.png"))) == 35


def test_nlcd_with_a_wrong_crs_is_refused_then_overridden(registry, synthetic, tmp_path):
    """The synthetic NLCD rewritten with the kind of broken CRS real downloads carry (NLCD's
    Albers without its origin): refused with the file named; nlcd_crs gives the labels of
    the intact raster, and is recorded among the manifest's inputs."""
    county = registry["synthetic-county-1"]
    broken = tmp_path / "nlcd"
    broken.mkdir()
    wrong = CRS.from_proj4("+proj=aea +lat_0=0 +lon_0=0 +lat_1=29.5 +lat_2=45.5 +datum=WGS84")
    for source in (synthetic / "nlcd").glob("nlcd_*.tif"):
        with rasterio.open(source) as src:
            profile, codes = src.profile, src.read()
        with rasterio.open(broken / source.name, "w", **{**profile, "crs": wrong}) as dst:
            dst.write(codes)
    with pytest.raises(RasterError, match="probably wrong") as err:
        build_county(county, [2016], str(tmp_path / "refused"), CONFIG, nlcd=str(broken))
    assert str(broken) in str(err.value) and "nlcd_crs" in str(err.value)

    [intact] = build_county(county, [2016], str(tmp_path / "intact"), CONFIG)
    [fixed] = build_county(county, [2016], str(tmp_path / "fixed"), CONFIG, nlcd=str(broken),
                           nlcd_crs="EPSG:5070")
    a = pd.read_parquet(intact.manifest_url)[["tile_id", "label", "purity", "trainable"]]
    b = pd.read_parquet(fixed.manifest_url)[["tile_id", "label", "purity", "trainable"]]
    pd.testing.assert_frame_equal(a, b)
    recorded = json.loads(pq.read_schema(fixed.manifest_url).metadata[INPUTS_KEY])
    assert recorded["nlcd_crs"] == "EPSG:5070"


# --- reviewed tiles as labels ------------------------------------------------------------


def _review(root, county, tile_id, *, class_a=None, class_b=None, answer="change",
            user="ana", years=(2010, 2016)):
    from landuse.change.run import change_url
    from landuse.review import record

    record(change_url(str(root), county, *years), pd.DataFrame({"tile_id": [tile_id]}),
           user=user, tile_id=tile_id, answer=answer, class_a=class_a, class_b=class_b)


def test_a_review_labels_a_tile_nlcd_left_unlabelled(registry, tmp_path):
    county = registry["synthetic-county-1"]
    [plain] = build_county(county, [2010], str(tmp_path), CONFIG, nlcd="")
    tile = pd.read_parquet(plain.manifest_url)["tile_id"].iloc[7]
    _review(tmp_path, county.name, tile, class_a="Forest", class_b="Developed")
    a, b = build_county(county, [2010, 2016], str(tmp_path), CONFIG, nlcd="")
    for result, klass in ((a, "Forest"), (b, "Developed")):
        m = pd.read_parquet(result.manifest_url).set_index("tile_id")
        assert (result.trainable, result.reviewed, result.disagreed) == (1, 1, 0)
        assert m.loc[tile, ["label", "label_source", "trainable"]].tolist() == [
            klass, "review", True]
        assert m.loc[tile, "group"] == labels.CLASS_TO_GROUP[klass]
        assert m.loc[tile, "label_nlcd"] is None and m.loc[tile, "note"] == "no NLCD labels"
        others = m.drop(tile)
        assert others["label_source"].isna().all() and not others["trainable"].any()


def test_a_county_without_nlcd_becomes_trainable_by_reviews(real_scene, tmp_path):
    county = County(name="stutsman-nd", state="nd", bbox=(-99.17, 47.01, -99.15, 47.03),
                    naip=str(real_scene.parent))
    config = TilingConfig(tile_px=32)
    [before] = build_county(county, [2016], str(tmp_path), config)
    assert before.trainable == 0
    ids = pd.read_parquet(before.manifest_url)["tile_id"].tolist()[:3]
    for tile in ids:  # a "no change" verdict with one class labels both years
        _review(tmp_path, county.name, tile, class_b="Cultivated", answer="no_change")
    [after] = build_county(county, [2016], str(tmp_path), config)
    m = pd.read_parquet(after.manifest_url)
    assert after.trainable == after.reviewed == 3
    assert set(m.loc[m["trainable"], "tile_id"]) == set(ids)
    assert (m.loc[m["trainable"], "label_source"] == "review").all()
    assert (m.loc[m["trainable"], "label"] == "Cultivated").all()
    assert not (m["synthetic"]).any()
    assert len(m) == before.tiles  # the same tiles, labelled


def test_a_disagreeing_review_keeps_both_labels(tiled, registry, tmp_path):
    county = registry["synthetic-county-1"]
    m0 = tiled[2][(county.name, 2016)]
    pure = m0[m0["trainable"]].iloc[0]
    other = next(c for c in labels.CLASSES if c != pure["label"])
    impure = m0[~m0["trainable"] & m0["label"].isin(labels.CLASSES)
                & (m0["nodata_fraction"] <= CONFIG.max_nodata_fraction)].iloc[0]
    _review(tmp_path, county.name, pure["tile_id"], class_b=other)
    _review(tmp_path, county.name, impure["tile_id"], class_b=impure["label"])
    [r] = build_county(county, [2016], str(tmp_path), CONFIG)
    m = pd.read_parquet(r.manifest_url).set_index("tile_id")
    assert (r.reviewed, r.disagreed) == (2, 1)
    assert m.loc[pure["tile_id"], ["label", "label_nlcd", "label_source"]].tolist() == [
        other, pure["label"], "review"]
    assert m.loc[impure["tile_id"], ["label", "label_nlcd", "trainable"]].tolist() == [
        impure["label"], impure["label"], True]  # NLCD's impure tile, now trainable
    assert m.loc[impure["tile_id"], "note"] == impure["note"]  # why NLCD left it out
    assert r.trainable == m0["trainable"].sum() + 1
    rest = m.drop([pure["tile_id"], impure["tile_id"]])
    assert (rest["label_nlcd"].fillna("-") == rest["label"].fillna("-")).all()
    assert (rest["label_source"] == rest["label"].map(lambda x: "nlcd" if x else None)).all()


def test_the_same_reviews_commit_nothing_new_reviews_recommit_without_tiling(
        registry, tmp_path, monkeypatch):
    import landuse.tiling as tiling

    county = registry["synthetic-county-2"]
    [plain] = build_county(county, [2016], str(tmp_path), CONFIG)
    reference = pq.read_table(plain.manifest_url)
    ids = reference.column("tile_id").to_pylist()
    _review(tmp_path, county.name, ids[0], class_b="Barren")
    [first] = build_county(county, [2016], str(tmp_path), CONFIG)
    manifest = Path(first.manifest_url)
    stamp = manifest.stat().st_mtime_ns

    def no_tiling(*args, **kwargs):
        raise AssertionError("tiled again")

    monkeypatch.setattr(tiling, "_tile_year", no_tiling)
    [again] = build_county(county, [2016], str(tmp_path), CONFIG)
    assert again == first and manifest.stat().st_mtime_ns == stamp  # same reviews: nothing
    _review(tmp_path, county.name, ids[1], class_b="Shrub", user="bo")
    [second] = build_county(county, [2016], str(tmp_path), CONFIG)
    assert manifest.stat().st_mtime_ns != stamp and second.reviewed == first.reviewed + 1
    recorded = json.loads(pq.read_schema(manifest).metadata[INPUTS_KEY])
    assert recorded["reviews"]["tiles"] == 2
    # without reviews, the manifest is NLCD's again, row for row
    [undone] = build_county(county, [2016], str(tmp_path), CONFIG, reviews=False)
    assert undone.reviewed == 0
    back = pq.read_table(manifest)
    assert back.drop(["label_source", "label_nlcd"]).equals(reference.drop(
        ["label_source", "label_nlcd"]))
    assert back.schema.metadata == reference.schema.metadata


def test_a_manifest_from_before_reviews_is_still_read(registry, tmp_path):
    county = registry["synthetic-county-2"]
    [plain] = build_county(county, [2016], str(tmp_path), CONFIG)
    table = pq.read_table(plain.manifest_url)
    old = table.drop(["label_source", "label_nlcd"])
    pq.write_table(old.replace_schema_metadata(table.schema.metadata), plain.manifest_url)
    stamp = Path(plain.manifest_url).stat().st_mtime_ns
    [again] = build_county(county, [2016], str(tmp_path), CONFIG)
    assert Path(plain.manifest_url).stat().st_mtime_ns == stamp  # still current
    assert (again.reviewed, again.trainable) == (0, plain.trainable)
    chips = pd.read_parquet(export_chips(plain.manifest_url, str(tmp_path / "chips")))
    assert chips["label_source"].isna().all()
    tile = old.column("tile_id").to_pylist()[0]
    _review(tmp_path, county.name, tile, class_b="Water")
    [reviewed] = build_county(county, [2016], str(tmp_path), CONFIG)
    assert reviewed.reviewed == 1
    assert pq.read_schema(plain.manifest_url).names == MANIFEST_SCHEMA.names


def test_reviewed_labels_must_be_classes():
    from landuse.tiling import apply_reviews

    table = pa.Table.from_pylist([{"tile_id": "26914_1_2", "label": None}],
                                 schema=MANIFEST_SCHEMA)
    with pytest.raises(ValueError, match=r"\['Lava'\] are not land-use classes"):
        apply_reviews(table, pd.DataFrame({"tile_id": ["26914_1_2"], "label": ["Lava"]}))
