#!/usr/bin/env bash
# The main job on the bundled sample, through Airflow: set up, generate the synthetic
# counties (once), then run the naip_dataset DAG with `airflow dags test` over the real
# Stutsman County, ND scenes and the synthetic counties. Outputs go to output/.
# Extra arguments: a JSON conf for the run, e.g. scripts/demo.sh '{"years": [2016]}'
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
if [ ! -f sample/synthetic/counties.json ]; then
  landuse synth --out sample/synthetic
fi
conf="${1:-{\}}"
airflow dags reserialize >/dev/null 2>&1
log="$AIRFLOW_HOME/demo-naip_dataset.log"
echo "demo: running naip_dataset through Airflow (log: $log)"
if ! airflow dags test naip_dataset -c "$conf" >"$log" 2>&1; then
  tail -40 "$log"; echo "demo: naip_dataset failed (full log: $log)"; exit 1
fi
grep -q "state=success" "$log" || { tail -40 "$log"; echo "demo: the run did not succeed"; exit 1; }
python - <<'PY'
import json
from pathlib import Path

import pandas as pd

from landuse import config

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
PY
