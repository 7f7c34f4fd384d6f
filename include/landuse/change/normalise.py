"""Relative radiometric normalisation of one NAIP vintage to another, per scene pair.

Two vintages of one place differ in month, sun angle, sensor and processing; compared raw,
those differences look like change everywhere. Iteratively reweighted MAD (IR-MAD; Nielsen,
IEEE TIP 2007; Canty & Nielsen, RSE 2008) finds the pixels that most probably did not
change, without labels: canonical correlation between the two scenes' bands gives MAD
variates (differences of canonical variates) whose standardised sum of squares is
chi-squared under no change; each pixel's weight is its no-change probability, and the
fit is repeated with those weights until the correlations settle. A per-band orthogonal
regression on the pixels whose no-change probability is high maps year B's values onto
year A's radiometry. It is fitted per acquisition (a scene pair), never per tile: a tile
that really changed keeps its change.

Histogram matching (:func:`match_histograms`) is kept as the fallback to compare against:
it also matches what changed, since it forces the whole distribution to agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# A pixel counts as unchanged for the regression when its no-change probability is above
# this (Canty & Nielsen 2008 use 0.95).
NO_CHANGE_PROBABILITY = 0.95
# Fewer unchanged pixels than this and the regression weights every pixel by its probability.
MIN_NO_CHANGE = 1000
# An orthogonal fit needs this correlation between the years on the unchanged pixels, and a
# gain in this range; else the band is matched by mean and spread.
MIN_CORRELATION = 0.5
GAIN_RANGE = (1 / 3, 3.0)
# IR-MAD stops before its weights rest on fewer than this share of the pixels.
MIN_EFFECTIVE_SHARE = 0.25
# Pixels of each scene looked at (a decimated read of the overlap, on a common grid).
SAMPLE_SIDE = 512


@dataclass(frozen=True)
class BandMap:
    """``a = offset + gain * b``: year B's band values on year A's radiometry."""

    gain: float
    offset: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Year-B values mapped to year A's radiometry (float)."""
        return np.asarray(self.offset + self.gain * np.asarray(values, dtype=np.float64))


@dataclass(frozen=True)
class Normalisation:
    """Per-band maps of year B onto year A, and what they were fitted on.

    Attributes:
        bands: one :class:`BandMap` per band, in band order.
        method: ``irmad`` or ``identity`` (too few unchanged pixels to fit).
        no_change_pixels: pixels the regression used.
        sample_pixels: pixels compared.
        iterations: IR-MAD iterations until the canonical correlations settled.
        correlations: the final canonical correlations (highest first).
    """

    bands: tuple[BandMap, ...]
    method: str = "irmad"
    no_change_pixels: int = 0
    sample_pixels: int = 0
    iterations: int = 0
    correlations: tuple[float, ...] = field(default_factory=tuple)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Year-B pixels, bands first ``(bands, ...)``, on year A's radiometry (float)."""
        pixels = np.asarray(pixels, dtype=np.float64)
        if pixels.shape[0] != len(self.bands):
            raise ValueError(f"pixels have {pixels.shape[0]} bands; the normalisation was "
                             f"fitted on {len(self.bands)}")
        return np.stack([m.apply(p) for m, p in zip(self.bands, pixels, strict=True)])

    def as_dict(self) -> dict[str, object]:
        """For a report: the method, the per-band gains and offsets, the pixels used."""
        return {"method": self.method,
                "gain": [round(m.gain, 4) for m in self.bands],
                "offset": [round(m.offset, 3) for m in self.bands],
                "no_change_pixels": self.no_change_pixels,
                "sample_pixels": self.sample_pixels, "iterations": self.iterations,
                "canonical_correlations": [round(c, 4) for c in self.correlations]}


def irmad_weights(x: np.ndarray, y: np.ndarray, *, max_iterations: int = 50,
                  tolerance: float = 1e-4,
                  min_share: float = MIN_EFFECTIVE_SHARE) -> tuple[np.ndarray, np.ndarray, int]:
    """No-change probability of each pixel by IR-MAD.

    Iterates until the canonical correlations settle, or stops before the weights would
    rest on fewer than ``min_share`` of the pixels (effective sample size): on farmland much
    changes between vintages, and the reweighting then collapses onto one compact, stable
    cover (open water), whose narrow range of values cannot anchor a regression.

    Args:
        x: year A, ``(pixels, bands)``.
        y: year B, ``(pixels, bands)``, the same pixels.

    Returns:
        ``(probability, correlations, iterations)``: each pixel's no-change probability
        (the chi-squared survival of its standardised MAD variates), the canonical
        correlations, and the iterations run.

    Raises:
        ValueError: the arrays differ in shape, or have fewer pixels than twice the bands.
    """
    from scipy.linalg import eigh
    from scipy.stats import chi2

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"IR-MAD needs two (pixels, bands) arrays of one shape; got "
                         f"{x.shape} and {y.shape}")
    n, bands = x.shape
    if n < 2 * bands + 2:
        raise ValueError(f"IR-MAD needs more pixels than {n} for {bands} bands")
    weights = np.ones(n)
    rho = np.zeros(bands)
    ridge = 1e-9 * np.eye(bands)
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        w = weights / weights.sum()
        mx, my = w @ x, w @ y
        dx, dy = x - mx, y - my
        sxx = (dx * w[:, None]).T @ dx + ridge
        syy = (dy * w[:, None]).T @ dy + ridge
        sxy = (dx * w[:, None]).T @ dy
        # canonical correlation: sxy syy^-1 syx a = rho^2 sxx a, with a' sxx a = 1
        rho2, a = eigh(sxy @ np.linalg.solve(syy, sxy.T), sxx)
        new_rho = np.sqrt(np.clip(rho2, 0.0, 1.0 - 1e-12))  # ascending
        b = np.linalg.solve(syy, sxy.T @ a) / np.maximum(new_rho, 1e-12)
        b /= np.sqrt(np.einsum("ij,ik,kj->j", b, syy, b))[None, :]
        b *= np.sign(np.einsum("ij,ik,kj->j", a, sxy, b))[None, :]  # positive correlation
        mad = dx @ a - dy @ b
        variance = np.maximum(2.0 * (1.0 - new_rho), 1e-12)
        z = (mad ** 2 / variance).sum(axis=1)
        new_weights = chi2.sf(z, bands)
        if new_weights.sum() ** 2 / (new_weights ** 2).sum() < min_share * n:
            break  # collapsing onto one cover: keep the last weights that spanned the scene
        done = np.abs(new_rho - rho).max() < tolerance
        weights, rho = new_weights, new_rho
        if done:
            break
    return weights, rho[::-1].copy(), iterations


def orthogonal_fit(b: np.ndarray, a: np.ndarray, weights: np.ndarray | None = None) -> BandMap:
    """Weighted orthogonal (total least squares) regression ``a = offset + gain * b``:
    errors in both years, so neither is the independent variable (Canty & Nielsen 2008)."""
    b, a = np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)
    w = np.ones_like(b) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mb, ma = w @ b, w @ a
    db, da = b - mb, a - ma
    cov = np.array([[w @ (db * db), w @ (db * da)], [w @ (db * da), w @ (da * da)]])
    _, vectors = np.linalg.eigh(cov)
    vb, va = vectors[:, -1]  # direction of the largest spread
    gain = float(va / vb) if abs(vb) > 1e-12 else 1.0
    return BandMap(gain, float(ma - gain * mb))


def fit_irmad(x: np.ndarray, y: np.ndarray, *,
              probability: float = NO_CHANGE_PROBABILITY) -> Normalisation:
    """Per-band maps of year B (``y``) onto year A (``x``) from their likely-unchanged
    pixels (``(pixels, bands)`` arrays of the same places; nodata already removed).

    The regression uses the pixels whose no-change probability exceeds ``probability``
    (all pixels weighted by it when fewer than :data:`MIN_NO_CHANGE` do). A band whose
    unchanged pixels correlate too weakly between the years for an orthogonal fit to be
    stable (correlation below :data:`MIN_CORRELATION`, or a gain outside
    :data:`GAIN_RANGE`: June against August farmland) is matched by the weighted mean and
    spread of those pixels instead (reduced major axis), and the method says so.
    """
    weights, rho, iterations = irmad_weights(x, y)
    keep = weights > probability
    w = keep.astype(np.float64) if keep.sum() >= MIN_NO_CHANGE else weights
    maps, kinds = [], []
    for k in range(x.shape[1]):
        fit = orthogonal_fit(y[:, k], x[:, k], w)
        if _correlation(y[:, k], x[:, k], w) < MIN_CORRELATION or not (
                GAIN_RANGE[0] <= fit.gain <= GAIN_RANGE[1]):
            fit = _moments_fit(y[:, k], x[:, k], w)
            kinds.append("rma")
        else:
            kinds.append("orthogonal")
        maps.append(fit)
    method = "irmad" + ("" if set(kinds) == {"orthogonal"} else
                        " (" + ", ".join(f"band {i + 1} {kind}" for i, kind in enumerate(kinds)
                                         if kind != "orthogonal") + ")")
    return Normalisation(tuple(maps), method, int(keep.sum()), len(x), iterations,
                         tuple(rho.tolist()))


def _correlation(b: np.ndarray, a: np.ndarray, w: np.ndarray) -> float:
    w = w / w.sum()
    db, da = b - w @ b, a - w @ a
    return float(w @ (db * da) / np.sqrt((w @ (db * db)) * (w @ (da * da)) + 1e-12))


def _moments_fit(b: np.ndarray, a: np.ndarray, w: np.ndarray) -> BandMap:
    """Reduced major axis: the weighted mean and spread of ``b`` matched to ``a``'s."""
    w = w / w.sum()
    mb, ma = w @ b, w @ a
    gain = float(np.sqrt((w @ (a - ma) ** 2) / max(w @ (b - mb) ** 2, 1e-12)))
    return BandMap(gain, float(ma - gain * mb))


def match_histograms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The fallback: year B's pixels (``(pixels, bands)``) histogram-matched band by band to
    year A's. It erases change as well as radiometry; shown for comparison only."""
    from skimage.exposure import match_histograms as skimage_match

    return np.asarray(skimage_match(np.asarray(y, dtype=np.float64),
                                    np.asarray(x, dtype=np.float64), channel_axis=-1))


def sample_pair(url_a: str, url_b: str, side: int = SAMPLE_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Both scenes read over their overlap onto one grid of about ``side`` × ``side`` cells
    (averaged), as ``(pixels, bands)`` arrays without nodata (a pixel zero in every band of
    either scene). Year B is warped to year A's CRS when they differ.

    Raises:
        RasterError: a scene cannot be read, the scenes do not overlap, or their band
            counts differ.
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import from_bounds

    from landuse.raster import RasterError, open_raster, read_checked

    with open_raster(url_a) as src_a, open_raster(url_b) as src_b:
        if src_a.count != src_b.count:
            raise RasterError(f"scenes {url_a} and {url_b} have {src_a.count} and "
                              f"{src_b.count} bands: normalisation compares band by band")
        b_src = (src_b if src_b.crs == src_a.crs
                 else WarpedVRT(src_b, crs=src_a.crs, resampling=Resampling.bilinear))
        left = max(src_a.bounds.left, b_src.bounds.left)
        right = min(src_a.bounds.right, b_src.bounds.right)
        bottom = max(src_a.bounds.bottom, b_src.bounds.bottom)
        top = min(src_a.bounds.top, b_src.bounds.top)
        if right <= left or top <= bottom:
            raise RasterError(f"scenes {url_a} and {url_b} do not overlap")
        scale = max(right - left, top - bottom) / side
        shape = (src_a.count, max(1, round((top - bottom) / scale)),
                 max(1, round((right - left) / scale)))
        reads = [read_checked(src, url, window=from_bounds(left, bottom, right, top,
                                                           src.transform),
                              out_shape=shape, resampling=Resampling.average)
                 for src, url in ((src_a, url_a), (b_src, url_b))]
    x, y = (r.reshape(r.shape[0], -1).T.astype(np.float64) for r in reads)
    valid = x.any(axis=1) & y.any(axis=1)
    return x[valid], y[valid]


def normalise_pair(url_a: str, url_b: str) -> Normalisation:
    """IR-MAD normalisation of scene ``url_b`` onto scene ``url_a`` (see the module)."""
    x, y = sample_pair(url_a, url_b)
    return fit_irmad(x, y)


def normalise_pairs(pairs: Sequence[tuple[str, str]], spark: SparkSession | None = None
                    ) -> dict[tuple[str, str], Normalisation]:
    """:func:`normalise_pair` of each (scene A, scene B) pair: in this process, or one Spark
    task per pair when ``spark`` is given (a county has hundreds of scenes, about a second
    each). Raises what :func:`normalise_pair` raises for the first pair that fails."""
    unique = sorted(set(pairs))
    if spark is None or len(unique) < 2:
        fits = [normalise_pair(a, b) for a, b in unique]
    else:
        sc = spark.sparkContext
        fits = sc.parallelize(unique, min(len(unique), 4 * sc.defaultParallelism)).map(
            lambda pair: normalise_pair(*pair)).collect()
    return dict(zip(unique, fits, strict=True))


# What a county-year keeps per tile (landuse.change.features computes them once) ...
RAW_STATISTICS = ("red", "green", "blue", "nir", "red_sd", "green_sd", "blue_sd", "nir_sd")
# ... and what a pair compares: the raw ones on year A's radiometry, and two indices.
STATISTICS = (*RAW_STATISTICS, "ndvi", "ndwi")


def normalised_statistics(raw: np.ndarray, normalisation: Normalisation | None = None
                          ) -> np.ndarray:
    """Raw tile statistics (each band's mean and spread, :data:`RAW_STATISTICS`) on the other
    year's radiometry (a linear map moves a mean and scales a spread exactly), with
    NDVI and NDWI of the normalised band means: ``(tiles, 10)`` in :data:`STATISTICS` order.
    ``normalisation`` None leaves the bands as they are (year A of a pair)."""
    raw = np.asarray(raw, dtype=np.float64)
    means, spreads = raw[:, :4].copy(), raw[:, 4:].copy()
    if normalisation is not None:
        for k, band in enumerate(normalisation.bands):
            means[:, k] = band.apply(means[:, k])
            spreads[:, k] *= abs(band.gain)
    red, green, nir = means[:, 0], means[:, 1], means[:, 3]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    ndwi = (green - nir) / np.maximum(green + nir, 1e-6)
    return np.column_stack([means, spreads, ndvi, ndwi])
