"""An independent physical reference from the imagery itself: open water per tile.

Water absorbs near-infrared light and reflects more green than NIR. A pixel is water when
its NDWI, (green - NIR) / (green + NIR) (McFeeters 1996), is positive *and* its NIR is below
the scene's Otsu threshold of NIR. NDWI alone is not enough across NAIP vintages: in the
bundled 2010 North Dakota scene bare fields also have a positive NDWI, while the dark-NIR
test holds in every year. Needs 4-band (RGBN) scenes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

from landuse.raster import RasterError, open_raster, read_checked

GREEN, NIR = 2, 4
# Pixels of a scene looked at to choose its NIR threshold (a decimated read).
_OTSU_SAMPLE = 1024


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of 8-bit values (the split maximising between-class variance), as
    an exclusive bound: values below it are the dark class (scikit-image's own threshold
    keeps values equal to it in that class, hence the + 1)."""
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(np.asarray(values, dtype=np.uint8))) + 1.0


def water_mask(green: np.ndarray, nir: np.ndarray, nir_threshold: float) -> np.ndarray:
    """Water pixels: positive NDWI and NIR below the threshold."""
    g, n = green.astype(np.float32), nir.astype(np.float32)
    return (g > n) & (n < nir_threshold)


def water_shares(tiles: pd.DataFrame) -> pd.Series:
    """Share of water pixels in each tile (0-1), by tile id; NaN for tiles without imagery.

    ``tiles`` are manifest rows (tile_id, scene_url, minx, miny, maxx, maxy).

    Raises:
        RasterError: a scene has fewer than 4 bands (no NIR) or cannot be read.
    """
    shares = pd.Series(np.nan, index=tiles["tile_id"].to_numpy(), dtype=float)
    for scene_url, rows in tiles.dropna(subset=["scene_url"]).groupby("scene_url"):
        with open_raster(str(scene_url)) as src:
            if src.count < NIR:
                raise RasterError(f"scene {scene_url} has {src.count} bands: water needs NIR "
                                  "(4-band NAIP)")
            scale = max(1, max(src.width, src.height) // _OTSU_SAMPLE)
            sample = read_checked(src, str(scene_url), indexes=NIR, out_shape=(
                src.height // scale, src.width // scale), resampling=Resampling.nearest)
            threshold = otsu_threshold(sample[sample > 0])
            for row in rows.itertuples():
                window = from_bounds(row.minx, row.miny, row.maxx, row.maxy, src.transform)
                window = window.round_offsets().round_lengths()
                pixels = read_checked(src, str(scene_url), indexes=[GREEN, NIR], window=window,
                                      boundless=True, fill_value=0)
                valid = pixels.any(axis=0)
                if valid.any():
                    mask = water_mask(pixels[0], pixels[1], threshold)
                    shares[row.tile_id] = float(mask[valid].mean())
    return shares
