"""County registries: relative locations, includes, duplicates, validation and selection."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from landuse.counties import County, load_registry, select

BBOX = [-99.2, 47.0, -99.1, 47.1]


def _county(name, **extra):
    return {"name": name, "state": "nd", "bbox": BBOX, "naip": "naip", **extra}


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def test_relative_locations_resolve_against_the_registry_folder(tmp_path):
    url = _write(
        tmp_path / "reg" / "counties.json",
        {
            "counties": [
                _county("a", nlcd="data/nlcd"),
                _county("b", naip="/abs/naip", nlcd="abfs://nlcd/conus.tif"),
                _county("c", naip="abfs://naip"),
            ]
        },
    )
    registry = load_registry(url)
    assert list(registry) == ["a", "b", "c"]
    assert registry["a"].naip == f"{tmp_path}/reg/naip"
    assert registry["a"].nlcd == f"{tmp_path}/reg/data/nlcd"
    assert registry["b"].naip == "/abs/naip"
    assert registry["b"].nlcd == "abfs://nlcd/conus.tif"
    assert registry["c"].naip == "abfs://naip"
    assert registry["c"].nlcd is None
    assert registry["a"].bbox == tuple(BBOX)
    assert registry["a"].synthetic is False


def test_includes_resolve_against_their_own_folder(tmp_path):
    _write(tmp_path / "sub" / "more" / "other.json", {"counties": [_county("inner")]})
    _write(
        tmp_path / "sub" / "extra.json",
        {"counties": [_county("middle")], "include": ["more/other.json"]},
    )
    url = _write(
        tmp_path / "counties.json", {"counties": [_county("outer")], "include": ["sub/extra.json"]}
    )
    registry = load_registry(url)
    assert set(registry) == {"outer", "middle", "inner"}
    assert registry["outer"].naip == f"{tmp_path}/naip"
    assert registry["middle"].naip == f"{tmp_path}/sub/naip"
    assert registry["inner"].naip == f"{tmp_path}/sub/more/naip"


def test_registry_in_the_current_folder(tmp_path, monkeypatch):
    _write(tmp_path / "counties.json", {"counties": [_county("a")]})
    monkeypatch.chdir(tmp_path)
    assert load_registry("counties.json")["a"].naip == "./naip"


def test_bundled_sample_registry(tmp_path):
    # sample/synthetic is generated (`landuse synth`), so use a copy of the bundled registry.
    from landuse import config
    from landuse.synthetic import make_synthetic

    shutil.copy(config.SAMPLE / "counties.json", tmp_path / "counties.json")
    with pytest.raises(ValueError, match="run `landuse synth` first"):
        load_registry(str(tmp_path / "counties.json"))
    make_synthetic(str(tmp_path / "synthetic"), counties=2, years=(2016,), size_m=224.0,
                   res_m=8.0)
    registry = load_registry(str(tmp_path / "counties.json"))
    assert list(registry) == ["stutsman-nd", "synthetic-county-1", "synthetic-county-2"]
    assert registry["stutsman-nd"].naip == f"{tmp_path}/naip"
    assert registry["stutsman-nd"].nlcd is None and not registry["stutsman-nd"].synthetic
    for name in ("synthetic-county-1", "synthetic-county-2"):
        assert registry[name].synthetic
        assert registry[name].naip == f"{tmp_path}/synthetic/naip"
        assert registry[name].nlcd == f"{tmp_path}/synthetic/nlcd"


def test_duplicate_across_an_include(tmp_path):
    _write(tmp_path / "other.json", {"counties": [_county("a")]})
    doc = {"counties": [_county("a")], "include": ["other.json"]}
    url = _write(tmp_path / "counties.json", doc)
    with pytest.raises(ValueError, match="county a is defined twice"):
        load_registry(url)


def test_duplicate_between_two_includes(tmp_path):
    _write(tmp_path / "one.json", {"counties": [_county("a")]})
    _write(tmp_path / "two.json", {"counties": [_county("a")]})
    url = _write(tmp_path / "counties.json", {"include": ["one.json", "two.json"]})
    with pytest.raises(ValueError, match="defined twice"):
        load_registry(url)


def test_duplicate_within_one_file(tmp_path):
    url = _write(tmp_path / "counties.json", {"counties": [_county("a"), _county("a")]})
    with pytest.raises(ValueError, match="county a is defined twice"):
        load_registry(url)


def test_missing_include_has_a_clear_message(tmp_path):
    url = _write(tmp_path / "counties.json", {"counties": [], "include": ["synthetic/c.json"]})
    with pytest.raises(ValueError) as err:
        load_registry(url)
    message = str(err.value)
    assert f"{tmp_path}/synthetic/c.json" in message
    assert "does not exist" in message
    assert "landuse synth" in message


def test_missing_registry(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_registry(str(tmp_path / "counties.json"))


def test_invalid_json(tmp_path):
    path = tmp_path / "counties.json"
    path.write_text('{"counties": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_registry(str(path))


@pytest.mark.parametrize(
    "bbox",
    [
        [-99.1, 47.0, -99.2, 47.1],  # west > east
        [-99.2, 47.1, -99.1, 47.0],  # south > north
        [-99.2, 47.0, -99.2, 47.1],  # empty
        [-190.0, 47.0, -99.1, 47.1],
        [-99.2, 47.0, -99.1],
    ],
)
def test_bad_bbox_rejected(tmp_path, bbox):
    url = _write(tmp_path / "counties.json", {"counties": [_county("bad", bbox=bbox)]})
    with pytest.raises(ValueError, match=re.escape(url)):
        load_registry(url)


@pytest.mark.parametrize(
    "entry",
    [
        _county("../escape"),
        _county("Upper"),
        {"name": "x", "bbox": BBOX},  # no NAIP root
        _county("x", colour="red"),  # unknown field
    ],
)
def test_bad_entries_rejected(tmp_path, entry):
    url = _write(tmp_path / "counties.json", {"counties": [entry]})
    with pytest.raises(ValueError, match="county registry"):
        load_registry(url)


def test_county_is_frozen():
    county = County(name="a", bbox=tuple(BBOX), naip="/n")
    with pytest.raises(ValueError):
        county.name = "b"  # type: ignore[misc]


def test_select(tmp_path):
    url = _write(tmp_path / "counties.json", {"counties": [_county(n) for n in "abc"]})
    registry = load_registry(url)
    assert [c.name for c in select(registry, None)] == ["a", "b", "c"]
    assert [c.name for c in select(registry, [])] == ["a", "b", "c"]
    assert [c.name for c in select(registry, ["c", "a"])] == ["c", "a"]
    with pytest.raises(ValueError) as err:
        select(registry, ["a", "nowhere", "elsewhere"])
    message = str(err.value)
    assert "nowhere" in message and "elsewhere" in message
    assert "['a', 'b', 'c']" in message


def test_registry_that_includes_itself_is_an_error(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"counties": [], "include": ["b.json"]}))
    b.write_text(json.dumps({"counties": [], "include": ["a.json"]}))
    with pytest.raises(ValueError, match="includes itself"):
        load_registry(str(a))


PC_NAIP = "stac+https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip"
PUBLIC_NAIP = "https://naipeuwest.blob.core.windows.net/naip"


def test_public_container_and_stac_sources_are_kept_as_written(tmp_path):
    url = _write(tmp_path / "counties.json", {"counties": [
        _county("public", naip=PUBLIC_NAIP), _county("stac", naip=PC_NAIP),
        _county("folder")]})
    registry = load_registry(url)
    assert registry["public"].naip == PUBLIC_NAIP
    assert registry["stac"].naip == PC_NAIP
    assert registry["folder"].naip == f"{tmp_path}/naip"  # existing forms unchanged


@pytest.mark.parametrize("naip", ["stac+https://example.com/api/v1",
                                  "stac+https://example.com/collections/",
                                  "stac+s3://bucket/collections/naip"])
def test_malformed_stac_source_names_the_registry_and_the_form(tmp_path, naip):
    url = _write(tmp_path / "counties.json", {"counties": [_county("bad-stac", naip=naip)]})
    with pytest.raises(ValueError) as err:
        load_registry(url)
    message = str(err.value)
    assert url in message and naip in message
    assert "stac+https://HOST/API/collections/COLLECTION" in message
