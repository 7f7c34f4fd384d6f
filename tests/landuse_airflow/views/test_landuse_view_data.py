"""The Land use view's data layer on a real change report, from a local and an abfs:// root
(Azurite): reports found, maps warped with their legends, tiles and images, names checked."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from landuse_view_inputs import COUNTY, tile_and_predict
from PIL import Image

from landuse import storage
from landuse.change.run import run_change
from landuse_airflow.views import view_data


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> str:
    root = str(tmp_path_factory.mktemp("view-local"))
    tile_and_predict(root, synthetic)
    run_change(root, COUNTY, 2010, 2016, embeddings=False)
    return root


@pytest.fixture(params=["local", "abfs"])
def root(request: pytest.FixtureRequest, synthetic: Path) -> str:
    if request.param == "local":
        return str(request.getfixturevalue("local_root"))
    container = request.getfixturevalue("azure_env")
    url = f"abfs://{container}/out"
    tile_and_predict(url, synthetic)
    run_change(url, COUNTY, 2010, 2016, embeddings=False)
    return url


def _rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def test_a_report_is_listed_mapped_and_its_tiles_shown(root: str, tmp_path: Path):
    [listed] = view_data.list_reports(root)
    assert (listed["county"], listed["pair"]) == (COUNTY, "2010-2016")
    assert listed["newly_developed"] > 0
    report = view_data.open_report(root, COUNTY, "2010-2016")

    layers = {layer["name"]: layer for layer in view_data.layers(report)}
    assert {"change", "groups_2016", "reference"} <= set(layers)
    legend = {e["name"]: e["colour"] for e in layers["change"]["legend"]}
    assert legend["newly developed"] == "#ff0000"
    (south, west), (north, east) = layers["change"]["bounds"]
    assert south < north and west < east

    pixels = _rgba(view_data.layer_png(report, "change"))
    red = (pixels[..., 0] == 255) & (pixels[..., 1] == 0) & (pixels[..., 3] == 255)
    assert red.any(), "newly developed tiles are drawn in the legend's colour"
    assert (pixels[..., 3] == 0).any(), "no data outside the county is transparent"

    changed = json.loads(view_data.report_file(report, "changes.geojson")[0])
    new = next(f for f in changed["features"] if f["properties"]["newly_developed"])
    record = view_data.tile_record(report, new["id"])
    assert record["newly_developed"] is True and record["b_group"] == "Developed"
    assert record["b_p_Developed"] == pytest.approx(0.9)
    assert record["images"] == {"a": True, "b": True}
    assert not any(isinstance(v, str) and (v.startswith("/") or "://" in v)
                   for v in record.values()), "no storage location reaches the browser"

    tiles = storage.read_parquet(storage.join(report.url, "tiles.parquet")).to_pandas()
    row = tiles.set_index("tile_id").loc[new["id"]]
    for which in ("a", "b"):
        data, media = view_data.tile_image(report, new["id"], which)
        assert media == "image/png" and data == storage.read_bytes(row[f"image_url_{which}"])

    [scene] = view_data.scenes(report)
    image, bounds = view_data.quicklook(scene, cache_dir=str(tmp_path))
    assert Image.open(io.BytesIO(image)).format == "WEBP"
    assert bounds[0][0] <= north and bounds[1][0] >= south  # the scene covers the county
    assert view_data.quicklook(scene, cache_dir=str(tmp_path)) == (image, bounds)  # cached
    assert "/" not in json.dumps(view_data.public_summary(report)).replace("\\/", "")


@pytest.mark.parametrize(("county", "pair"), [
    ("../naip", "2010-2016"), ("Synthetic-County-1", "2010-2016"), (COUNTY, "2016-2010"),
    (COUNTY, "2010-2016/.."), (COUNTY, "../../etc"), ("a/b", "2010-2016"), (COUNTY, "10-16"),
])
def test_county_and_year_names_are_checked(local_root: str, county: str, pair: str):
    with pytest.raises(ValueError, match=r"not allowed|not of the form"):
        view_data.open_report(local_root, county, pair)


@pytest.mark.parametrize("name", [
    "../../../naip/synthetic-county-1/2016/manifest.parquet", "/etc/passwd", "summary.json/..",
    "report.md/../../x", "tiles.parquet ", "%2e%2e/summary.json", "",
])
def test_only_the_files_a_report_lists_are_served(local_root: str, name: str):
    report = view_data.open_report(local_root, COUNTY, "2010-2016")
    with pytest.raises(view_data.NotFound):
        view_data.report_file(report, name)
    with pytest.raises(view_data.NotFound):
        view_data.layer_png(report, name)
    with pytest.raises(view_data.NotFound):
        view_data.tile_record(report, name)


def test_images_outside_the_root_are_refused(local_root: str, tmp_path: Path):
    report = view_data.open_report(local_root, COUNTY, "2010-2016")
    elsewhere = view_data.Report(str(tmp_path), report.county, report.year_a, report.year_b,
                                 report.url, report.summary)  # its tile table names local_root
    tile_id = json.loads(view_data.report_file(report, "changes.geojson")[0])["features"][0]["id"]
    with pytest.raises(PermissionError, match="outside the storage root"):
        view_data.tile_image(elsewhere, tile_id, "a")
    with pytest.raises(PermissionError, match="outside the storage root"):
        view_data.quicklook("/etc/hostname", cache_dir=str(tmp_path))
    with pytest.raises(view_data.NotFound):
        view_data.tile_image(report, tile_id, "c")


def test_a_root_without_reports_lists_none(tmp_path: Path):
    assert view_data.list_reports(str(tmp_path)) == []
    with pytest.raises(view_data.NotFound, match="no change report"):
        view_data.open_report(str(tmp_path), COUNTY, "2010-2016")


def test_a_tile_without_a_chip_is_cut_from_its_scene(tmp_path: Path, synthetic: Path):
    # Tiling keeps chips of training tiles only: the view cuts the others from the scene.
    root = str(tmp_path)
    tile_and_predict(root, synthetic, chips="trainable")
    run_change(root, COUNTY, 2010, 2016, embeddings=False)
    report = view_data.open_report(root, COUNTY, "2010-2016")
    tiles = storage.read_parquet(storage.join(report.url, "tiles.parquet")).to_pandas()
    chipless = tiles[tiles["image_url_b"].isna()]
    assert len(chipless), "the synthetic county has tiles that are not for training"
    tile_id = chipless["tile_id"].iloc[0]
    assert view_data.tile_record(report, tile_id)["images"]["b"] is True
    data, media = view_data.tile_image(report, tile_id, "b")
    image = Image.open(io.BytesIO(data))
    assert media == "image/png" and image.size == (view_data.TILE_IMAGE_PX,) * 2
    assert np.asarray(image).std() > 0  # imagery, not a blank square


def test_the_review_view_lists_the_queue_and_stores_answers(tmp_path: Path, synthetic: Path):
    from landuse import review

    root = str(tmp_path)
    tile_and_predict(root, synthetic)
    run_change(root, COUNTY, 2010, 2016, embeddings=False)
    report = view_data.open_report(root, COUNTY, "2010-2016")
    view = view_data.review_view(report, "ana")
    queue = view["queue"]
    assert queue and view["answered"] == 0 and view["user"] == "ana"
    assert queue[0]["reason"] == "newly_developed" and queue[0]["b_group"] == "Developed"
    assert {"a_class", "b_class", "b_confidence"} <= set(queue[0])
    assert view["figures"]["flagged"] > 0 and view["figures"]["reviewed"] == 0
    assert [a["value"] for a in view["answers"]] == ["change", "no_change", "unsure"]
    assert "/" not in json.dumps(view).replace("\\/", "")  # no storage location

    first, second = queue[0]["tile_id"], queue[1]["tile_id"]
    stored = view_data.record_review(report, "ana", {"tile_id": first, "answer": "change",
                                                     "class_b": "Developed"})
    assert stored["model_id"] == report.summary["model_b"] and stored["user"] == "ana"
    view_data.record_review(report, "ben", {"tile_id": first, "answer": "change"})
    view_data.record_review(report, "ana", {"tile_id": second, "answer": "no_change",
                                            "class_a": ""})  # an empty class is no class
    view = view_data.review_view(report, "ana")
    by_id = {e["tile_id"]: e for e in view["queue"]}
    assert by_id[first]["answer"]["answer"] == "change"
    assert by_id[first]["answer"]["class_b"] == "Developed"
    assert by_id[first]["verdict"] == "change" and by_id[second]["verdict"] == "no_change"
    assert by_id[second]["answer"]["class_a"] is None
    assert view["answered"] == 2
    assert (view["figures"]["reviewed"], view["figures"]["confirmed"]) == (2, 1)
    assert view_data.review_view(report, "ben")["answered"] == 1
    assert len(review.read_answers(report.url)) == 3

    for body, message in [
        ({"tile_id": "32614_99999_99999", "answer": "change"}, "not in this report"),
        ({"tile_id": "../x", "answer": "change"}, "not a tile id"),
        ({"tile_id": first, "answer": "maybe"}, "answer 'maybe'"),
        ({"tile_id": first, "answer": "change", "class_a": "Lava"}, "class of year A"),
        ({"tile_id": first}, "answer is missing"),
        ({"tile_id": first, "answer": ["change"]}, "answer must be a string"),
        ({"tile_id": first, "answer": "change", "user": "eve"}, "unknown fields"),
        (["change"], "must be a JSON object"),
    ]:
        with pytest.raises(review.ReviewError, match=message):
            view_data.record_review(report, "ana", body)
    assert len(review.read_answers(report.url)) == 3
