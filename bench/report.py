"""Where a benchmark keeps its figures: a JSON copy of each run in bench/results/ (git-ignored)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``bench/results/<name>-<timestamp>.json``, print its path and return it."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ".gitignore").write_text("*\n")
    out = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(payload, indent=2))
    print(f"results: {out.relative_to(HERE.parent)}")
    return out
