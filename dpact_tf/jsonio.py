"""Writing results as JSON: one helper for every run, metric and figure file of the project.

NumPy scalars and arrays become plain numbers and lists; the file is replaced atomically, so a reader never
sees half a file (training runs rewrite their JSON after every epoch).
"""
from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["write_json", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """``json.dump`` default: NumPy scalars -> numbers, arrays -> lists, anything else -> its string."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def write_json(path: str, payload: Any) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, default=to_jsonable)
    os.replace(tmp, path)
    return path
