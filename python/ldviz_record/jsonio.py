"""Run-file records as ldviz writes them: one JSON object per line, appended and flushed at
once, non-finite numbers as RUNFILE.md says (NaN -> null, +inf -> "Infinity", -inf ->
"-Infinity")."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, List, Optional


def num(x: float) -> Any:
    """A float64 value as the run file holds it."""
    x = float(x)
    if math.isfinite(x):
        return x
    if x != x:
        return None
    return "Infinity" if x > 0 else "-Infinity"


def f32(x: float) -> Any:
    """A float32 value (per-token traces): 9 significant digits, which read back as the same
    float32, without float64's 17-digit tail."""
    x = float(x)
    if math.isfinite(x):
        return float("%.9g" % x)
    return num(x)


def nums(xs: Iterable[float]) -> List[Any]:
    return [num(x) for x in xs]


def f32s(xs: Iterable[float]) -> List[Any]:
    return [f32(x) for x in xs]


def dumps(record: dict) -> str:
    """One line; refuses a non-finite number that was not converted (it would not be JSON)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class RunWriter:
    """Append-only JSON Lines writer: every record is written whole and flushed, so a killed
    job leaves a file whose complete lines all parse (only a cut last line is lost);
    `sync(...)` also asks the OS to put it on disk."""

    def __init__(self, path: str, overwrite: bool = False):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        if not overwrite and os.path.exists(path) and os.path.getsize(path) > 0:
            raise FileExistsError(
                f"{path}: run file exists (pass overwrite=True to LdvizCallback to replace it)"
            )
        self._f: Optional[Any] = open(path, "w", encoding="utf-8")

    def write(self, record: dict, sync: bool = False) -> None:
        if self._f is None:
            raise ValueError(f"{self.path}: run file already closed")
        self._f.write(dumps(record) + "\n")
        self._f.flush()
        if sync:
            try:
                os.fsync(self._f.fileno())
            except OSError:
                pass

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
