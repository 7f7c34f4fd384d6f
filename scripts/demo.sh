#!/usr/bin/env bash
# The main job on the bundled sample, through Airflow: set up, generate the synthetic
# counties (once), then run the DAGs with `airflow dags test`: naip_dataset over the real
# Stutsman County, ND scenes and the synthetic counties, landuse_training on the dataset
# it emits, then landuse_scoring of every 2016 tile on Spark with the champion.
# Outputs go to output/, MLflow runs to mlruns/.
# Extra argument: a JSON conf for naip_dataset, e.g. scripts/demo.sh '{"years": [2016]}'
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
if [ ! -f sample/synthetic/counties.json ]; then
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
run_dag landuse_scoring '{"year": 2016}'
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
print("\npredictions 2016 (Spark local[2], champion):")
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
PY
