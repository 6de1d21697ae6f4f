"""The JSON report every tool and benchmark can write (`--json PATH`): one place for its format."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(path: Path, report: object) -> None:
    """Write `report` as indented JSON (folders made as needed) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
