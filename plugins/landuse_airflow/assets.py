"""Assets that connect the pipeline's DAGs.

An Asset's URI must be fixed when DAGs are parsed, while the storage root is a run-time
Param; so each Asset is a logical name, and every event carries the concrete URLs in its
``extra`` (``url``, plus stage-specific keys). Consumers read them from
``triggering_asset_events``.
"""

from __future__ import annotations

from airflow.sdk import Asset

NAIP_DATASET = Asset(name="naip_dataset", uri="landuse://datasets/naip")
CHAMPION_MODEL = Asset(name="champion_model", uri="landuse://models/champion")
