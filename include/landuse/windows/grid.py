"""The window grid over a large image, and the horizontal strips it is scored in.

Windows of ``size`` pixels are placed every ``stride`` pixels from the image's top-left
corner, in row-major order; window ``i`` is grid cell ``divmod(i, cols)``. A margin
narrower than the stride at the right and bottom edges is not covered (as with the seed's
sliding window); :meth:`WindowGrid.covered` says how much is.

Strips are contiguous ranges of window indices of (almost) equal length: the seed cut its
image into equal *pixel* strips, one per worker, and one worker was always left with the
remainder. Here every strip holds ``count // n`` or ``count // n + 1`` windows, so every
Spark task gets the same work to within one window. A strip reads the pixel rows of every
window row it touches, ``[first_row * stride, last_row * stride + size)``, so consecutive
strips overlap by ``size - stride`` rows or more and no window is lost or scored twice at a
seam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_SIZE = 32
DEFAULT_STRIDE = 16
# A strip's windows are held in memory by one Spark task: cap them (about 50 MB of pixels
# for 32-px RGB windows, a few MB of raster rows).
MAX_STRIP_WINDOWS = 16_384


class WindowError(ValueError):
    """Window parameters that are invalid or do not fit the image; the message names both."""


def check_window(size: int, stride: int) -> None:
    """Validate a window size and stride on their own (before any image is opened).

    Raises:
        WindowError: size below 1, stride below 1, or stride larger than the window (which
            would leave unscored gaps between windows).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise WindowError(f"window size must be a positive number of pixels, got {size!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise WindowError(f"stride must be a positive number of pixels, got {stride!r}")
    if stride > size:
        raise WindowError(
            f"stride {stride} px is larger than the {size} px window: the pixels between "
            "windows would never be scored; use a stride of at most the window size"
        )


@dataclass(frozen=True)
class WindowGrid:
    """Square windows of ``size`` px every ``stride`` px over a ``height`` × ``width`` image.

    Raises:
        WindowError: invalid size or stride, or a window larger than the image.
    """

    height: int
    width: int
    size: int = DEFAULT_SIZE
    stride: int = DEFAULT_STRIDE
    name: str = "image"

    def __post_init__(self) -> None:
        check_window(self.size, self.stride)
        if self.size > self.height or self.size > self.width:
            raise WindowError(
                f"window of {self.size} px is larger than {self.name} "
                f"({self.width} × {self.height} px): use a window of at most "
                f"{min(self.height, self.width)} px"
            )

    @property
    def rows(self) -> int:
        """Window rows."""
        return (self.height - self.size) // self.stride + 1

    @property
    def cols(self) -> int:
        """Window columns."""
        return (self.width - self.size) // self.stride + 1

    @property
    def count(self) -> int:
        """Windows in the grid."""
        return self.rows * self.cols

    @property
    def covered(self) -> tuple[int, int]:
        """Pixel rows and columns covered by at least one window (from the top-left)."""
        return ((self.rows - 1) * self.stride + self.size,
                (self.cols - 1) * self.stride + self.size)

    @property
    def cell_offset(self) -> float:
        """Where, in image pixels, the dense map's first cell starts on both axes.

        The dense map has one cell per window: the ``stride`` × ``stride`` square at the
        window's centre, so cells tile the covered area without gaps or overlap.
        """
        return (self.size - self.stride) / 2

    def boxes(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Pixel boxes ``(row0, col0, row1, col1)`` of windows ``start`` to ``stop`` (int64)."""
        stop = self.count if stop is None else stop
        rows, cols = np.divmod(np.arange(start, stop, dtype=np.int64), self.cols)
        row0, col0 = rows * self.stride, cols * self.stride
        return np.stack([row0, col0, row0 + self.size, col0 + self.size], axis=1)


@dataclass(frozen=True)
class Strip:
    """Windows ``start`` to ``stop`` (row-major indices) and the pixel rows they need."""

    index: int
    start: int
    stop: int
    first_row: int  # window rows touched, inclusive
    last_row: int
    pixel_row0: int  # pixel rows to read: [pixel_row0, pixel_row1)
    pixel_row1: int

    @property
    def windows(self) -> int:
        """Windows in the strip."""
        return self.stop - self.start


def strip(grid: WindowGrid, index: int, start: int, stop: int) -> Strip:
    """The strip of windows ``start`` to ``stop`` and the pixel rows it must read."""
    if not 0 <= start < stop <= grid.count:
        raise WindowError(f"strip [{start}, {stop}) is outside the {grid.count} windows")
    first, last = start // grid.cols, (stop - 1) // grid.cols
    return Strip(index, start, stop, first, last, first * grid.stride,
                 last * grid.stride + grid.size)


def plan_strips(
    grid: WindowGrid, slots: int = 1, *, max_windows: int = MAX_STRIP_WINDOWS
) -> list[Strip]:
    """Cut the grid into strips of equal work for ``slots`` parallel tasks.

    The number of strips is the smallest multiple of ``slots`` that keeps each strip at
    most ``max_windows`` windows (so every task slot gets the same number of strips), but
    never more than there are windows. Strip lengths differ by at most one window.

    Raises:
        WindowError: ``slots`` or ``max_windows`` below 1.
    """
    if slots < 1 or max_windows < 1:
        raise WindowError(f"slots ({slots}) and max_windows ({max_windows}) must be positive")
    rounds = math.ceil(grid.count / (slots * max_windows))
    n = min(grid.count, slots * rounds)
    bounds = [grid.count * k // n for k in range(n + 1)]
    return [strip(grid, k, bounds[k], bounds[k + 1]) for k in range(n)]
