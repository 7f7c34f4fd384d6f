"""What the Land use view shows for scoring and training runs (no Airflow imports).

* A ``landuse_scoring`` run: each county-year's predicted class map (warped to Web Mercator
  over that year's NAIP quicklooks) and its class shares, from the committed predictions
  (``{root}/predictions/county=.../year=.../predictions.parquet``) and the year's tile
  manifest, both read through :mod:`landuse.storage` under the configured root.
* A ``landuse_training`` run: its candidates as MLflow runs (the runs whose published bundle
  lies under this run's folder ``{root}/models/candidates/{run}``), their validation
  metrics, each one's confusion matrix (the MLflow artifact ``confusion.png``), the champion
  decision, and the champion's held-out test figures
  (``{root}/models/evaluations/{model_id}.json``).

Names are checked before anything is read (a county is a :func:`landuse.storage.safe_name`,
a year four digits, an MLflow run id 32 hex digits and one of this run's candidates), and
nothing returned names a storage location.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rasterio.warp import Resampling

from landuse import storage
from landuse.change import maps
from landuse.change.grid import TileLayout, layouts
from landuse_airflow.views.view_data import NotFound, json_value, scrub, warp_png

_YEAR = re.compile(r"^[0-9]{4}\Z")  # ASCII digits only (\d matches other scripts' digits)
_MLFLOW_RUN = re.compile(r"^[0-9a-f]{32}\Z")
_LOCATION = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+|(?<![\w.])[/~]\S+")
CONFUSION_ARTIFACT = "confusion.png"
NOT_SCORED = "not scored"


def parse_year(year: str | int) -> int:
    """A four-digit year.

    Raises:
        ValueError: anything else (the message names it).
    """
    if not _YEAR.fullmatch(str(year)):
        raise ValueError(f"year {year!r} is not a four-digit year (2016)")
    return int(year)


def class_palette() -> list[tuple[str, maps.RGB]]:
    """The class map's palette (the change maps' one), each name once: the classes come from
    :mod:`landuse.labels`, so a new class appears without changes here."""
    return list(dict(maps.CLASS_PALETTE).items())


# --- scoring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """One county-year's committed predictions under the storage root."""

    root: str
    county: str
    year: int
    url: str


def predictions_location(root: str, county: str, year: int) -> str:
    """Where scoring commits a county-year's predictions under ``root``."""
    from landuse.scoring.spark import predictions_url

    return predictions_url(storage.join(root, "predictions"), county, year)


def open_predictions(root: str, county: str, year: str | int) -> Predictions:
    """The committed predictions of ``county`` in ``year`` under ``root``.

    Raises:
        ValueError: a county or year that is not a valid name.
        NotFound: nothing committed there.
    """
    storage.safe_name(county)
    y = parse_year(year)
    url = predictions_location(root, county, y)
    if not storage.exists(url):
        raise NotFound(f"no predictions for {county} {y}")
    return Predictions(root, county, y, url)


def _manifest_url(p: Predictions) -> str:
    from landuse.tiling import manifest_url

    return manifest_url(p.root, p.county, p.year)


def _scored(p: Predictions) -> pd.DataFrame:
    """The predictions with each tile's place from the year's manifest."""
    frame = storage.read_parquet(p.url).to_pandas()
    if "tile_id" not in frame or "predicted" not in frame:
        raise ValueError(f"the predictions of {p.county} {p.year} lack tile_id/predicted")
    manifest = _manifest_url(p)
    if not storage.exists(manifest):
        raise NotFound(f"no tile manifest for {p.county} {p.year}: the map needs the tiles' "
                       "places")
    places = storage.read_parquet(manifest).select(
        ["tile_id", "crs", "minx", "miny", "maxx", "maxy"]).to_pandas()
    return frame.merge(places, on="tile_id", how="inner")


def _class_layouts(tiles: pd.DataFrame) -> list[tuple[str, TileLayout]]:
    found = layouts(tiles)
    if len(found) == 1:
        return [("classes", found[0])]
    return [(f"classes_{layout.crs.replace(':', '').lower()}", layout) for layout in found]


def _class_png(tiles: pd.DataFrame, layout: TileLayout) -> tuple[bytes, list[list[float]]]:
    palette = class_palette()
    codes = maps.categorical(layout, tiles.set_index("tile_id")["predicted"], palette)
    lut = np.zeros((256, 4), dtype=np.uint8)  # index 0 (no tile) stays clear
    for i, (_, rgb) in enumerate(palette):
        lut[i + 1] = (*rgb, 255)
    return warp_png(np.moveaxis(lut[codes], -1, 0), layout.crs, layout.transform,
                     Resampling.nearest)


def scoring_view(p: Predictions) -> dict[str, Any]:
    """A county-year's class shares, its class-map layers with their legend and bounds,
    and the figures the predictions hold (tiles, errors, models, accuracy on labels)."""
    tiles = _scored(p)
    predicted = tiles["predicted"].where(tiles["predicted"].notna(), NOT_SCORED)
    counts = predicted.value_counts()
    palette = class_palette()
    colours = {name: "#{:02x}{:02x}{:02x}".format(*rgb) for name, rgb in palette}
    order = [name for name, _ in palette if name in counts.index]
    order += sorted(n for n in counts.index if n not in colours)  # unknown ones, and errors
    total = int(counts.sum())
    shares = [{"class": name, "tiles": int(counts[name]),
               "share": round(float(counts[name]) / total, 4) if total else 0.0,
               "colour": colours.get(name)} for name in order]
    out: dict[str, Any] = {
        "county": p.county, "year": p.year, "tiles": total,
        "scored": int(tiles["predicted"].notna().sum()), "shares": shares,
        "models": sorted(str(m) for m in tiles.get("model_id", pd.Series()).dropna().unique()),
        "legend": [{"name": n, "colour": colours[n]} for n, _ in palette],
        "layers": [{"name": name, "crs": layout.crs, "bounds": _class_png(tiles, layout)[1]}
                   for name, layout in _class_layouts(tiles)],
    }
    if "label" in tiles:  # the tiles' NLCD labels, where the manifest had a land-use class
        known = tiles[tiles["label"].isin(colours) & tiles["predicted"].notna()]
        if len(known):
            out["agreement_with_labels"] = {
                "tiles": len(known),
                "accuracy": round(float((known["label"] == known["predicted"]).mean()), 4)}
    return out


def scoring_layer_png(p: Predictions, name: str) -> bytes:
    """A class-map layer of :func:`scoring_view`, warped to Web Mercator as RGBA PNG.

    Raises:
        NotFound: no layer of that name.
    """
    tiles = _scored(p)
    for layer, layout in _class_layouts(tiles):
        if layer == name:
            return _class_png(tiles, layout)[0]
    raise NotFound(f"{name!r} is not a class map of {p.county} {p.year}")


def scoring_scenes(p: Predictions) -> list[str]:
    """The NAIP scenes of the county-year (for the map's base layer)."""
    manifest = _manifest_url(p)
    if not storage.exists(manifest):
        return []
    frame = storage.read_parquet(manifest).select(["scene_url"]).to_pandas()
    return sorted(frame["scene_url"].dropna().unique())


# --- training -----------------------------------------------------------------------------


def _client() -> Any:
    from mlflow import MlflowClient

    from landuse.models.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri())


def _candidate_runs(root: str, dag_run_id: str) -> list[Any]:
    """The MLflow runs of the candidates one training run published under ``root``."""
    from landuse.models.tracking import EXPERIMENT, models_root
    from landuse.models.training import run_folder

    client = _client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    folder = run_folder(models_root(root), dag_run_id).rstrip("/") + "/"
    # LIKE narrows the search in the tracking store ("_" and "%" in the folder only widen
    # it); the exact prefix test below decides.
    query = "" if "'" in folder else f"tags.bundle_url LIKE '{folder}%'"
    runs = client.search_runs([experiment.experiment_id], filter_string=query,
                              max_results=1000, order_by=["attributes.start_time ASC"])
    return [r for r in runs if str(r.data.tags.get("bundle_url", "")).startswith(folder)]


def _candidate(run: Any) -> dict[str, Any]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    per_class: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        kind, _, cls = key.partition("_")
        if kind in ("precision", "recall") and cls:
            per_class.setdefault(cls, {})[kind] = json_value(value)
    return scrub({
        "mlflow_run_id": run.info.run_id, "name": run.info.run_name,
        "model_id": tags.get("model_id"), "backbone": params.get("backbone"),
        "method": params.get("method"),
        **{k: json_value(metrics[k]) for k in ("accuracy", "group_accuracy", "test_accuracy",
                                                 "test_group_accuracy") if k in metrics},
        "per_class": per_class,
        "decision": tags.get("champion_decision"),
        "decision_reason": _redact(tags.get("champion_decision_reason")),
        "incumbent_model_id": tags.get("incumbent_model_id") or None,
        "params": {k: v for k, v in params.items() if k not in ("backbone", "method")},
    })


def _redact(text: str | None) -> str | None:
    """``text`` with any storage location in it elided (a reason may quote a bundle's)."""
    return _LOCATION.sub("…", text) if text else text


def training_view(root: str, dag_run_id: str) -> dict[str, Any]:
    """A training run's candidates (MLflow), its champion decision, and the held-out test
    evaluation of the champion it left in force."""
    from landuse.models.tracking import models_root, read_evaluation

    candidates = [_candidate(r) for r in _candidate_runs(root, dag_run_id)]
    out: dict[str, Any] = {"candidates": candidates, "decision": None, "champion": None}
    challenger = next((c for c in candidates if c.get("decision")), None)
    if challenger is not None:
        kept = challenger["decision"] == "kept"
        champion_id = challenger["incumbent_model_id"] if kept else challenger["model_id"]
        out["decision"] = {"decision": challenger["decision"],
                           "reason": challenger["decision_reason"],
                           "challenger": challenger["model_id"], "champion": champion_id}
        if champion_id:
            evaluation = read_evaluation(models_root(root), champion_id)
            out["champion"] = {"model_id": champion_id,
                               "test": scrub(evaluation) if evaluation else None}
    return out


def confusion_png(root: str, dag_run_id: str, mlflow_run_id: str) -> bytes:
    """The confusion-matrix figure MLflow keeps for one candidate of a training run.

    Raises:
        NotFound: not an MLflow run id, not a candidate of this run, or no figure.
    """
    if not _MLFLOW_RUN.fullmatch(mlflow_run_id):
        raise NotFound(f"{mlflow_run_id!r} is not an MLflow run id")
    if mlflow_run_id not in {r.info.run_id for r in _candidate_runs(root, dag_run_id)}:
        raise NotFound(f"run {mlflow_run_id} is not a candidate of {dag_run_id}")
    client = _client()
    if CONFUSION_ARTIFACT not in {a.path for a in client.list_artifacts(mlflow_run_id)}:
        raise NotFound(f"candidate {mlflow_run_id} has no confusion matrix")
    with tempfile.TemporaryDirectory(prefix="landuse-view-") as tmp:
        path = client.download_artifacts(mlflow_run_id, CONFUSION_ARTIFACT, tmp)
        return Path(path).read_bytes()
