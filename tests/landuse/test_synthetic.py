"""Synthetic counties: deterministic, labelled as synthetic, NAIP- and NLCD-like, with planted
changes recorded as truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform, transform_bounds

from landuse import labels
from landuse.counties import load_registry
from landuse.naip import NaipCatalog
from landuse.naip_scene import parse_scene_name
from landuse.synthetic import make_synthetic, quad_name

TINY = dict(counties=1, years=(2010, 2016), size_m=672.0, res_m=4.0, parcel_m=200.0)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    made = make_synthetic(str(out), seed=3, **TINY)
    return out, made


def test_same_seed_same_bytes(tiny, tmp_path):
    out, made = tiny
    again = make_synthetic(str(tmp_path), seed=3, **TINY)
    assert _files(tmp_path) == _files(out)
    assert [(c.name, c.bbox, c.changed_parcels) for c in again] == [
        (c.name, c.bbox, c.changed_parcels) for c in made
    ]


def test_other_seed_other_imagery(tiny, tmp_path):
    out, _ = tiny
    make_synthetic(str(tmp_path), seed=4, **TINY)
    a, b = _files(out), _files(tmp_path)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.suffix == ".tif")


def test_everything_is_named_synthetic(synthetic):
    tifs = sorted(synthetic.rglob("*.tif"))
    assert len(tifs) == 2 * 2 + 2 + 2  # scenes, NLCD vintages, truth rasters
    for path in tifs:
        assert "synthetic" in path.name
        with rasterio.open(path) as src:
            assert src.tags()["SYNTHETIC"] == "yes"
    registry = json.loads((synthetic / "counties.json").read_text())
    assert "Synthetic" in registry["description"]
    assert all(c["synthetic"] and c["name"].startswith("synthetic-") for c in registry["counties"])
    for path in (synthetic / "naip").glob("*.tif"):
        with rasterio.open(path) as src:
            assert "SYNTHETIC" in src.tags()["TIFFTAG_IMAGEDESCRIPTION"]


def test_nlcd_is_30m_albers(synthetic):
    for year in (2010, 2016):
        with rasterio.open(synthetic / "nlcd" / f"nlcd_{year}_synthetic.tif") as src:
            assert src.crs.to_epsg() == 5070
            assert src.res == (30.0, 30.0)
            assert src.count == 1 and src.dtypes[0] == "uint8" and src.nodata == 0
            codes = set(np.unique(src.read(1)).tolist()) - {0}
    assert codes and all(labels.is_known_code(c) for c in codes)
    assert 11 in codes  # water is part of the landscape


def test_imagery_is_4_band_utm(synthetic):
    scenes = sorted((synthetic / "naip").glob("*.tif"))
    assert len(scenes) == 4
    for path in scenes:
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 26914
            assert src.res == (4.0, 4.0)
            assert src.count == 4 and src.dtypes == ("uint8",) * 4
            assert src.shape == (336, 336)
            assert src.bounds.left % 224 == 0 and src.bounds.top % 224 == 0
            data = src.read()
        assert data.min() >= 1  # 0 is NAIP's no-data
        for band in data:
            assert band.std() > 5


def test_names_parse_and_footprints_contain_the_scenes(synthetic):
    registry = load_registry(str(synthetic / "counties.json"))
    for county in registry.values():
        scenes = NaipCatalog(county.naip).scenes(bbox=county.bbox)
        assert [s.year for s in scenes] == [2010, 2016]
        for scene in scenes:
            assert scene.utm_zone == 14 and scene.resolution_m == 4.0
            with rasterio.open(scene.url) as src:
                assert src.crs.to_epsg() == scene.epsg
                west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
                fw, fs, fe, fn = scene.footprint
                assert fw <= west < east <= fe and fs <= south < north <= fn
                assert src.tags()["COUNTY"] == county.name
            # The county's bbox is the scene's extent.
            assert county.bbox == pytest.approx((west, south, east, north), abs=1e-5)


@pytest.mark.parametrize("res_m", [0.6, 1.0, 2.0])
def test_resolution_codes_in_names(tmp_path, res_m):
    made = make_synthetic(str(tmp_path), counties=1, years=(2018,), size_m=224.0, res_m=res_m)
    scene = parse_scene_name(made[0].scenes[2018])
    assert scene.resolution_m == res_m
    assert scene.date.isoformat() == "2018-06-15"


def test_quad_name_is_the_inverse_of_the_footprint():
    rng = np.random.default_rng(0)
    for lon, lat in zip(rng.uniform(-124, -67, 200), rng.uniform(25, 49, 200), strict=True):
        quad, quarter = quad_name(lon, lat)
        west, south, east, north = parse_scene_name(
            f"m_{quad}_{quarter}_14_1_20100101.tif"
        ).footprint
        assert west <= lon < east and south < lat <= north + 1e-12


def _truth_points(truth_path):
    with rasterio.open(truth_path) as src:
        changed = src.read(1)
        rows, cols = np.nonzero(changed)
        xs, ys = src.xy(rows, cols)
        stable_rows, stable_cols = np.nonzero(changed == 0)
        sx, sy = src.xy(stable_rows, stable_cols)
        return changed, (np.asarray(xs), np.asarray(ys)), (np.asarray(sx), np.asarray(sy))


def _nlcd_codes(path, xs, ys):
    with rasterio.open(path) as src:
        ax, ay = transform("EPSG:26914", src.crs, list(xs), list(ys))
        cols, rows = ~src.transform @ (np.asarray(ax), np.asarray(ay))
        return src.read(1)[np.floor(rows).astype(int), np.floor(cols).astype(int)]


def test_planted_changes_are_in_the_truth_and_the_later_nlcd(synthetic):
    developed = {21, 22, 23, 24}
    for truth in sorted((synthetic / "truth").glob("*.tif")):
        assert truth.name.endswith("_newly_developed_2010_2016.tif")
        changed, (xs, ys), (sx, sy) = _truth_points(truth)
        assert set(np.unique(changed)) == {0, 1}
        assert 0.01 < changed.mean() < 0.6
        before = _nlcd_codes(synthetic / "nlcd" / "nlcd_2010_synthetic.tif", xs, ys)
        after = _nlcd_codes(synthetic / "nlcd" / "nlcd_2016_synthetic.tif", xs, ys)
        # 30 m NLCD cells straddle parcel edges: judge the bulk of each changed area.
        assert np.mean(np.isin(after, list(developed))) > 0.9
        assert np.mean(np.isin(before, list(developed))) < 0.1
        assert np.mean(before == 11) < 0.1  # water is never built on
        # Outside the planted changes, the two vintages agree.
        same = _nlcd_codes(synthetic / "nlcd" / "nlcd_2010_synthetic.tif", sx, sy) == (
            _nlcd_codes(synthetic / "nlcd" / "nlcd_2016_synthetic.tif", sx, sy)
        )
        assert same.mean() > 0.95


def test_changed_parcels_counted(tiny):
    _, [county] = tiny
    assert county.changed_parcels == 4
    assert county.changed_tiles_truth and county.changed_tiles_truth.endswith(".tif")
    assert sorted(county.scenes) == [2010, 2016]


def test_three_years_plant_changes_twice(tmp_path):
    [county] = make_synthetic(str(tmp_path), counties=1, years=(2010, 2013, 2016),
                              size_m=448.0, res_m=4.0, parcel_m=150.0, changes_per_county=2)
    assert county.changed_parcels == 4
    assert county.changed_tiles_truth.endswith("_2010_2016.tif")


def test_single_year_has_no_truth(tmp_path):
    [county] = make_synthetic(str(tmp_path), counties=1, years=(2016,), size_m=224.0, res_m=4.0)
    assert county.changed_tiles_truth is None and county.changed_parcels == 0
    assert not (tmp_path / "truth").exists()


@pytest.mark.parametrize("years", [(), (2016, 2010), (2010, 2010)])
def test_years_must_increase(tmp_path, years):
    with pytest.raises(ValueError, match="increasing"):
        make_synthetic(str(tmp_path), counties=1, years=years, size_m=224.0)


FREDERICK = Path(__file__).resolve().parents[2] / "sample" / "nlcd" / "nlcd_2016_frederick_md.tif"


def test_a_real_nlcd_layout_gives_its_patches_and_class_shares(tmp_path):
    """Over the real Frederick NLCD, each county is one window of it: its codes, water and
    roads included, in its proportions; planted changes still land in the truth."""
    from rasterio.windows import Window

    made = make_synthetic(str(tmp_path), counties=2, size_m=1344.0, res_m=4.0, seed=3,
                          layout=str(FREDERICK))
    assert all(c.changed_parcels > 0 for c in made)
    with rasterio.open(tmp_path / "nlcd" / "nlcd_2010_synthetic.tif") as src:
        painted = src.read(1)
    painted = painted[painted > 0]
    side = 1344 // 30 + 1  # the NLCD cells under one county
    with rasterio.open(FREDERICK) as src:
        real = np.concatenate([src.read(1, window=Window(i * side, 0, side, side)).ravel()
                               for i in range(2)])
    for code in (21, 22, 41, 81, 82):  # the layout's main classes, in its proportions
        assert abs((painted == code).mean() - (real == code).mean()) < 0.05, code
    assert set(np.unique(painted)) <= {11, *labels.NLCD_TO_CLASS}
    assert len(np.unique(painted)) >= 6  # several codes per class, as real NLCD has


def test_a_layout_too_small_for_the_counties_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"layout .*nlcd_2016_frederick_md.tif: its 725x694 "
                                         r"cells hold \d+ county windows"):
        make_synthetic(str(tmp_path), counties=40, size_m=3136.0, layout=str(FREDERICK))
