"""The ``landuse`` command: each pipeline stage outside Airflow, for notebooks and debugging."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from landuse import counties, labels, splits, storage
from landuse.models.metrics import classes_measured
from landuse.tiling import TilingConfig, build_county
from landuse.windows.cli import add_parser as add_windows_parser


def _years(text: str) -> list[int]:
    try:
        return [int(y) for y in text.split(",") if y.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"years must be comma-separated integers: {text}") from err


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _synth(args: argparse.Namespace) -> int:
    from landuse.synthetic import make_synthetic

    made = make_synthetic(
        args.out,
        counties=args.counties,
        years=tuple(args.years),
        size_m=args.size_m,
        res_m=args.res_m,
        changes_per_county=args.changes,
        seed=args.seed,
        layout=args.layout,
    )
    for county in made:
        print(
            f"{county.name}: {len(county.scenes)} scene(s), {county.changed_parcels} planted "
            "change(s)"
        )
    print(f"registry: {storage.join(args.out, 'counties.json')}")
    return 0


def _tiles(args: argparse.Namespace) -> int:
    registry = counties.load_registry(args.registry)
    chosen = counties.select(registry, args.counties)
    config = TilingConfig(
        tile_size_m=args.tile_size_m,
        tile_px=args.tile_px,
        bands=("red", "green", "blue", "nir") if args.nir else ("red", "green", "blue"),
        purity_threshold=args.purity,
        max_nodata_fraction=args.max_nodata,
    )
    manifests = []
    for county in chosen:
        for result in build_county(county, args.years, args.root, config, nlcd=args.nlcd,
                                   nlcd_crs=args.nlcd_crs, reviews=args.reviews):
            reviewed = (f" ({result.reviewed} labelled by reviews, {result.disagreed} "
                        "disagreeing with NLCD)" if result.reviewed else "")
            print(
                f"{result.county} {result.year}: {result.tiles} tiles, {result.trainable} "
                f"trainable{reviewed} -> {result.manifest_url}"
            )
            manifests.append(result.manifest_url)
    if args.split:
        dataset = splits.build_dataset(
            manifests,
            storage.join(args.root, "naip", "dataset"),
            val_counties=args.val_counties,
            test_counties=args.test_counties,
            tiles_per_class=args.tiles_per_class,
            classes=tuple(args.classes),
            seed=args.seed,
        )
        print(json.dumps({k: dataset.summary[k] for k in splits.PARTS}, indent=2))
        print(f"dataset: {dataset.url}")
    return 0


def _chips(args: argparse.Namespace) -> int:
    from landuse.tiling import export_chips

    urls = storage.glob(args.manifest) if "*" in args.manifest else [args.manifest]
    if not urls:
        print(f"no manifests at {args.manifest}", file=sys.stderr)
        return 2
    for url in urls:
        dest = storage.join(args.dest, url.split("/")[-3], url.split("/")[-2]) if (
            args.dest and len(urls) > 1) else args.dest
        print(f"{url}: chips listed in {export_chips(url, dest, args.which)}")
    return 0


def _review(args: argparse.Namespace) -> int:
    import pandas as pd

    from landuse import review
    from landuse.change import change_url

    year_a, year_b = args.years
    url = change_url(args.root, args.county, year_a, year_b)
    if args.answers:
        n = review.import_answers(url, pd.read_csv(args.answers), args.user)
        print(f"{n} answers of {args.user} added to {storage.join(url, review.REVIEWS)}")
    figures = review.publish(url, status=args.status)
    print(review.markdown(figures).strip())
    return 0


def _train(args: argparse.Namespace) -> int:
    from landuse.models.tracking import evaluate_on_test, promote_best
    from landuse.models.training import plan_candidates, run_candidate

    options = {"epochs": args.epochs, "learning_rate": args.learning_rate,
               "weights": args.weights}
    results = []
    for candidate in plan_candidates(args.backbones, args.methods):
        for result in run_candidate(candidate, args.split, args.out, options=options,
                                    track=not args.no_track):
            print(f"{result['name']}: validation accuracy {result['accuracy']} -> "
                  f"{result['bundle']}")
            results.append(result)
    if args.promote:
        champion = promote_best(results, args.promote)
        print(f"champion: {champion['model_id']} ({champion['bundle']})")
        m = evaluate_on_test(champion, args.promote, args.split)["metrics"]
        print(f"champion on test counties {', '.join(m['counties'])}: accuracy "
              f"{m['accuracy']:.3f}" if m else "no test counties in the split: no held-out "
              "figure")
    return 0


def _import_model(args: argparse.Namespace) -> int:
    from landuse.models.importer import PRESETS, import_onnx
    from landuse.models.preprocessing import PreprocessSpec

    if args.preprocessing in PRESETS:
        spec = PRESETS[args.preprocessing]
    else:
        spec = PreprocessSpec.model_validate_json(args.preprocessing)
    if args.input_size:
        spec = spec.model_copy(update={"input_size": args.input_size})
    bundle = import_onnx(args.onnx, args.out, classes=args.classes, preprocessing=spec,
                         name=args.name, outputs_probabilities=not args.logits)
    print(f"bundle: {bundle.path} ({bundle.model_id})")
    return 0


def _score(args: argparse.Namespace) -> int:
    from landuse.models.tracking import read_champion
    from landuse.scoring.spark import score_on_spark
    from landuse.spark import local_spark

    bundle = args.bundle
    if bundle is None:
        champion = read_champion(storage.join(args.root, "models"))
        if champion is None:
            raise ValueError(f"no --bundle and no champion under {args.root}/models: train first")
        bundle = champion["bundle"]
    spark = local_spark("landuse-score", master=args.master)
    result = score_on_spark(spark, args.source, bundle, storage.join(args.root, "predictions"),
                            framework=args.framework, batch_size=args.batch_size)
    for (county, year), url in sorted(result.outputs.items()):
        print(f"{county} {year}: {url}")
    print(f"{result.tiles} tiles, {result.errors} errors, {result.seconds:.1f} s "
          f"({result.tiles / result.seconds:.1f} tiles/s on {args.master})")
    if result.report:
        print(f"accuracy {result.report['accuracy']:.3f} ({classes_measured(result.report)}), "
              f"{result.report.get('group_accuracy', float('nan')):.3f} (3 groups) on "
              f"{result.report['tiles']} labelled tiles")
    return 0


def _change(args: argparse.Namespace) -> int:
    from landuse.change.run import run_change

    registry = counties.load_registry(args.registry) if args.registry else {}
    names = args.counties or sorted(registry)
    if not names:
        raise ValueError("name --counties or a --registry to take them from")
    year_a, year_b = args.years
    for name in names:
        truth = registry[name].truth if name in registry else None
        result = run_change(args.root, name, year_a, year_b, reference=args.reference,
                            threshold=args.threshold, smooth=args.smooth,
                            centre_weight=args.centre_weight,
                            embeddings=not args.no_embeddings, fdr=args.fdr, truth=truth)
        s = result.summary
        line = (f"{name} {year_a}->{year_b}: {s['newly_developed']} newly developed of "
                f"{s['compared']} tiles (reference: {s['reference']})")
        if "planted_change" in s:
            p = s["planted_change"]
            line += f"; planted change recall {p['recall']:.3f}, precision {p['precision']:.3f}"
        water = s.get("embedding_change", {}).get("water", {})
        if "iou" in water:
            line += (f"; embedding hotspots vs water change: precision {water['precision']:.3f}"
                     f", recall {water['recall']:.3f}, IoU {water['iou']:.3f}")
        test = s.get("change_test", {})
        if "flagged" in test:
            line += (f"; {test['flagged']} tiles changed significantly at FDR {test['fdr']:g} "
                     f"(about {test['expected_false']:.1f} expected false)")
        print(line)
        print(f"  report: {storage.join(result.url, 'report.md')}")
    return 0


def _year_pair(text: str) -> tuple[int, int]:
    years = _years(text)
    if len(years) != 2:
        raise argparse.ArgumentTypeError(f"give two years A,B (e.g. 2010,2016), got {text}")
    return years[0], years[1]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from landuse.models.runners import FRAMEWORKS

    parser = argparse.ArgumentParser(
        prog="landuse",
        description="Land-use maps and change reports from NAIP aerial imagery.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="generate synthetic counties (imagery, NLCD, truth)")
    synth.add_argument("--out", required=True, help="output folder or URL")
    synth.add_argument("--counties", type=int, default=3)
    synth.add_argument("--years", type=_years, default=[2010, 2016], help="e.g. 2010,2016")
    synth.add_argument("--size-m", type=float, default=3136.0, help="scene side in metres")
    synth.add_argument("--res-m", type=float, default=2.0, help="ground sample distance")
    synth.add_argument("--changes", type=int, default=4, help="planted changes per later year")
    synth.add_argument("--layout", default=None,
                       help="a real NLCD raster whose land-cover patches become the parcels "
                            "(e.g. sample/nlcd/nlcd_2016_frederick_md.tif)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    tiles = sub.add_parser("tiles", help="tile counties into labelled tile manifests")
    tiles.add_argument("--registry", required=True, help="counties.json")
    tiles.add_argument("--counties", type=_names, default=None, help="names (default: all)")
    tiles.add_argument("--years", type=_years, required=True, help="NAIP years, e.g. 2010,2016")
    tiles.add_argument("--root", required=True, help="storage root for outputs (path or URL)")
    tiles.add_argument("--nlcd", default=None, help="NLCD source overriding the registry's")
    tiles.add_argument("--nlcd-crs", default=None,
                       help="the NLCD rasters' true CRS when the embedded one is wrong "
                       "(e.g. EPSG:5070)")
    tiles.add_argument("--no-reviews", dest="reviews", action="store_false",
                       help="label tiles by NLCD only, not also by analysts' reviewed tiles "
                       "of change reports under the root")
    tiles.add_argument("--tile-size-m", type=float, default=224.0)
    tiles.add_argument("--tile-px", type=int, default=224)
    tiles.add_argument("--nir", action="store_true", help="add NIR as a 4th channel")
    tiles.add_argument("--purity", type=float, default=1.0, help="training purity threshold")
    tiles.add_argument("--max-nodata", type=float, default=0.01)
    tiles.add_argument("--split", action="store_true", help="also write the train/val split")
    tiles.add_argument("--val-counties", type=_names, default=None)
    tiles.add_argument("--classes", type=_names, default=list(labels.CLASSES),
                       help="the classes the dataset teaches (default: the seed's six and "
                            "Water)")
    tiles.add_argument("--test-counties", type=_names, default=None,
                       help="held out of training and model choice (default: chosen by seed "
                            "when four or more counties have trainable tiles; '' for none)")
    tiles.add_argument("--tiles-per-class", type=int, default=None)
    tiles.add_argument("--seed", type=int, default=0)
    tiles.set_defaults(func=_tiles)

    chips = sub.add_parser("chips", help="export a manifest's tiles as PNG chips (training "
                           "and scoring read the scenes; chips are for tools that want images)")
    chips.add_argument("manifest", help="a manifest.parquet, or a glob of them")
    chips.add_argument("--dest", default=None,
                       help="folder for the chips (default: tiles/ beside each manifest; with "
                            "a glob, one sub-folder per county and year)")
    chips.add_argument("--which", choices=["trainable", "all"], default="trainable")
    chips.set_defaults(func=_chips)

    train = sub.add_parser("train", help="train candidates on a split, track them, promote")
    train.add_argument("--split", required=True, help="split.parquet of `landuse tiles --split`")
    train.add_argument("--out", required=True, help="local folder for the bundles")
    train.add_argument("--backbones", type=_names, default=["squeezenet"],
                       help="squeezenet,resnet50")
    train.add_argument("--methods", type=_names, default=["head"],
                       help="head,fine-tune,logreg,random-forest")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--weights", default="imagenet",
                       help="imagenet, a local weights file, or random")
    train.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    train.add_argument("--promote", metavar="MODELS_ROOT", default=None,
                       help="write the best candidate as champion under this folder")
    train.set_defaults(func=_train)

    imp = sub.add_parser("import-model", help="wrap an external ONNX model as a bundle")
    imp.add_argument("--onnx", required=True, help="the ONNX file (e.g. a CNTK export)")
    imp.add_argument("--out", required=True, help="bundle folder to write")
    imp.add_argument("--classes", type=_names, required=True, help="output classes, in order")
    imp.add_argument("--preprocessing", required=True,
                     help="a preset (cntk-alexnet, tf-resnet50) or a PreprocessSpec JSON")
    imp.add_argument("--input-size", type=int, default=None)
    imp.add_argument("--name", required=True)
    imp.add_argument("--logits", action="store_true", help="the model outputs logits")
    imp.set_defaults(func=_import_model)

    score = sub.add_parser("score", help="score tiles with a bundle on Spark")
    score.add_argument("--source", required=True,
                       help="manifest, glob of manifests, or folder/glob of PNG tiles")
    score.add_argument("--root", required=True, help="storage root; predictions go under it")
    score.add_argument("--bundle", default=None, help="bundle folder (default: the champion)")
    score.add_argument("--framework", default="onnx", choices=FRAMEWORKS,
                       help="onnx-int8: the bundle's int8 form, kept only where it beat fp32 "
                       "on the machine that built it (a bundle without it fails, saying why)")
    score.add_argument("--batch-size", type=int, default=32)
    score.add_argument("--master", default="local[2]", help="local[N] or spark://host:port")
    score.set_defaults(func=_score)

    change = sub.add_parser("change", help="change between two years: maps, GeoJSON, report")
    change.add_argument("--root", required=True, help="storage root with manifests and "
                        "predictions; reports go to ROOT/change/")
    change.add_argument("--years", type=_year_pair, required=True, help="A,B e.g. 2010,2016")
    change.add_argument("--counties", type=_names, default=None,
                        help="names (default: all of the registry)")
    change.add_argument("--registry", default=None,
                        help="counties.json (for county names and planted-change truth)")
    change.add_argument("--reference", default="auto", choices=["auto", "labels", "predictions"],
                        help="year A as predictions of the same model, or as NLCD labels "
                             "(auto: same-model predictions where year A has them)")
    change.add_argument("--threshold", type=float, default=0.5,
                        help="group probability below which a prediction is uncertain")
    change.add_argument("--smooth", action="store_true", help="3x3 plurality smoothing")
    change.add_argument("--centre-weight", type=float, default=2.0)
    change.add_argument("--no-embeddings", action="store_true",
                        help="skip the label-free change (embedding distance, the no-change "
                             "test and their water check)")
    change.add_argument("--fdr", type=float, default=0.05,
                        help="false-discovery rate of the no-change test")
    change.set_defaults(func=_change)

    rev = sub.add_parser("review", help="add answers given elsewhere to a change report's "
                         "review and publish its figures")
    rev.add_argument("--root", required=True, help="storage root of the report")
    rev.add_argument("--county", required=True)
    rev.add_argument("--years", type=_year_pair, required=True, help="A,B e.g. 2010,2016")
    rev.add_argument("--answers", default=None, help="CSV with tile_id, answer (change, "
                     "no_change, unsure) and optional class_a, class_b")
    rev.add_argument("--user", default="import", help="whose answers they are")
    rev.add_argument("--status", default="reviewed", help="the review's status in the report")
    rev.set_defaults(func=_review)

    add_windows_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``landuse`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except (ValueError, storage.StorageError) as err:
        print(f"landuse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
