"""``landuse windows``: the subcommand registered by ``add_parser``, run in process."""

from __future__ import annotations

import argparse
import json

import pytest

from landuse.windows.cli import add_parser
from landuse.windows.grid import WindowError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="landuse")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_defaults_are_the_seeds():
    args = _parse(["windows", "--image", "a.tif", "--out", "o"])
    assert (args.size, args.stride, args.threshold) == (32, 16, 0.9)
    assert args.master == "local[2]" and args.geojson == "auto" and args.bundle is None


def test_windows_in_process_prints_and_writes(collage, colour_bundle, tmp_path, capsys):
    out = tmp_path / "cli"
    args = _parse(["windows", "--image", str(collage.tif), "--bundle", str(colour_bundle),
                   "--out", str(out), "--detect", "car,boat", "--master", "none"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "667 windows (23 × 29, 32 px every 16 px)" in printed
    assert "detections.geojson" in printed
    assert json.loads((out / "summary.json").read_text())["detections"] > 0


def test_geojson_yes_on_a_png_is_a_user_error(collage, colour_bundle, tmp_path):
    args = _parse(["windows", "--image", str(collage.png), "--bundle", str(colour_bundle),
                   "--out", str(tmp_path / "x"), "--geojson", "yes", "--master", "none"])
    with pytest.raises(WindowError, match="no georeferencing"):
        args.func(args)


def test_no_bundle_and_no_champion_is_a_user_error(collage, tmp_path):
    args = _parse(["windows", "--image", str(collage.tif), "--out", str(tmp_path / "x"),
                   "--root", str(tmp_path / "empty"), "--master", "none"])
    with pytest.raises(ValueError, match="no --bundle and no champion"):
        args.func(args)
