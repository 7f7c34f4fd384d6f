"""Training/validation/test splits: whole counties held out, classes balanced, seeds, lineage."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from landuse import labels, storage
from landuse.splits import build_dataset, choose_validation_counties, make_split, summarize


def _manifest(county: str, per_class: dict[str, int], untrainable: int = 3) -> pd.DataFrame:
    rows = []
    for label, n in per_class.items():
        for i in range(n):
            rows.append(dict(tile_id=f"{county}-{label}-{i}", county=county, year=2016,
                             label=label, trainable=True))
    for i in range(untrainable):
        rows.append(dict(tile_id=f"{county}-x-{i}", county=county, year=2016,
                         label="Water" if i % 2 else "Forest", trainable=False))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def manifests() -> pd.DataFrame:
    """Six counties with uneven class counts; Shrub is absent from county f."""
    return pd.concat(
        [
            _manifest("a", {"Forest": 12, "Cultivated": 30, "Developed": 8, "Shrub": 5}),
            _manifest("b", {"Forest": 20, "Cultivated": 9, "Developed": 14, "Shrub": 6}),
            _manifest("c", {"Forest": 7, "Cultivated": 25, "Developed": 11, "Shrub": 9}),
            _manifest("d", {"Forest": 15, "Cultivated": 13, "Developed": 6, "Shrub": 4}),
            _manifest("e", {"Forest": 9, "Cultivated": 18, "Developed": 10, "Shrub": 7}),
            _manifest("f", {"Forest": 11, "Cultivated": 16, "Developed": 12}),
        ],
        ignore_index=True,
    )


def _check_split(split: pd.DataFrame, manifests: pd.DataFrame,
                 parts: tuple[str, ...] = ("train", "validation", "test")) -> None:
    assert set(split["split"]) == set(parts)
    assert split["tile_id"].is_unique
    source = manifests.set_index("tile_id")
    assert source.loc[split["tile_id"], "trainable"].all()
    assert (source.loc[split["tile_id"], "county"].to_numpy() == split["county"].to_numpy()).all()
    counties = [set(split.loc[split["split"] == name, "county"]) for name in parts]
    assert all(counties)
    assert sum(map(len, counties)) == len(set().union(*counties))  # no county in two parts
    for name in parts:
        counts = split[split["split"] == name].groupby("label").size()
        assert counts.nunique() == 1, counts.to_dict()  # every class equally often


def test_counties_are_held_out_and_classes_balanced(manifests):
    split = make_split(manifests, seed=1)
    _check_split(split, manifests)


def test_test_counties_are_held_out_of_training_and_validation(manifests):
    split = make_split(manifests, val_counties=["b"], test_counties=["d", "e"], seed=3)
    _check_split(split, manifests)
    assert sorted(set(split.loc[split["split"] == "test", "county"])) == ["d", "e"]
    assert sorted(set(split.loc[split["split"] == "validation", "county"])) == ["b"]
    # chosen by the seed when not named, among the counties not named for validation
    chosen = {tuple(sorted(set(make_split(manifests, val_counties=["a"], seed=s)
                               .query("split == 'test'")["county"]))) for s in range(8)}
    assert len(chosen) > 1 and not any("a" in c for c in chosen)
    # none asked for, or too few counties: no test part
    _check_split(make_split(manifests, test_counties=[], seed=1), manifests,
                 ("train", "validation"))
    three = manifests[manifests["county"].isin(["a", "b", "c"])]  # two must stay to train
    _check_split(make_split(three, seed=1), three, ("train", "validation"))
    _check_split(make_split(three, test_counties=["c"], seed=1), three)
    _check_split(make_split(manifests, test_fraction=0, seed=1), manifests,
                 ("train", "validation"))


def test_test_counties_that_do_not_fit(manifests):
    with pytest.raises(ValueError, match=r"test counties \['nowhere'\] have no trainable"):
        make_split(manifests, test_counties=["nowhere"])
    with pytest.raises(ValueError, match=r"counties \['c'\] are named for both validation and "
                                         r"test"):
        make_split(manifests, val_counties=["a", "c"], test_counties=["c"])
    with pytest.raises(ValueError, match="every county is held out"):
        make_split(manifests, val_counties=list("abc"), test_counties=list("def"))


def test_balance_undersamples_to_the_rarest_class(manifests):
    split = make_split(manifests, val_counties=["b", "d"], test_counties=[], seed=0)
    train = split[split["split"] == "train"]
    val = split[split["split"] == "validation"]
    assert sorted(set(val["county"])) == ["b", "d"]
    # Training counties a, c, e, f: Shrub is rarest with 5 + 9 + 7 = 21 tiles.
    assert train.groupby("label").size().to_dict() == dict.fromkeys(
        ["Cultivated", "Developed", "Forest", "Shrub"], 21
    )
    # Validation counties b, d: Shrub again, 6 + 4 = 10.
    assert set(val.groupby("label").size()) == {10}


def test_same_seed_same_split(manifests):
    pd.testing.assert_frame_equal(make_split(manifests, seed=5), make_split(manifests, seed=5))


def test_other_seeds_choose_other_counties_and_tiles(manifests):
    held_out = {
        tuple(sorted(set(make_split(manifests, seed=s).query("split == 'validation'")["county"])))
        for s in range(10)
    }
    assert len(held_out) > 1
    tiles = {
        tuple(make_split(manifests, val_counties=["f"], seed=s)["tile_id"]) for s in range(3)
    }
    assert len(tiles) == 3


def test_val_fraction(manifests):
    per_county = manifests[manifests["trainable"]].groupby("county").size()
    for fraction in (0.1, 0.25, 0.5):
        split = make_split(manifests, val_fraction=fraction, seed=2)
        val = sorted(set(split.loc[split["split"] == "validation", "county"]))
        share = per_county[val].sum() / per_county.sum()
        test = set(split.loc[split["split"] == "test", "county"])
        assert share >= fraction or len(val) == len(per_county) - len(test) - 1
        assert share - per_county[val].max() / per_county.sum() < fraction  # no extra county
    many = make_split(manifests, val_fraction=0.99, seed=2)
    assert set(many.loc[many["split"] == "train", "county"]) != set()


def test_tiles_per_class_cap(manifests):
    split = make_split(manifests, tiles_per_class=3, val_counties=["a", "e"], seed=0)
    counts = split.groupby(["split", "label"]).size()
    assert set(counts) == {3}
    assert len(counts) in (11, 12)  # four classes in each part (three if f alone is test)
    large = make_split(manifests, tiles_per_class=1000, val_counties=["a", "e"], seed=0)
    assert large.groupby(["split", "label"]).size().max() < 1000


def test_choose_validation_counties_leaves_one_for_training():
    counts = pd.Series({"a": 10, "b": 10})
    for seed in range(5):
        chosen = choose_validation_counties(counts, 1.0, np.random.default_rng(seed))
        assert len(chosen) == 1


def test_needs_two_counties(manifests):
    with pytest.raises(ValueError, match="at least two counties"):
        make_split(manifests[manifests["county"] == "a"])
    untrainable = manifests.assign(trainable=False)
    with pytest.raises(ValueError, match="none"):
        make_split(untrainable)


def test_training_needs_two_classes():
    one_class = pd.concat(
        [_manifest("a", {"Forest": 5}), _manifest("b", {"Forest": 5, "Shrub": 5})]
    )
    with pytest.raises(ValueError, match="1 class"):
        make_split(one_class, val_counties=["b"])


def test_unknown_validation_county(manifests):
    with pytest.raises(ValueError, match="nowhere"):
        make_split(manifests, val_counties=["a", "nowhere"])


def test_every_county_in_validation(manifests):
    with pytest.raises(ValueError, match="every county is held out"):
        make_split(manifests, val_counties=list("abcdef"))


@pytest.fixture
def written(manifests, tmp_path):
    urls = []
    for county, frame in manifests.groupby("county"):
        url = str(tmp_path / "naip" / county / "2016" / "manifest.parquet")
        storage.write_parquet(url, pa.Table.from_pandas(frame, preserve_index=False))
        urls.append(url)
    return urls, str(tmp_path / "naip" / "dataset")


def test_build_dataset_writes_split_and_summary(written, manifests):
    urls, out = written
    dataset = build_dataset(list(reversed(urls)), out, val_counties=["c"], test_counties=["f"],
                            seed=4)
    assert dataset.url == f"{out}/split.parquet"
    assert dataset.summary_url == f"{out}/summary.json"
    split = storage.read_parquet(dataset.url).to_pandas()
    _check_split(split, manifests)
    pd.testing.assert_frame_equal(
        split, make_split(manifests, val_counties=["c"], test_counties=["f"], seed=4),
        check_dtype=False
    )
    summary = json.loads(storage.read_bytes(dataset.summary_url))
    assert summary == dataset.summary
    assert summary["seed"] == 4
    assert summary["validation"]["counties"] == ["c"]
    assert summary["train"]["counties"] == ["a", "b", "d", "e"]
    assert summary["test"]["counties"] == ["f"]
    assert summary["train"]["tiles"] == int((split["split"] == "train").sum())
    # County c alone: Forest is its rarest class with 7 tiles.
    assert summary["validation"]["per_class"] == {
        "Developed": 7, "Barren": 0, "Forest": 7, "Shrub": 7, "Herbaceous": 0, "Cultivated": 7,
        "Water": 0,
    }
    assert summary["train"]["missing_classes"] == ["Barren", "Herbaceous", "Water"]
    assert summary["classes"] == list(labels.CLASSES)


def test_summary_records_manifest_lineage(written):
    urls, out = written
    dataset = build_dataset(urls, out, seed=0)
    hashes = dataset.summary["manifests"]
    assert sorted(hashes) == sorted(urls)
    for url in urls:
        with open(url, "rb") as f:
            assert hashes[url] == hashlib.sha256(f.read()).hexdigest()
    # Rebuilt from the same manifests, the summary is byte-for-byte the same.
    before = storage.read_bytes(dataset.summary_url)
    build_dataset(urls, out, seed=0)
    assert storage.read_bytes(dataset.summary_url) == before


def test_build_dataset_without_manifests(tmp_path):
    with pytest.raises(ValueError, match="no manifests"):
        build_dataset([], str(tmp_path))


def test_the_class_set_belongs_to_the_dataset(manifests):
    # water tiles are trainable (a class); the seed's own set leaves them out
    watery = pd.concat([manifests, _manifest("a", {"Water": 9}, untrainable=0),
                        _manifest("b", {"Water": 9}, untrainable=0),
                        _manifest("c", {"Water": 9}, untrainable=0)], ignore_index=True)
    watery["tile_id"] = [f"{t}-{i}" for i, t in enumerate(watery["tile_id"])]
    default = make_split(watery, val_counties=["b"], test_counties=[], seed=0)
    assert "Water" in set(default.loc[default["split"] == "train", "label"])
    seed = make_split(watery, val_counties=["b"], test_counties=[], seed=0,
                      classes=labels.SEED_CLASSES)
    assert "Water" not in set(seed["label"])
    with pytest.raises(ValueError, match=r"classes must be two or more of"):
        make_split(watery, classes=("Forest", "Lava"))


# --- reviewed tiles and a single real county ----------------------------------------------

CLASSES3 = ("Forest", "Cultivated", "Developed")


def _grid_county(county: str, *, synthetic: bool, side: int = 20, years=(2010, 2016),
                 col0: int = 400, seed: int = 0) -> pd.DataFrame:
    """A county of ``side`` × ``side`` real tile ids, every tile in every year, NLCD-labelled
    with three classes at random."""
    rng = np.random.default_rng(seed)
    rows = [dict(tile_id=f"26914_{col0 + c}_{2100 + r}", county=county, year=year,
                 label=CLASSES3[int(rng.integers(3))], trainable=True, synthetic=synthetic,
                 label_source="nlcd")
            for year in years for c in range(side) for r in range(side)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def one_real() -> pd.DataFrame:
    """One real county (stutsman-nd) beside three synthetic ones."""
    return pd.concat([_grid_county("stutsman-nd", synthetic=False)]
                     + [_grid_county(f"synthetic-county-{i}", synthetic=True, col0=1000 * i,
                                     seed=i) for i in (1, 2, 3)], ignore_index=True)


def _block(tile_id: str) -> tuple[int, int]:
    _, col, row = tile_id.split("_")
    return int(col) // 5, int(row) // 5


def test_a_single_real_county_is_split_in_spatial_blocks(one_real):
    split = make_split(one_real, seed=3)
    real = split[split["county"] == "stutsman-nd"]
    assert set(real["split"]) == {"train", "validation", "test"}
    # no block and no tile (in any year) in two parts
    assert (real.groupby(real["tile_id"].map(_block))["split"].nunique() == 1).all()
    assert (real.groupby("tile_id")["split"].nunique() == 1).all()
    blocks = split.attrs["real_blocks"]
    assert blocks == {"county": "stutsman-nd", "block_tiles": 5, "train": 10, "validation": 3,
                      "test": 3}  # 16 blocks of 5 x 5 tiles, about 60/20/20
    for name in ("train", "validation", "test"):
        assert real.loc[real["split"] == name, "tile_id"].map(_block).nunique() <= blocks[name]
    synthetic = split[split["county"] != "stutsman-nd"]
    assert (synthetic.groupby("county")["split"].nunique() == 1).all()  # held out whole
    again = make_split(one_real, seed=3)
    pd.testing.assert_frame_equal(split, again)
    other = make_split(one_real, seed=4)
    assert not other[other["county"] == "stutsman-nd"]["split"].equals(real["split"])
    summary = summarize(split, {}, 3)
    assert summary["real_blocks"] == blocks and summary["synthetic_training"] is False


def test_a_real_county_alone_is_split_in_blocks(one_real):
    split = make_split(one_real[one_real["county"] == "stutsman-nd"], seed=0)
    assert set(split["split"]) == {"train", "validation", "test"}
    assert (split.groupby("tile_id")["split"].nunique() == 1).all()
    # named for a part, the county is held out whole as before
    with pytest.raises(ValueError, match="at least two counties"):
        make_split(one_real[one_real["county"] == "stutsman-nd"], val_counties=["stutsman-nd"])


def test_two_real_counties_are_held_out_whole(one_real):
    two = pd.concat([one_real, _grid_county("cass-nd", synthetic=False, col0=5000, seed=9)],
                    ignore_index=True)
    split = make_split(two, seed=0)
    assert (split.groupby("county")["split"].nunique() == 1).all()
    assert "real_blocks" not in split.attrs


def test_reviewed_rows_survive_balancing(one_real):
    frame = one_real.copy()
    real = frame["county"] == "stutsman-nd"
    # 60 reviewed Barren tiles, far more than the cap of 5 tiles per class and part
    reviewed = frame.index[real & (frame["year"] == 2016)][::6][:60]
    assert len(reviewed) == 60
    frame.loc[reviewed, ["label", "label_source"]] = ["Barren", "review"]
    split = make_split(frame, seed=1, tiles_per_class=5)
    kept = split[split["label_source"] == "review"]
    assert sorted(kept["tile_id"]) == sorted(frame.loc[reviewed, "tile_id"])
    assert set(kept["label"]) == {"Barren"}
    for _, part in split[split["label_source"] == "nlcd"].groupby("split"):
        assert part.groupby("label").size().nunique() == 1  # NLCD rows still balanced
        assert part.groupby("label").size().max() <= 5
    summary = summarize(split, {}, 1)
    assert sum(summary[p]["reviewed"] for p in ("train", "validation", "test")) == 60


def test_manifests_from_before_reviews_give_nlcd_provenance(manifests):
    split = make_split(manifests, seed=0)
    assert (split["label_source"] == "nlcd").all()
