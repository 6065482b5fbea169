"""xclip-cli: tag, evaluate and fine-tune video libraries with X-CLIP.

The Python API and the command line are the same functions::

    from xclip_cli import load_model, tag
    model = load_model("xclip-b32-k400")
    for row in tag(["clips/"], labels=["ride a bike", "swim"]):
        print(row["path"], row["label"], row["score"])

Heavy modules (torch, open_clip) load on first use, so ``xclip --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "XCLIP": "xclip_cli.model",
    "XCLIPConfig": "xclip_cli.model",
    "VideoFeatures": "xclip_cli.model",
    "load_model": "xclip_cli.model",
    "save_model": "xclip_cli.model",
    "tag": "xclip_cli.tagging",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'xclip_cli' has no attribute {name!r}")
