"""Per-tile transitions: what counts as newly developed, uncertainty, smoothing, the count
tables, and inputs that do not fit together."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from landuse import labels
from landuse.change.detect import (
    ChangeInputError,
    check_grids,
    count_table,
    detect,
    labels_map,
    missing_classes,
    read_manifest,
    read_predictions,
    transition_matrix,
)
from landuse.change.run import run_change

COUNTY = "testcounty"


def _change(tmp_path, kit, ref_labels, b_classes, confidence=0.9, cols=3, **options):
    """Manifest of ``ref_labels`` on a cols-wide block, B predictions of ``b_classes``."""
    cells = kit.grid(cols, len(ref_labels) // cols)
    man = kit.manifest(cells, ref_labels)
    kit.write_predictions(str(tmp_path), COUNTY, 2016, kit.predictions(man, b_classes,
                                                                        confidence))
    ref = labels_map(man, COUNTY, 2010)
    b = read_predictions(str(tmp_path), COUNTY, 2016)
    geometry = check_grids(COUNTY, man, man, 2010, 2016)
    return detect(COUNTY, ref, b, geometry, **options)


REF = ["Herbaceous", "Forest", "Cultivated",
       "Water", "Developed", "Cultivated",
       "Herbaceous", "Barren", None]
B = ["Developed", "Developed", "Developed",
     "Developed", "Developed", "Herbaceous",
     "Cultivated", "Shrub", "Developed"]


def test_newly_developed_is_undeveloped_or_cultivated_to_developed(tmp_path, change_kit):
    change = _change(tmp_path, change_kit, REF, B)
    t = change.tiles
    assert len(t) == 9
    assert t["newly_developed"].tolist() == [True, True, True,
                                             False, False, False,  # water, developed, other
                                             False, False, False]  # other, same, no label
    assert t["changed"].tolist() == [True, True, True,
                                     True, False, True,
                                     True, False, False]
    assert t["transition"].iloc[0] == "Undeveloped -> Developed"
    assert t["transition"].iloc[2] == "Cultivated -> Developed"
    assert t["transition"].iloc[3] == "Water -> Developed"
    assert t["transition"].iloc[4] == "Developed -> Developed"
    assert pd.isna(t["transition"].iloc[8])  # unlabelled reference: no transition
    assert change.newly_developed["tile_id"].tolist() == t["tile_id"].iloc[:3].tolist()
    # the group, class and confidence columns of both years, and B's probabilities
    assert t["ref_group"].iloc[3] == "Water" and t["ref_class"].iloc[3] == "Water"
    assert t["b_class"].iloc[7] == "Shrub" and t["b_group"].iloc[7] == "Undeveloped"
    assert t["b_p_Developed"].iloc[0] == pytest.approx(0.9)
    assert {"minx", "maxy", "crs", "image_url_a", "image_url_b"} <= set(t.columns)
    assert change.reference.source == "labels" and change.year_b.model_id == "model@1"


def test_transition_matrix_and_count_table(tmp_path, change_kit):
    change = _change(tmp_path, change_kit, REF, B)
    matrix = transition_matrix(change)
    assert list(matrix.columns) == list(labels.GROUPS)
    assert matrix.to_dict("index") == {
        "Developed": {"Developed": 1, "Cultivated": 0, "Undeveloped": 0, "Water": 0},
        "Cultivated": {"Developed": 1, "Cultivated": 0, "Undeveloped": 1, "Water": 0},
        "Undeveloped": {"Developed": 2, "Cultivated": 1, "Undeveloped": 1, "Water": 0},
        "Water": {"Developed": 1, "Cultivated": 0, "Undeveloped": 0, "Water": 0},
    }
    counts = count_table(change)
    assert list(counts.index) == ["2010 labels", "2016 predictions"]
    ref, b = counts.loc["2010 labels"], counts.loc["2016 predictions"]
    assert (ref["Developed"], ref["Cultivated"], ref["Undeveloped"]) == (1, 2, 4)
    assert (ref["Water"], ref["no group"]) == (1, 1)
    assert ref["Undeveloped share"] == pytest.approx(round(4 / 7, 4))  # water apart
    assert (b["Developed"], b["Cultivated"], b["Undeveloped"]) == (6, 1, 2)
    assert (b["Water"], b["no group"]) == (0, 0)
    assert b["Developed share"] == pytest.approx(round(6 / 9, 4))


def test_predictions_below_the_threshold_are_uncertain(tmp_path, change_kit):
    change = _change(tmp_path, change_kit, ["Cultivated"] * 4 + ["Forest"] * 2,
                     ["Developed"] * 4 + ["Herbaceous", "Cultivated"],
                     [0.3, 0.5, 0.49, 0.95, 0.4, 0.1], cols=2)
    t = change.tiles
    assert t["b_group"].isna().tolist() == [True, False, True, False, False, True]
    assert t["newly_developed"].tolist() == [False, True, False, True, False, False]
    assert t["transition"].isna().tolist() == [True, False, True, False, False, True]
    assert not t.loc[t["b_group"].isna(), "changed"].any()
    # the threshold applies to the group's probability: Herbaceous 0.4 + 3 other
    # Undeveloped classes at 0.1 each (0.6 shared by the six other classes)
    assert t["b_confidence"].iloc[4] == pytest.approx(0.7, abs=1e-6)
    assert t["b_class"].iloc[0] == "Developed"  # the class is still reported
    assert count_table(change).loc["2016 predictions", "no group"] == 3
    assert transition_matrix(change).to_numpy().sum() == 3
    lenient = _change(tmp_path, change_kit, ["Cultivated"] * 4 + ["Forest"] * 2,
                      ["Developed"] * 4 + ["Herbaceous", "Cultivated"],
                      [0.3, 0.5, 0.49, 0.95, 0.4, 0.1], cols=2, threshold=0.0)
    assert lenient.tiles["newly_developed"].sum() == 4


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5])
def test_threshold_out_of_range(tmp_path, change_kit, threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        _change(tmp_path, change_kit, ["Forest"], ["Forest"], cols=1, threshold=threshold)


def test_smoothing_removes_salt_and_pepper_from_the_b_map(tmp_path, change_kit):
    n = 6
    b = np.full((n, n), "Cultivated", dtype=object)
    b[3:, 3:] = "Developed"  # a 3 × 3 development
    b[1, 1] = "Developed"  # a speckle
    conf = np.full((n, n), 0.9)
    conf[0, 5] = 0.2  # uncertain: stays uncertain when smoothed
    ref = np.full((n, n), "Cultivated", dtype=object)
    ref[0, 0] = "Forest"
    args = (tmp_path, change_kit, list(ref.ravel()), list(b.ravel()), list(conf.ravel()))
    raw = _change(*args, cols=n)
    smooth = _change(*args, cols=n, smooth=True)
    assert raw.tiles["newly_developed"].sum() == 10
    assert smooth.tiles["newly_developed"].sum() == 9
    assert smooth.smoothed and not raw.smoothed
    by_id = smooth.tiles.set_index("tile_id")
    raw_by_id = raw.tiles.set_index("tile_id")
    speckle = raw.tiles["tile_id"].iloc[1 * n + 1]
    assert raw_by_id.loc[speckle, "b_group"] == "Developed"
    assert by_id.loc[speckle, "b_group"] == "Cultivated"
    assert by_id.loc[speckle, "b_class"] == "Developed"  # classes are not smoothed
    block = raw.tiles["tile_id"].to_numpy().reshape(n, n)[3:, 3:].ravel()
    assert (by_id.loc[block, "b_group"] == "Developed").all()
    uncertain = raw.tiles["tile_id"].iloc[5]
    assert pd.isna(by_id.loc[uncertain, "b_group"])
    # the reference (labels) is never smoothed
    assert by_id["ref_group"].iloc[0] == "Undeveloped"
    # salt and pepper only: everything else is the same
    same = by_id.index.difference([speckle])
    assert (by_id.loc[same, "b_group"].fillna("-").tolist()
            == raw_by_id.loc[same, "b_group"].fillna("-").tolist())


def test_smoothing_weight_changes_the_outcome(tmp_path, change_kit):
    # centre Developed with two Developed neighbours, four Cultivated, two Forest:
    # weight 2 ties (kept), weight 1 loses to Cultivated
    b = ["Developed", "Cultivated", "Cultivated",
         "Developed", "Developed", "Cultivated",
         "Forest", "Forest", "Cultivated"]
    ref = ["Cultivated"] * 9
    kept = _change(tmp_path, change_kit, ref, b, smooth=True, centre_weight=2.0)
    lost = _change(tmp_path, change_kit, ref, b, smooth=True, centre_weight=1.0)
    assert kept.tiles["b_group"].iloc[4] == "Developed"
    assert lost.tiles["b_group"].iloc[4] == "Cultivated"


def test_error_rows_take_part_in_no_transition(tmp_path, change_kit):
    change = _change(tmp_path, change_kit, ["Cultivated"] * 3, ["Developed", None, "Developed"])
    assert change.tiles["newly_developed"].tolist() == [True, False, True]
    assert pd.isna(change.tiles["b_group"].iloc[1])


def test_predictions_as_the_reference(tmp_path, change_kit):
    root = str(tmp_path)
    man = change_kit.manifest(change_kit.grid(2, 1))
    change_kit.write_predictions(root, COUNTY, 2010, change_kit.predictions(
        man, ["Forest", "Developed"], year=2010))
    change_kit.write_predictions(root, COUNTY, 2016, change_kit.predictions(
        man, ["Developed", "Developed"]))
    a = read_predictions(root, COUNTY, 2010)
    b = read_predictions(root, COUNTY, 2016)
    change = detect(COUNTY, a, b, check_grids(COUNTY, man, man, 2010, 2016), year_a=a)
    assert change.tiles["newly_developed"].tolist() == [True, False]
    assert list(count_table(change).index) == ["2010 predictions", "2016 predictions"]


# --- inputs that do not fit ----------------------------------------------------------------


def test_missing_manifest_names_county_and_year(tmp_path):
    with pytest.raises(ChangeInputError, match=r"no tiles of county testcounty in 2012"):
        read_manifest(str(tmp_path), COUNTY, 2012)


def test_missing_predictions_name_county_and_year(tmp_path, change_kit):
    root = str(tmp_path)
    man = change_kit.manifest(change_kit.grid(2, 2), ["Forest"] * 4)
    change_kit.write_manifest(root, COUNTY, 2010, man)
    change_kit.write_manifest(root, COUNTY, 2016, man)
    with pytest.raises(ChangeInputError, match=r"no predictions for county testcounty in 2016"):
        read_predictions(root, COUNTY, 2016)
    with pytest.raises(ChangeInputError, match=r"no predictions for county testcounty in 2016"):
        run_change(root, COUNTY, 2010, 2016, embeddings=False)
    assert issubclass(ChangeInputError, ValueError)


def test_grids_with_different_tile_sizes_do_not_align(change_kit):
    a = change_kit.manifest([(10, 10), (11, 10)])
    b = change_kit.manifest([(5, 5)], size=448.0)
    with pytest.raises(ChangeInputError,
                       match=r"do not align: 2010 tiles are \[224\.0\] m, 2016 tiles are "
                             r"\[448\.0\] m"):
        check_grids(COUNTY, a, b, 2010, 2016)


@pytest.mark.parametrize("what", ["bounds", "x by 2 m", "y by 20 m", "crs"])
def test_same_id_on_other_ground_does_not_align(change_kit, what):
    a = change_kit.manifest(change_kit.grid(2, 2))  # real UTM 14N coordinates
    b = a.copy()
    if what == "bounds":
        b.loc[2, ["minx", "maxx"]] += 30.0
    elif what == "x by 2 m":
        b.loc[2, ["minx", "maxx"]] += 2.0
    elif what == "y by 20 m":
        b.loc[2, ["miny", "maxy"]] -= 20.0
    else:
        b.loc[2, "crs"] = "EPSG:32615"
    with pytest.raises(ChangeInputError,
                       match=rf"tile {a['tile_id'][2]} covers other ground in 2010 than in 2016"):
        check_grids(COUNTY, a, b, 2010, 2016)


def test_no_tile_in_common(change_kit):
    a = change_kit.manifest(change_kit.grid(2, 2))
    b = change_kit.manifest(change_kit.grid(2, 2, col0=9000))
    with pytest.raises(ChangeInputError, match="have no tile in common"):
        check_grids(COUNTY, a, b, 2010, 2016)


def test_common_tiles_only(change_kit):
    a = change_kit.manifest(change_kit.grid(3, 1))
    b = change_kit.manifest(change_kit.grid(3, 1, col0=change_kit.COL0 + 1), year=2016)
    both = check_grids(COUNTY, a, b, 2010, 2016)
    assert both["tile_id"].tolist() == a["tile_id"].iloc[1:].tolist()
    assert both["image_url_a"].str.contains("/2010/").all()
    assert both["image_url_b"].str.contains("/2016/").all()


def test_a_model_missing_a_class_compares_with_labels_but_not_with_another_model(
        tmp_path, change_kit):
    root = str(tmp_path)
    man = change_kit.manifest(change_kit.grid(2, 1), ["Forest", "Cultivated"])
    change_kit.write_predictions(root, COUNTY, 2016, change_kit.predictions(
        man, ["Developed", "Forest"], model_id="three@1",
        model_classes=("Developed", "Forest", "Shrub")))
    b = read_predictions(root, COUNTY, 2016)
    assert b.classes == ("Developed", "Forest", "Shrub")
    # NLCD labels hold every class: a model that never saw one still compares with them
    change = detect(COUNTY, labels_map(man, COUNTY, 2010), b,
                    check_grids(COUNTY, man, man, 2010, 2016))
    assert change.tiles["newly_developed"].tolist() == [True, False]  # Forest -> Developed
    assert missing_classes(b) == ["Barren", "Herbaceous", "Cultivated", "Water"]
    # two models' maps must know the same classes
    change_kit.write_predictions(root, COUNTY, 2010, change_kit.predictions(
        man, ["Forest", "Forest"], year=2010))
    with pytest.raises(ChangeInputError,
                       match=r"model three@1 predicts \['Developed', 'Forest', 'Shrub'\] but "
                             r"the 2010 model model@1 predicts \['Developed', 'Barren'"):
        a = read_predictions(root, COUNTY, 2010)
        detect(COUNTY, a, b, check_grids(COUNTY, man, man, 2010, 2016), year_a=a)


def test_predictions_mixing_models(tmp_path, change_kit):
    man = change_kit.manifest(change_kit.grid(2, 2))
    frame = change_kit.predictions(man, ["Forest"] * 4)
    frame.loc[2:, "model_id"] = "model@2"
    change_kit.write_predictions(str(tmp_path), COUNTY, 2016, frame)
    with pytest.raises(ChangeInputError, match=r"mix models \['model@1', 'model@2'\]"):
        read_predictions(str(tmp_path), COUNTY, 2016)


def test_predictions_without_a_scored_tile(tmp_path, change_kit):
    man = change_kit.manifest(change_kit.grid(2, 2))
    change_kit.write_predictions(str(tmp_path), COUNTY, 2016,
                                 change_kit.predictions(man, [None] * 4))
    with pytest.raises(ChangeInputError, match=r"have no scored tile \(4 errors\)"):
        read_predictions(str(tmp_path), COUNTY, 2016)


def test_labels_reference_needs_labels(tmp_path, change_kit):
    root = str(tmp_path)
    man = change_kit.manifest(change_kit.grid(2, 2))  # tiled without NLCD
    with pytest.raises(ChangeInputError, match=r"county testcounty has no NLCD labels for 2010"):
        labels_map(man, COUNTY, 2010)
    change_kit.write_manifest(root, COUNTY, 2010, man)
    change_kit.write_manifest(root, COUNTY, 2016, man)
    change_kit.write_predictions(root, COUNTY, 2016, change_kit.predictions(man, ["Forest"] * 4))
    with pytest.raises(ChangeInputError, match=r"no NLCD labels for 2010"):
        run_change(root, COUNTY, 2010, 2016, reference="labels", embeddings=False)
    # 'auto' falls back on labels, and says so when there are none
    with pytest.raises(ChangeInputError, match=r"no NLCD labels and no predictions by model@1 "
                                               r"for 2010"):
        run_change(root, COUNTY, 2010, 2016, reference="auto", embeddings=False)
    with pytest.raises(ChangeInputError, match=r"reference must be auto, labels or predictions"):
        run_change(root, COUNTY, 2010, 2016, reference="nlcd", embeddings=False)


@pytest.mark.parametrize(("a", "b"), [(2016, 2016), (2016, 2010)])
def test_year_a_must_come_before_year_b(tmp_path, a, b):
    with pytest.raises(ChangeInputError, match=rf"year A \({a}\) must be before year B \({b}\)"):
        run_change(str(tmp_path), COUNTY, a, b)
