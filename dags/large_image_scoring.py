"""large_image_scoring: score one large image with a sliding window on Spark.

The MXNet / R Server sibling of the seed, done right: windows of a configurable size and
stride (32 and 16 by default, as in the seed) over a GeoTIFF or plain image, read in strips
of equal work (one Spark task per strip), batched through the model bundle. Outputs, under
``{storage_root}/windows/{image name}`` unless an output folder is given: a dense
class-probability COG and a class map (georeferenced when the image is), and detections
above the threshold after non-maximum suppression, as Parquet and, for georeferenced
images, GeoJSON.

``plan`` resolves the model (the champion by default) and checks everything that bad input
could break (window and stride against the image, GeoJSON for an image without a CRS, the
classes to detect) and picks the route (the network made fully convolutional once, so
overlapping windows share their work, when it allows it; else window by window) before any
Spark work; ``score_windows`` runs ``SlidingWindowScoringOperator``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from landuse_airflow import params
from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.operators.windows import SlidingWindowScoringOperator

SAMPLE_SCENE = "sample/naip/m_4709963_se_14_1_20160816.tif"


@dag(
    dag_id="large_image_scoring",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["landuse", "scoring", "windows"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "image": Param(SAMPLE_SCENE, type="string", minLength=1, title="Image",
                       description="GeoTIFF or image: a path (relative to the project) or an "
                       "abfs:// URL."),
        "model": Param("champion", type="string", minLength=1, title="Model",
                       description="'champion', or a bundle folder or URL."),
        "window_size": Param(32, type="integer", minimum=1, title="Window size (px)"),
        "stride": Param(16, type="integer", minimum=1, title="Stride (px)",
                        description="Step between windows, at most the window size."),
        "threshold": Param(0.9, type="number", exclusiveMinimum=0, maximum=1,
                           title="Detection threshold"),
        "iou_threshold": Param(0.1, type="number", minimum=0, exclusiveMaximum=1,
                               title="NMS IoU threshold",
                               description="Same-class windows overlapping the best one "
                               "above this IoU are merged into one box."),
        "detect_classes": Param([], type="array", items={"type": "string"}, uniqueItems=True,
                                title="Classes to detect", description="Empty: all."),
        "merge": Param("weighted", type="string", enum=["weighted", "max"],
                       title="Merged box", description="Score-weighted mean of the merged "
                       "windows, or the best window's box."),
        "geojson": Param("auto", type="string", enum=["auto", "yes", "no"],
                         title="GeoJSON detections",
                         description="auto: when the image is georeferenced."),
        "route": Param("auto", type="string",
                       enum=["auto", "fully-convolutional", "per-window"], title="Route",
                       description="auto: the network made fully convolutional when it "
                       "allows it (overlapping windows share their work), else window by "
                       "window; fully-convolutional fails at once when it cannot."),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096, title="Batch size"),
        "spark_master": Param("local[2]", type="string", title="Spark master",
                              description="local[N], spark://host:port, or none (in the "
                              "task's process)."),
        "output": Param("", type="string", title="Output folder",
                        description="Empty: {storage_root}/windows/{image name}."),
        "storage_root": params.storage_root(),
    },
)
def large_image_scoring() -> None:
    @task(multiple_outputs=True)
    def plan() -> dict[str, Any]:
        """Resolve the model and output, and reject bad input before any Spark work."""
        import os

        from landuse import config, storage
        from landuse.models.bundle import load_bundle
        from landuse.models.tracking import models_root, read_champion
        from landuse.windows.fcn import choose_route
        from landuse.windows.job import image_grid
        from landuse.windows.outputs import require_crs

        p = get_current_context()["params"]
        with fail_fast_on_bad_input():
            image = p["image"]
            if "://" not in image and not os.path.isabs(image):
                image = str(config.PROJECT_ROOT / image)
            params.check_places({**p, "image": image})  # before anything is read or written
            bundle = p["model"]
            if bundle == "champion":
                champion = read_champion(models_root(p["storage_root"]))
                if champion is None:
                    raise ValueError(f"no champion under {models_root(p['storage_root'])}: "
                                     "train first, or name a bundle")
                bundle = champion["bundle"]
            loaded = load_bundle(bundle)
            classes = loaded.spec.classes
            unknown = [c for c in p["detect_classes"] if c not in classes]
            if unknown:
                raise ValueError(f"cannot detect {unknown}: the model's classes are "
                                 f"{list(classes)}")
            grid, crs, _ = image_grid(image, p["window_size"], p["stride"])
            if p["geojson"] == "yes":
                require_crs(image, crs)
            # Derives and keeps the fully convolutional model in the bundle, or says why not.
            route = choose_route(loaded, p["window_size"], p["stride"], requested=p["route"])
            name = image.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
            out = p["output"] or storage.join(p["storage_root"], "windows", name)
        return {"image": image, "bundle": str(bundle), "output": out,
                "windows": grid.count, "georeferenced": crs is not None,
                "route": route.name, "route_reason": route.reason}

    planned = plan()
    SlidingWindowScoringOperator(
        task_id="score_windows",
        image_url=planned["image"],
        bundle_path=planned["bundle"],
        output_url=planned["output"],
        window_size="{{ params.window_size }}",
        stride="{{ params.stride }}",
        threshold="{{ params.threshold }}",
        iou_threshold="{{ params.iou_threshold }}",
        detect_classes="{{ params.detect_classes | join(',') }}",
        merge="{{ params.merge }}",
        geojson="{{ params.geojson }}",
        spark_master="{{ params.spark_master }}",
        route=planned["route"],
        batch_size="{{ params.batch_size }}",
    )


large_image_scoring()
