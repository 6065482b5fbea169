"""The one place open_clip is imported: without its optional transformers text towers.

open_clip imports transformers whenever it is installed (our test and benchmark environments have it),
which adds seconds to every `xclip` start, and we never use those towers. Hiding transformers during
this one import keeps it out; transformers itself stays importable afterwards.

Importing the package at all costs seconds more (its ``__init__`` loads timm, torchvision and with it
torch._dynamo), so it is only imported where open_clip itself is needed: to resolve a pretrained tag to
a file. The CLIP towers are our own (:mod:`.clip`), and the tokenizer is open_clip's ``tokenizer.py``
loaded on its own (:func:`open_clip_tokenizer`).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

#: The name open_clip's tokenizer.py is loaded under when the package is not imported.
_TOKENIZER_MODULE = "xclip_cli.model._open_clip_tokenizer"


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


def open_clip_tokenizer() -> ModuleType:
    """open_clip's ``tokenizer`` module (``SimpleTokenizer``, CLIP's BPE and its vocabulary file).

    ``open_clip.tokenizer`` itself when open_clip is imported already; else that one file, loaded as a
    module of its own without running open_clip's ``__init__`` (it imports only the standard library,
    ftfy, numpy, regex and torch, and finds its vocabulary next to itself).
    """
    if "open_clip" in sys.modules:
        import open_clip.tokenizer

        return open_clip.tokenizer
    return _standalone_tokenizer()


@functools.cache
def _standalone_tokenizer() -> ModuleType:
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = [Path(folder) / "tokenizer.py" for folder in folders if (Path(folder) / "tokenizer.py").is_file()]
    if not files:
        raise ModuleNotFoundError("open_clip's tokenizer.py not found: pip install open_clip_torch")
    tokenizer_spec = importlib.util.spec_from_file_location(_TOKENIZER_MODULE, files[0])
    module = importlib.util.module_from_spec(tokenizer_spec)
    sys.modules[_TOKENIZER_MODULE] = module
    try:
        tokenizer_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_TOKENIZER_MODULE]
        raise
    return module


_TOKENIZERS: dict[int, object] = {}
_TOKENIZERS_LOCK = threading.Lock()


def simple_tokenizer(context_length: int = 77):
    """open_clip's ``SimpleTokenizer`` for `context_length`, built once per process and shared by every
    model (building it takes a tenth of a second; a thread that asks meanwhile waits for it)."""
    with _TOKENIZERS_LOCK:
        if context_length not in _TOKENIZERS:
            _TOKENIZERS[context_length] = open_clip_tokenizer().SimpleTokenizer(context_length=context_length)
        return _TOKENIZERS[context_length]
