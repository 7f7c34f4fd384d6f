"""naip_dataset: NAIP imagery + NLCD labels -> labelled tiles, manifests and a training split.

One mapped task per county (per batch of counties beyond ``[core] max_map_length``) tiles
every requested year and commits a manifest per county-year, labelled by NLCD and by the
classes analysts set when reviewing change reports under the storage root (the ``reviews``
Param); the last task balances a county-held-out train/validation split (a single real
county split in spatial blocks) and emits the ``naip_dataset`` Asset, on which training is
scheduled.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from landuse_airflow import params
from landuse_airflow.assets import NAIP_DATASET
from landuse_airflow.errors import fail_fast_on_bad_input

log = logging.getLogger(__name__)


@dag(
    dag_id="naip_dataset",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["landuse", "dataset"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "registry": params.registry(),
        "counties": params.counties(),
        "years": params.years([2010, 2016]),
        "nlcd": Param(
            None,
            type=["null", "string"],
            title="NLCD source",
            description="NLCD raster or folder of nlcd_YYYY*.tif overriding the registry's; "
            "empty string for no labels.",
        ),
        "nlcd_crs": Param(
            None,
            type=["null", "string"],
            title="NLCD CRS override",
            description="The NLCD rasters' true CRS when their embedded one is wrong, e.g. "
            "EPSG:5070 (NLCD's CONUS Albers).",
        ),
        "reviews": Param(
            True,
            type="boolean",
            title="Use reviewed tiles as labels",
            description="Use analysts' reviewed tiles from change reports under the storage "
            "root as labels beside NLCD (a reviewed tile is trainable when its imagery is).",
        ),
        "tile_size_m": Param(
            224.0, type="number", minimum=10, maximum=10000, title="Tile size (m)"
        ),
        "tile_px": Param(224, type="integer", minimum=16, maximum=4096, title="Tile pixels"),
        "nir": Param(False, type="boolean", title="Add NIR as a 4th channel"),
        "chips": Param("none", type="string", enum=["none", "trainable", "all"],
                       title="Tiles also written as PNG chips",
                       description="Training and scoring read the tiles from the scenes, so "
                       "tiling writes manifests only; 'trainable' or 'all' also export PNG "
                       "chips for tools that want images (or later: `landuse chips`)."),
        "purity_threshold": Param(
            1.0, type="number", exclusiveMinimum=0, maximum=1, title="Purity threshold"
        ),
        "tiles_per_class": Param(
            None, type=["null", "integer"], minimum=1, title="Tiles per class (cap)"
        ),
        "val_counties": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Validation counties (empty: chosen by seed)",
        ),
        "test_counties": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            title="Test counties (null: chosen by seed; [] for none)",
            description="Held out of training and model choice; every reported accuracy and "
            "expected-error figure comes from them. Chosen when four or more counties have "
            "trainable tiles.",
        ),
        "classes": Param(
            ["Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated", "Water"],
            type="array",
            items={"type": "string", "enum": ["Developed", "Barren", "Forest", "Shrub",
                                              "Herbaceous", "Cultivated", "Water"]},
            minItems=2,
            title="Classes the dataset teaches",
            description="The seed's six and Water; drop Water for the seed's own class set.",
        ),
        "seed": Param(0, type="integer", minimum=0, title="Split seed"),
        "storage_root": params.storage_root(),
    },
)
def naip_dataset() -> None:
    @task
    def plan() -> list[list[str]]:
        """Validate the params and the registry; return the counties to tile, in at most
        ``[core] max_map_length`` batches."""
        from airflow.sdk.configuration import conf

        from landuse import counties
        from landuse.refresh import batches

        p = get_current_context()["params"]
        with fail_fast_on_bad_input():
            params.check_places(p)  # before anything is read or written
            _tiling_config(p)  # fail here, once, on bad tiling params
            if p["nlcd_crs"]:
                from landuse.nlcd import parse_crs

                parse_crs(p["nlcd_crs"])
            chosen = counties.select(counties.load_registry(p["registry"]), p["counties"])
        return batches([c.name for c in chosen], conf.getint("core", "max_map_length"))

    @task(max_active_tis_per_dagrun=2)
    def tile_county(counties: list[str]) -> list[dict[str, Any]]:
        """Tile every requested year of a batch of counties (one, while they fit); commit
        one manifest per county-year (a retry skips those already committed)."""
        from dataclasses import asdict

        from landuse import counties as registries
        from landuse.tiling import build_county

        p = get_current_context()["params"]
        results = []
        with fail_fast_on_bad_input():
            registry = registries.load_registry(p["registry"])
            for county in counties:
                results += build_county(
                    registry[county], p["years"], p["storage_root"], _tiling_config(p),
                    nlcd=p["nlcd"], nlcd_crs=p["nlcd_crs"], reviews=p["reviews"],
                )
        return [asdict(r) for r in results]

    @task(outlets=[NAIP_DATASET])
    def make_split(per_county: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """Balance a county-held-out split of all trainable tiles and emit the Asset."""
        from landuse import splits, storage

        context = get_current_context()
        p = context["params"]
        manifests = [r["manifest_url"] for county in per_county for r in county]
        with fail_fast_on_bad_input():
            dataset = splits.build_dataset(
                manifests,
                storage.join(p["storage_root"], "naip", "dataset"),
                val_counties=p["val_counties"] or None,
                test_counties=p["test_counties"],
                classes=tuple(p["classes"]),
                tiles_per_class=p["tiles_per_class"],
                seed=p["seed"],
            )
        counts = {s: dataset.summary[s]["tiles"] for s in splits.PARTS}
        reviewed = {s: dataset.summary[s].get("reviewed", 0) for s in splits.PARTS}
        log.info("split: %s tiles, of them labelled by reviews %s", counts, reviewed)
        if "real_blocks" in dataset.summary:
            log.info("the single real county split in spatial blocks: %s",
                     dataset.summary["real_blocks"])
        context["outlet_events"][NAIP_DATASET].extra = {
            "url": dataset.url,
            "summary_url": dataset.summary_url,
            "storage_root": p["storage_root"],
            "manifests": sorted(manifests),
            **counts,
        }
        return {"url": dataset.url, **counts}

    make_split(tile_county.expand(counties=plan()))


def _tiling_config(p: Any) -> Any:
    from landuse.tiling import TilingConfig

    return TilingConfig(
        tile_size_m=p["tile_size_m"],
        tile_px=p["tile_px"],
        bands=("red", "green", "blue", "nir") if p["nir"] else ("red", "green", "blue"),
        purity_threshold=p["purity_threshold"],
        chips=p["chips"],
    )


naip_dataset()
