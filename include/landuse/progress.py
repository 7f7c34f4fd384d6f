"""Progress for long steps: a bar on a terminal, a log line every tenth of the work elsewhere."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("landuse")


def track(items: Iterable[T], *, total: int, desc: str) -> Iterator[T]:
    """Yield ``items`` while reporting progress (Airflow task logs get ~10 lines, not a bar)."""
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit="tile", leave=False)
        return
    step = max(1, total // 10)
    done = 0
    for item in items:
        yield item
        done += 1
        if done % step == 0 or done == total:
            log.info("%s: %d/%d", desc, done, total)
