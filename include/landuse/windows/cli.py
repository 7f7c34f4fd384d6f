"""``landuse windows``: sliding-window scoring of one large image from the command line.

Registered by :func:`add_parser` on the ``landuse`` command's subparsers::

    landuse windows --image sample/naip/m_4709963_se_14_1_20160816.tif \\
        --bundle output/models/champion-bundle --out output/windows/stutsman-2016 \\
        --size 45 --stride 22 --master 'local[2]'
"""

from __future__ import annotations

import argparse
from typing import Any

from landuse.windows.fcn import ROUTES
from landuse.windows.grid import DEFAULT_SIZE, DEFAULT_STRIDE
from landuse.windows.nms import DEFAULT_IOU, DEFAULT_THRESHOLD


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _windows(args: argparse.Namespace) -> int:
    from landuse import config
    from landuse.windows.job import run_windows

    bundle = args.bundle
    if bundle is None:
        from landuse.models.tracking import models_root, read_champion

        root = args.root or config.storage_root()
        champion = read_champion(models_root(root))
        if champion is None:
            raise ValueError(f"no --bundle and no champion under {models_root(root)}: "
                             "train first or name a bundle")
        bundle = champion["bundle"]
    spark: Any = None
    if args.master != "none":
        from landuse.spark import local_spark

        spark = local_spark("landuse-windows", master=args.master)
    geojson = {"auto": None, "yes": True, "no": False}[args.geojson]
    summary = run_windows(
        args.image, bundle, args.out, size=args.size, stride=args.stride,
        threshold=args.threshold, iou_threshold=args.iou, detect_classes=args.detect,
        merge=args.merge, geojson=geojson, spark=spark, framework=args.framework,
        batch_size=args.batch_size, threads=args.threads, route=args.route,
    )
    rows, cols = summary["grid"]
    print(f"{summary['windows']} windows ({rows} × {cols}, {args.size} px every "
          f"{args.stride} px), {summary['scored']} scored in {summary['strips']} strips, "
          f"{summary['scoring_seconds']:.1f} s ({summary['windows_per_second']} windows/s, "
          f"{args.master})")
    print(f"route: {summary['route']} ({summary['route_reason']})")
    print(f"classes: {summary['class_shares']}")
    print(f"detections: {summary['detections']} after NMS ({summary['windows_merged']} windows "
          f"merged) {summary['detections_per_class']}")
    for name, url in summary["outputs"].items():
        print(f"  {name:<20} {url}")
    if not summary["georeferenced"]:
        print("(image without georeferencing: outputs are in its pixel coordinates)")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``windows`` subcommand on the ``landuse`` command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "windows", help="score one large image with a sliding window (dense map, detections)")
    parser.add_argument("--image", required=True, help="GeoTIFF or image (path or URL)")
    parser.add_argument("--out", required=True, help="output folder (path or URL)")
    parser.add_argument("--bundle", default=None,
                        help="bundle folder or URL (default: the champion)")
    parser.add_argument("--root", default=None,
                        help="storage root holding the champion (default: LANDUSE_STORAGE_ROOT)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="window side (px)")
    parser.add_argument("--stride", type=int, default=DEFAULT_STRIDE,
                        help="step between windows (px), at most --size")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="detection probability threshold")
    parser.add_argument("--iou", type=float, default=DEFAULT_IOU,
                        help="NMS merges same-class windows overlapping above this IoU")
    parser.add_argument("--detect", type=_names, default=None,
                        help="classes to detect, comma-separated (default: all)")
    parser.add_argument("--merge", choices=["weighted", "max"], default="weighted",
                        help="merged box: score-weighted mean, or the best window's")
    parser.add_argument("--geojson", choices=["auto", "yes", "no"], default="auto",
                        help="GeoJSON detections (auto: when the image is georeferenced)")
    parser.add_argument("--framework", default="onnx", choices=["onnx", "keras", "tflite"])
    parser.add_argument("--route", default="auto", choices=list(ROUTES),
                        help="fully-convolutional (one network call per band of window rows)"
                             ", per-window, or auto: the first when the network allows it")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="inference threads per worker")
    parser.add_argument("--master", default="local[2]",
                        help="local[N], spark://host:port, or none (score in this process)")
    parser.set_defaults(func=_windows)
    return parser
