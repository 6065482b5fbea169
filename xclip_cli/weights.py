"""The registry of known checkpoints (``weights/registry.json``) and where their files come from.

A registry name resolves, in order, to: a copy in the local weights folder (``$XCLIP_WEIGHTS``, by
default the repository's ``weights/``), either a folder named after the entry or the official ``.pth``
file name; then the huggingface_hub cache (``HF_HOME`` / ``HF_HUB_CACHE`` respected); then a download
(skipped under ``HF_HUB_OFFLINE=1``). Weight files are never committed.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import WeightsError

REGISTRY_FILE = Path(__file__).resolve().parents[1] / "weights" / "registry.json"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_MODEL = "xclip-b32-k400"


def weights_dir() -> Path:
    """Where local weight files go: ``$XCLIP_WEIGHTS`` or the repository's ``weights/`` folder."""
    return Path(os.environ.get("XCLIP_WEIGHTS", REGISTRY_FILE.parent)).expanduser()


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "xclip" or "clip"
    repo: str
    backbone: str
    frames: int | None
    official_file: str | None
    open_clip: tuple[str, str] | None
    trained_on: str | None
    reported_top1: float | None
    description: str


@lru_cache(maxsize=1)
def registry() -> dict[str, Entry]:
    """All registry entries by name, in file order."""
    try:
        doc = json.loads(REGISTRY_FILE.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read the model registry {REGISTRY_FILE}: {err}") from None
    out = {}
    for name, raw in doc["models"].items():
        out[name] = Entry(
            name=name,
            kind=raw["kind"],
            repo=raw["repo"],
            backbone=raw["backbone"],
            frames=raw.get("frames"),
            official_file=raw.get("official_file"),
            open_clip=tuple(raw["open_clip"]) if raw.get("open_clip") else None,
            trained_on=raw.get("trained_on"),
            reported_top1=raw.get("reported_top1"),
            description=raw.get("description", ""),
        )
    return out


def get_entry(name: str) -> Entry:
    entries = registry()
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise WeightsError(
            f"unknown model {name!r}: not a registry name, an existing path or a hub id (owner/name).{hint} "
            "Run `xclip models` for the list."
        )
    return entries[name]


def _hf_cached(repo: str) -> Path | None:
    """The snapshot folder of `repo` in the huggingface_hub cache if config and weights are both there."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json")
    if not isinstance(config, str):
        return None
    for name in HF_WEIGHT_FILES:
        if isinstance(try_to_load_from_cache(repo, name), str):
            return Path(config).parent
    return None


def local_copy(entry: Entry) -> Path | None:
    """A usable local copy of a registry entry (folder, official file or hub cache), or None."""
    root = weights_dir()
    candidates = [root / entry.name]
    if entry.official_file:
        candidates.append(root / entry.official_file)
    if entry.open_clip:
        candidates.append(root / f"{entry.backbone.replace('-336', '-336px')}.pt")
    for path in candidates:
        if path.is_file() or (path.is_dir() and any((path / f).is_file() for f in ("config.json", "xclip_config.json"))):
            return path
    if entry.kind == "xclip":
        return _hf_cached(entry.repo)
    return None


def is_available(entry: Entry) -> bool:
    if local_copy(entry) is not None:
        return True
    if entry.kind == "clip":
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(entry.repo, f), str)
            for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        )
    return False


def download_hf(repo: str, official_file: str | None = None) -> Path:
    """Fetch ``config.json`` and the weights of a transformers X-CLIP repo into the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    cached = _hf_cached(repo)
    if cached is not None:
        return cached
    try:
        config = hf_hub_download(repo, "config.json")
        for name in HF_WEIGHT_FILES:
            try:
                hf_hub_download(repo, name)
                return Path(config).parent
            except EntryNotFoundError:
                continue
    except Exception as err:  # offline, no network, auth, missing repo: one message
        raise WeightsError(_missing_message(repo, err, official_file)) from None
    raise WeightsError(f"hub repo {repo} has no {' or '.join(HF_WEIGHT_FILES)}")


def _missing_message(repo: str, err: BaseException, official: str | None = None) -> str:
    from huggingface_hub import constants

    offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    where = f" or put the official file {official} in {weights_dir()}/" if official else ""
    return (
        f"weights for {repo} are not available locally and could not be downloaded{offline}: "
        f"{type(err).__name__}. Needed: config.json and model.safetensors (or pytorch_model.bin) from the "
        f"Hugging Face repo {repo}. On a machine with network run `hf download {repo} config.json "
        f"model.safetensors` and copy the cache ({constants.HF_HUB_CACHE}), or place both files in "
        f"{weights_dir()}/<name>/{where}."
    )


def resolve(entry: Entry) -> Path:
    """A local path holding the entry's weights, downloading X-CLIP weights if allowed."""
    path = local_copy(entry)
    if path is not None:
        return path
    if entry.kind != "xclip":
        raise WeightsError(f"{entry.name} is an open_clip model; load it through open_clip")
    return download_hf(entry.repo, entry.official_file)


def describe(entry: Entry) -> dict[str, Any]:
    """One row of `xclip models`."""
    return {
        "name": entry.name,
        "backbone": entry.backbone,
        "frames": entry.frames,
        "trained_on": entry.trained_on or "",
        "top1": entry.reported_top1,
        "source": entry.repo,
        "available": is_available(entry),
    }
