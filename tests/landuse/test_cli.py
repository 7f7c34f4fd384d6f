"""The ``landuse`` command: help, synth, tiles with a split, and user errors as exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest
from PIL import Image

from landuse import storage
from landuse.cli import main


@pytest.fixture(scope="module")
def synth_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "synthetic"
    code = main(["synth", "--out", str(out), "--counties", "2", "--size-m", "896",
                 "--res-m", "4", "--seed", "1"])
    assert code == 0
    return out


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "synth" in out and "tiles" in out


def test_tiles_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["tiles", "--help"])
    out = capsys.readouterr().out
    for option in ("--registry", "--years", "--root", "--nir", "--split", "--val-counties",
                   "--no-reviews"):
        assert option in out


def test_installed_command():
    landuse = shutil.which("landuse")
    if landuse is None:
        pytest.skip("the landuse console script is not installed in this environment")
    done = subprocess.run([landuse, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "synth" in done.stdout and "tiles" in done.stdout


def test_synth(tmp_path, capsys):
    code = main(["synth", "--out", str(tmp_path), "--counties", "1", "--years", "2012,2018",
                 "--size-m", "224", "--res-m", "4", "--changes", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "synthetic-county-1: 2 scene(s), 1 planted change(s)" in out
    assert f"registry: {tmp_path}/counties.json" in out
    assert len(list((tmp_path / "naip").glob("synthetic_m_*_2012*.tif"))) == 1
    assert (tmp_path / "nlcd" / "nlcd_2018_synthetic.tif").exists()


def test_tiles_with_split(synth_out, tmp_path, capsys):
    root = tmp_path / "out"
    code = main(["tiles", "--registry", str(synth_out / "counties.json"), "--years", "2010,2016",
                 "--root", str(root), "--tile-px", "32", "--purity", "0.8", "--split"])
    assert code == 0
    out = capsys.readouterr().out
    manifests = sorted(root.glob("naip/*/*/manifest.parquet"))
    assert [str(p.relative_to(root)) for p in manifests] == [
        f"naip/synthetic-county-{i}/{year}/manifest.parquet"
        for i in (1, 2)
        for year in (2010, 2016)
    ]
    for path in manifests:
        assert f"-> {path}" in out
    split_url = root / "naip" / "dataset" / "split.parquet"
    assert f"dataset: {split_url}" in out
    split = pd.read_parquet(split_url)
    assert set(split["split"]) == {"train", "validation"}
    summary = json.loads((root / "naip" / "dataset" / "summary.json").read_text())
    assert sorted(summary["manifests"]) == [str(p) for p in manifests]
    assert summary["train"]["tiles"] == int((split["split"] == "train").sum()) > 0
    assert not set(summary["train"]["counties"]) & set(summary["validation"]["counties"])
    assert split["image_url"].isna().all() and split["scene_url"].notna().all()  # no chips


def test_tiles_says_what_reviews_labelled(synth_out, tmp_path, capsys):
    from landuse.change.run import change_url
    from landuse.review import record

    root = tmp_path / "out"
    args = ["tiles", "--registry", str(synth_out / "counties.json"), "--years", "2016",
            "--counties", "synthetic-county-1", "--root", str(root), "--tile-px", "32"]
    assert main([*args, "--no-reviews"]) == 0
    manifest = root / "naip" / "synthetic-county-1" / "2016" / "manifest.parquet"
    tile = pd.read_parquet(manifest)["tile_id"].iloc[0]
    record(change_url(str(root), "synthetic-county-1", 2010, 2016),
           pd.DataFrame({"tile_id": [tile]}), user="ana", tile_id=tile, answer="change",
           class_b="Barren")
    capsys.readouterr()
    assert main([*args, "--no-reviews"]) == 0
    assert "labelled by reviews" not in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(1 labelled by reviews, 1 disagreeing with NLCD)" in out
    assert pd.read_parquet(manifest).set_index("tile_id").loc[tile, "label"] == "Barren"


def test_tiles_with_nir_for_one_county(synth_out, tmp_path):
    root = tmp_path / "out"
    code = main(["tiles", "--registry", str(synth_out / "counties.json"), "--years", "2016",
                 "--counties", "synthetic-county-2", "--root", str(root), "--tile-px", "32",
                 "--nir"])
    assert code == 0
    assert [p.parts[-3] for p in root.glob("naip/*/*/manifest.parquet")] == ["synthetic-county-2"]
    manifest = root / "naip" / "synthetic-county-2" / "2016" / "manifest.parquet"
    m = pd.read_parquet(manifest)
    assert (m["bands"] == "red,green,blue,nir").all()
    assert main(["chips", str(manifest)]) == 0  # chips on demand, trainable tiles'
    chips = pd.read_parquet(manifest.parent / "tiles" / "chips.parquet")
    assert len(chips) == m["trainable"].sum() > 0
    assert Image.open(chips["image_url"].iloc[0]).mode == "RGBA"  # NIR is the 4th channel


def test_unknown_county_is_exit_code_2(synth_out, tmp_path, capsys):
    code = main(["tiles", "--registry", str(synth_out / "counties.json"), "--years", "2010",
                 "--counties", "synthetic-county-1,nowhere", "--root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "landuse tiles: error: unknown counties ['nowhere']" in err
    assert "synthetic-county-2" in err  # what the registry does have
    assert not list(tmp_path.rglob("manifest.parquet"))


def test_missing_registry_is_exit_code_2(tmp_path, capsys):
    registry = tmp_path / "none" / "counties.json"
    code = main(["tiles", "--registry", str(registry), "--years", "2010", "--root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"county registry {registry} does not exist" in err
    assert "Traceback" not in err


def test_split_of_one_county_is_exit_code_2(synth_out, tmp_path, capsys):
    code = main(["tiles", "--registry", str(synth_out / "counties.json"), "--years", "2010",
                 "--counties", "synthetic-county-1", "--root", str(tmp_path), "--tile-px", "16",
                 "--purity", "0.5", "--split"])
    assert code == 2
    assert "at least two counties" in capsys.readouterr().err
    # The county itself was tiled and committed before the split failed.
    manifest = tmp_path / "naip" / "synthetic-county-1" / "2010" / "manifest.parquet"
    assert storage.exists(str(manifest))


def test_unusable_nlcd_source_is_exit_code_2(synth_out, tmp_path, capsys):
    code = main(["tiles", "--registry", str(synth_out / "counties.json"), "--years", "2010",
                 "--root", str(tmp_path / "out"), "--nlcd", str(tmp_path)])
    assert code == 2
    assert f"no NLCD rasters named nlcd_YYYY*.tif under {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["paint"],
        ["tiles", "--registry", "r.json", "--root", "out", "--years", "2010,20x6"],
        ["tiles", "--registry", "r.json", "--root", "out"],
        ["synth"],
    ],
)
def test_bad_arguments_are_exit_code_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: landuse" in capsys.readouterr().err


def test_review_adds_answers_and_publishes_the_figures(tmp_path, capsys):
    import pyarrow as pa

    from landuse import review
    from landuse.change import change_url

    url = change_url(str(tmp_path), "c", 2010, 2016)
    tiles = pd.DataFrame({"tile_id": ["32614_0_0", "32614_1_0"], "significant": [True, True]})
    storage.write_parquet(f"{url}/tiles.parquet", pa.Table.from_pandas(tiles))
    storage.write_bytes(f"{url}/summary.json", b"{}")
    answers = tmp_path / "answers.csv"
    answers.write_text("tile_id,answer,class_a,class_b\n32614_0_0,change,Cultivated,Water\n"
                       "32614_1_0,no_change,,\n")
    assert main(["review", "--root", str(tmp_path), "--county", "c", "--years", "2010,2016",
                 "--answers", str(answers), "--user", "survey"]) == 0
    out = capsys.readouterr().out
    assert "2 answers of survey added" in out and "1 confirmed as real change" in out
    assert json.loads(storage.read_bytes(f"{url}/summary.json"))["review"]["precision"] == 0.5
    assert len(review.read_answers(url)) == 2
