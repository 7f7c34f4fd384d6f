"""The Spark scoring job for clusters: this file is what ``spark-submit`` runs.

    spark-submit --master spark://host:7077 \\
        --conf spark.pyspark.python=/opt/venv/bin/python \\
        .../landuse/scoring/job.py --source MANIFESTS --bundle BUNDLE --out OUT

The session comes from ``SparkSession.builder.getOrCreate()``, so the master, resources and
settings are whatever spark-submit (or the cluster's defaults) supply. ``--master`` is only
for runs without spark-submit: ``python -m landuse.scoring.job --master local[2] ...`` (a
``local`` master gets this project's loopback settings from :func:`landuse.spark.local_spark`).
The cluster's Python must have the landuse package installed (or receive it with
``--py-files``); the bundle folder must be readable where the driver runs, and is shipped
to the executors by Spark.

Predictions are committed as ``{out}/county=.../year=.../predictions.parquet``; a one-line
JSON summary is printed last. Exit status 0: scored (unreadable tiles are error rows, not
failures); 2: bad input (nothing to score, invalid bundle, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from landuse.scoring.spark import ScoreResult

log = logging.getLogger(__name__)
EXIT_BAD_INPUT = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's command line."""
    from landuse.models.runners import FRAMEWORKS

    parser = argparse.ArgumentParser(
        prog="landuse.scoring.job",
        description="Score image tiles with a model bundle on Spark.",
    )
    parser.add_argument("--source", required=True,
                        help="a manifest, a glob of manifests (tiles read from their scenes), "
                        "or a folder / glob of PNG chips")
    parser.add_argument("--bundle", required=True, help="model bundle folder (driver-local)")
    parser.add_argument("--out", required=True, help="storage root of the predictions")
    parser.add_argument("--framework", default="onnx", choices=FRAMEWORKS)
    parser.add_argument("--batch-size", type=_positive, default=32, help="tiles per model call")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="inference threads per Python worker (Spark runs one per core)")
    parser.add_argument("--partitions", type=_positive, default=None,
                        help="override the work-sized partition count")
    parser.add_argument("--master", default=None,
                        help="only without spark-submit, e.g. local[2]; spark-submit sets it")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def session(master: str | None = None) -> SparkSession:
    """The job's Spark session: spark-submit's (no ``master``), else one for ``master``."""
    from pyspark.sql import SparkSession

    if master and master.startswith("local"):
        from landuse.spark import local_spark

        return local_spark("landuse-scoring", master=master)
    builder = SparkSession.builder.appName("landuse-scoring")
    if master:
        builder = builder.master(master)
    return builder.getOrCreate()


def summary(result: ScoreResult, args: argparse.Namespace) -> dict[str, Any]:
    """What the job reports: counts, outputs, time and the accuracy report (if labelled)."""
    return {
        "tiles": result.tiles,
        "errors": result.errors,
        "seconds": round(result.seconds, 3),
        "framework": args.framework,
        "model_id": result.model_id,
        "out": args.out,
        "outputs": {f"{county}/{year}": url for (county, year), url in result.outputs.items()},
        "report": result.report,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns the exit status (0 scored, 2 bad input). The session is left
    running, so a caller that already had one (a test, a notebook) keeps it."""
    from landuse.scoring.spark import score_on_spark

    args = parse_args(argv)
    spark = session(args.master)
    try:
        result = score_on_spark(
            spark, args.source, args.bundle, args.out, framework=args.framework,
            batch_size=args.batch_size, threads=args.threads, partitions=args.partitions,
        )
    except ValueError as err:  # nothing to score, invalid bundle: retrying will not help
        log.error("scoring failed: %s", err)
        print(f"landuse.scoring.job: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(summary(result, args)), flush=True)
    return 0


if __name__ == "__main__":
    # Run as a file (spark-submit job.py), Python puts this file's folder first on sys.path,
    # where its sibling modules (spark.py, predict.py) would shadow top-level modules.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    status = main()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    sys.exit(status)
