"""The window grid and its strips: every window in exactly one strip, equal work, overlap."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from landuse.windows.grid import WindowError, WindowGrid, check_window, plan_strips, strip


def test_grid_counts_and_coverage():
    grid = WindowGrid(392, 492, 32, 16)
    assert (grid.rows, grid.cols, grid.count) == (23, 29, 667)
    assert grid.covered == (384, 480)  # margins narrower than the stride are not covered
    assert grid.cell_offset == 8.0
    boxes = grid.boxes()
    assert boxes.shape == (667, 4)
    assert boxes[0].tolist() == [0, 0, 32, 32]
    assert boxes[30].tolist() == [16, 16, 48, 48]  # row 1, column 1
    assert boxes[-1].tolist() == [352, 448, 384, 480]


def test_window_as_large_as_the_image_is_one_window():
    assert WindowGrid(32, 40, 32, 16).count == 1


@pytest.mark.parametrize(
    ("size", "stride", "message"),
    [(32, 0, "stride must be a positive"), (32, -4, "stride must be a positive"),
     (32, 33, "stride 33 px is larger than the 32 px window"),
     (0, 1, "window size must be a positive"), (True, 1, "window size"),
     (32.0, 16, "window size")],
)
def test_bad_window_or_stride_is_a_clear_error(size, stride, message):
    with pytest.raises(WindowError, match=message):
        check_window(size, stride)
    with pytest.raises(WindowError, match=message):
        WindowGrid(100, 100, size, stride)


def test_window_larger_than_the_image_names_both():
    with pytest.raises(WindowError, match=r"window of 64 px is larger than image a\.tif "
                                          r"\(100 × 50 px\).*at most 50 px"):
        WindowGrid(50, 100, 64, 16, name="image a.tif")
    assert isinstance(WindowError("x"), ValueError)  # operators fail fast on it


def _check_strips(grid: WindowGrid, strips: list, slots: int) -> None:
    # Every window in exactly one strip, in order.
    assert strips[0].start == 0 and strips[-1].stop == grid.count
    assert all(a.stop == b.start for a, b in pairwise(strips))
    # Equal work: lengths differ by at most one window; a multiple of the slots in number.
    lengths = [s.windows for s in strips]
    assert max(lengths) - min(lengths) <= 1
    assert len(strips) % slots == 0 or len(strips) == grid.count
    for s in strips:
        boxes = grid.boxes(s.start, s.stop)
        assert boxes[:, 0].min() >= s.pixel_row0 and boxes[:, 2].max() == s.pixel_row1
        assert s.pixel_row1 <= grid.height
    # Consecutive strips overlap by at least size - stride rows: no seam loses a window.
    for a, b in pairwise(strips):
        assert a.pixel_row1 - b.pixel_row0 >= grid.size - grid.stride


def test_strips_partition_the_windows_with_equal_work_for_many_shapes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = int(rng.integers(1, 40))
        stride = int(rng.integers(1, size + 1))
        height = int(rng.integers(size, 400))
        width = int(rng.integers(size, 300))
        grid = WindowGrid(height, width, size, stride)
        slots = int(rng.integers(1, 13))
        max_windows = int(rng.integers(1, 2000))
        strips = plan_strips(grid, slots, max_windows=max_windows)
        assert max(s.windows for s in strips) <= max_windows or len(strips) == grid.count
        _check_strips(grid, strips, slots)


def test_seed_layout_twelve_strips_are_equal_where_pixel_strips_were_not():
    """The seed cut its image into 12 pixel strips; the last got the remainder. Here 12
    strips over a grid of 23 window rows differ by at most one window."""
    grid = WindowGrid(392, 492, 32, 16)
    strips = plan_strips(grid, 12)
    assert len(strips) == 12
    assert {s.windows for s in strips} == {55, 56}  # 667 = 7 × 55 + 5 × 56
    rows_per_pixel_strip = np.array_split(np.arange(grid.rows), 12)
    assert {len(r) * grid.cols for r in rows_per_pixel_strip} == {29, 58}  # the seed's way


def test_more_slots_than_windows_gives_one_window_per_strip():
    grid = WindowGrid(48, 48, 32, 16)  # 2 × 2 windows
    strips = plan_strips(grid, 8)
    assert [(s.start, s.stop) for s in strips] == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_strip_rejects_a_range_outside_the_grid():
    grid = WindowGrid(48, 48, 32, 16)
    with pytest.raises(WindowError, match="outside the 4 windows"):
        strip(grid, 0, 2, 5)
    with pytest.raises(WindowError, match="must be positive"):
        plan_strips(grid, 0)
