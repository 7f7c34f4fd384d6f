"""Assets that connect the pipeline's DAGs.

An Asset's URI must be fixed when DAGs are parsed, while the storage root is a run-time
Param; so each Asset is a logical name, and every event carries the concrete URLs in its
``extra`` (``url``, plus stage-specific keys). Consumers read them from
``triggering_asset_events``.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

NAIP_DATASET = Asset(name="naip_dataset", uri="landuse://datasets/naip")
CHAMPION_MODEL = Asset(name="champion_model", uri="landuse://models/champion")
# Assets made per county and year are emitted through these aliases (their URIs are only
# known at run time); DAGs schedule on the alias.
PREDICTIONS = AssetAlias("landuse_predictions")
CHANGE_REPORTS = AssetAlias("landuse_change")


def predictions_asset(county: str, year: int) -> Asset:
    """The Asset of one county-year's committed predictions."""
    return Asset(name=f"predictions_{county}_{year}", uri=f"landuse://predictions/{county}/{year}")


def change_asset(county: str, year_a: int, year_b: int) -> Asset:
    """The Asset of one county's change report between two years."""
    return Asset(name=f"change_{county}_{year_a}_{year_b}",
                 uri=f"landuse://change/{county}/{year_a}-{year_b}")
