"""The one place open_clip is imported: without its optional transformers text towers.

open_clip imports transformers whenever it is installed (our test and benchmark environments have it),
which adds seconds to every `xclip` start, and we never use those towers. Hiding transformers during
this one import keeps it out; transformers itself stays importable afterwards.
"""

from __future__ import annotations

import sys
from types import ModuleType


def import_open_clip() -> ModuleType:
    """The ``open_clip`` package (with its ``model``, ``transformer``, ``tokenizer`` and ``pretrained``
    submodules loaded), imported without transformers unless transformers was imported already."""
    hide = "transformers" not in sys.modules
    if hide:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # makes `import transformers` fail
    try:
        import open_clip
    finally:
        if hide:
            del sys.modules["transformers"]
    return open_clip
