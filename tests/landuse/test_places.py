"""Locations named by a run's params: allowed schemes, the configured roots, Spark masters."""

from __future__ import annotations

import os
import re

import pytest

from landuse.places import allowed_roots, check_location, check_spark_master

ROOTS = ["/data/landuse", "abfs://landuse/prod"]


@pytest.mark.parametrize(
    "url",
    [
        "/data/landuse", "/data/landuse/naip/x/2016", "file:///data/landuse/models/champion",
        "/data/landuse/a/../b", "abfs://landuse/prod", "abfs://landuse/prod/naip/x",
        "abfss://landuse/prod/models/b1",
    ],
)
def test_locations_under_an_allowed_root(url):
    assert check_location(url, "storage_root", ROOTS) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("/data/landuse-other", "outside the allowed roots"),  # a prefix, not a folder
        ("/data/landuse/../secrets", "outside the allowed roots"),
        ("/etc/passwd", "outside the allowed roots"),
        ("abfs://landuse/production", "outside the allowed roots"),
        ("abfs://other/prod", "outside the allowed roots"),
        ("abfs://landuse/prod/../../other", "'..' segment"),
        ("s3://bucket/x", "s3:// scheme is not allowed"),
        ("https://example.org/x.tif", "https:// scheme is not allowed"),
    ],
)
def test_locations_elsewhere_are_refused_with_a_clear_error(url, why):
    with pytest.raises(ValueError, match=re.escape(why)) as err:
        check_location(url, "storage_root", ROOTS)
    assert "storage_root" in str(err.value) and url in str(err.value)


def test_a_symbolic_link_out_of_a_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(ValueError, match="outside the allowed roots"):
        check_location(str(root / "link" / "x"), "output", [str(root)])


def test_a_bare_blob_scheme_allows_every_container():
    assert check_location("abfs://any/x", "model", ["abfs://"]) == "abfs://any/x"


def test_allowed_roots_come_from_the_configuration(monkeypatch):
    monkeypatch.setenv("LANDUSE_STORAGE_ROOT", "abfs://prod/landuse")
    monkeypatch.setenv("LANDUSE_ALLOWED_ROOTS", " /mnt/naip , abfs://archive/ ")
    roots = allowed_roots()
    assert roots[0] == "abfs://prod/landuse" and roots[-2:] == ["/mnt/naip", "abfs://archive/"]
    check_location("abfs://prod/landuse/naip", "storage_root")
    check_location("/mnt/naip/2016", "image")
    with pytest.raises(ValueError, match="LANDUSE_ALLOWED_ROOTS"):
        check_location("abfs://prod/other", "storage_root")


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "spark://127.0.0.1:7077",
                                    "spark://localhost:7077"])
def test_local_and_loopback_masters(master, monkeypatch):
    monkeypatch.delenv("LANDUSE_ALLOWED_SPARK_MASTERS", raising=False)
    assert check_spark_master(master) == master


def test_other_masters_only_when_listed(monkeypatch):
    monkeypatch.delenv("LANDUSE_ALLOWED_SPARK_MASTERS", raising=False)
    for master in ("spark://evil.example:7077", "spark://spark-master:7077", "yarn",
                   "local[2]; rm -rf /"):
        with pytest.raises(ValueError, match="LANDUSE_ALLOWED_SPARK_MASTERS"):
            check_spark_master(master)
    monkeypatch.setenv("LANDUSE_ALLOWED_SPARK_MASTERS", "spark://spark-master:7077")
    assert check_spark_master("spark://spark-master:7077")
