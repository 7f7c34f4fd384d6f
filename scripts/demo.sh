#!/usr/bin/env bash
# The main job on the bundled sample, through Airflow: set up, generate the synthetic
# counties (once), then run the DAGs with `airflow dags test`: naip_dataset over the real
# Stutsman County, ND scenes and the synthetic counties, landuse_training on the dataset
# it emits, landuse_scoring of every 2010 and 2016 tile on Spark with the champion, then
# change_detection 2010 -> 2016 (maps, GeoJSON, report per county).
# Outputs go to output/, MLflow runs to mlruns/.
# Extra argument: a JSON conf for naip_dataset, e.g. scripts/demo.sh '{"years": [2016]}'
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
if ! grep -q '"truth"' sample/synthetic/counties.json 2>/dev/null; then
  landuse synth --out sample/synthetic
fi
conf="${1:-{\}}"
airflow dags reserialize >/dev/null 2>&1
run_dag() {  # dag_id conf
  local log="$AIRFLOW_HOME/demo-$1.log"
  echo "demo: running $1 through Airflow (log: $log)"
  if ! airflow dags test "$1" -c "$2" >"$log" 2>&1 || ! grep -q "state=success" "$log"; then
    tail -40 "$log"; echo "demo: $1 failed (full log: $log)"; exit 1
  fi
}
run_dag naip_dataset "$conf"
run_dag landuse_training '{}'
run_dag landuse_scoring '{"year": 2010}'
run_dag landuse_scoring '{"year": 2016}'
run_dag change_detection '{"year_b": 2016}'
python - <<'PY'
import json
from pathlib import Path

import pandas as pd

from landuse import config
from landuse.labels import CLASSES

root = Path(config.storage_root())
print(f"\nmanifests under {root / 'naip'}:")
for manifest in sorted(root.glob("naip/*/*/manifest.parquet")):
    m = pd.read_parquet(manifest)
    kind = "synthetic" if m["synthetic"].any() else "real NAIP"
    print(f"  {manifest.parent.parent.name:<20} {manifest.parent.name}  {len(m):4d} tiles, "
          f"{int(m['trainable'].sum()):3d} trainable  ({kind})")
summary = json.loads((root / "naip" / "dataset" / "summary.json").read_text())
for split in ("train", "validation"):
    s = summary[split]
    print(f"{split:<10} {s['tiles']:4d} tiles from {', '.join(s['counties'])}; per class "
          + ", ".join(f"{k} {v}" for k, v in s["per_class"].items()))
print(f"dataset: {root / 'naip' / 'dataset' / 'split.parquet'}")
champion = json.loads((root / "models" / "champion.json").read_text())
print("\ncandidates (validation accuracy, synthetic validation counties):")
for c in champion["candidates"]:
    print(f"  {c['accuracy']:.3f}  {c['bundle']}")
print(f"champion: {champion['model_id']} (6-class accuracy {champion['accuracy']:.3f}, "
      f"3-group {champion['group_accuracy']:.3f}; MLflow model 'landuse' version "
      f"{champion['version']})")
decision = champion.get("decision", {})
print(f"champion decision: {decision.get('decision')} ({decision.get('reason')}); history in "
      f"{root / 'models' / 'decisions'}")
print("\npredictions 2016 (Spark local[2], champion; 2010 scored too):")
for path in sorted(root.glob("predictions/county=*/year=2016/predictions.parquet")):
    p = pd.read_parquet(path)
    shares = p["predicted_group"].value_counts(normalize=True).round(2).to_dict()
    line = f"  {path.parent.parent.name.removeprefix('county='):<20} {len(p):4d} tiles, groups {shares}"
    scored = p[p["label"].isin(CLASSES) & p["error"].isna()]
    if len(scored):
        agree = float((scored["label"] == scored["predicted"]).mean())
        line += f", agreement with NLCD label {agree:.3f} on {len(scored)} land-use tiles"
    print(line)
print(f"predictions: {root / 'predictions'}")

print("\nchange 2010 -> 2016 (change_detection):")
planted, water = [], None
for path in sorted(root.glob("change/county=*/2010-2016/summary.json")):
    s = json.loads(path.read_text())
    line = (f"  {s['county']:<20} {s['newly_developed']:3d} newly developed of {s['compared']:3d}"
            f" tiles (reference: {s['reference']})")
    if "planted_change" in s:
        p = s["planted_change"]
        planted.append(p)
        line += f"; planted change recall {p['recall']:.2f}, precision {p['precision']:.2f}"
    w = s.get("embedding_change", {}).get("water", {})
    if "iou" in w and not s["county"].startswith("synthetic"):
        water = w
        line += (f"; embedding hotspots vs NDWI water change: precision {w['precision']:.2f},"
                 f" recall {w['recall']:.2f}, IoU {w['iou']:.2f}")
    print(line)
    print(f"      report {path.parent / 'report.md'}")
print(f"maps (COG + PNG), changes.geojson, comparison.png: {root / 'change'}/county=*/2010-2016/")
print("\nheadline:")
print(f"  champion accuracy {champion['accuracy']:.3f} (6 classes), "
      f"{champion['group_accuracy']:.3f} (3 groups) on the synthetic validation county")
if planted:
    found = sum(p["both"] for p in planted)
    print(f"  planted new development: recall {found / sum(p['reference'] for p in planted):.3f},"
          f" precision {found / max(1, sum(p['detected'] for p in planted)):.3f} "
          f"({found} of {sum(p['reference'] for p in planted)} tiles, synthetic counties)")
if water:
    print(f"  label-free change vs NDWI water change, real ND 2010->2016: precision "
          f"{water['precision']:.3f}, recall {water['recall']:.3f}, IoU {water['iou']:.3f} "
          f"(base rate {water['base_rate']:.3f})")
PY
