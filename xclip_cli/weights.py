"""The registry of known checkpoints (``xclip_cli/registry.json``, package data) and where their files come from.

A registry name resolves, in order, to: a copy in the local weights folder (:func:`weights_dir`), either
a folder named after the entry or the official ``.pth`` file name; then the huggingface_hub cache
(``HF_HOME`` / ``HF_HUB_CACHE`` respected); then a download. Without network the download fails fast:
under ``HF_HUB_OFFLINE=1``, or after one connection attempt that fails (the process then stays offline,
so no later call waits through huggingface_hub's retries). Weight files are never committed.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import WeightsError

log = logging.getLogger(__name__)

REGISTRY_RESOURCE = "registry.json"  # inside the xclip_cli package
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_MODEL = "xclip-b32-k400"
#: The source checkout this module runs from, if any (an editable install or ``python -m`` in a clone).
_CHECKOUT = Path(__file__).resolve().parents[1]


def weights_dir() -> Path:
    """Where local weight files go: ``$XCLIP_WEIGHTS``; else the checkout's ``weights/`` folder when running
    from a source checkout; else ``$XDG_CACHE_HOME/xclip/weights`` (``~/.cache/xclip/weights``), which is
    where an installed wheel looks (site-packages is no place for user files)."""
    env = os.environ.get("XCLIP_WEIGHTS")
    if env:
        return Path(env).expanduser()
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "weights").is_dir():
        return _CHECKOUT / "weights"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "xclip" / "weights"


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
    source = resources.files(__package__).joinpath(REGISTRY_RESOURCE)
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read the model registry {source}: {err}") from None
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
        if path.is_file() or (
            path.is_dir() and any((path / f).is_file() for f in ("config.json", "xclip_config.json"))
        ):
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


_offline_reason: str | None = None


def hub_offline() -> str | None:
    """Why the Hugging Face Hub cannot be used in this process, or None when it can.

    ``HF_HUB_OFFLINE`` set: no request at all. Otherwise one HEAD request to the endpoint (no retries,
    ``HF_HUB_ETAG_TIMEOUT``); when it fails, huggingface_hub is switched to offline mode for the rest of
    the process, so later downloads (ours or open_clip's) fail at once, or use the cache, instead of
    retrying for half a minute. Any HTTP answer, even an error status, counts as reachable.
    """
    global _offline_reason
    from huggingface_hub import constants

    if _offline_reason is not None:
        return _offline_reason
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as err:  # DNS, refused, timeout, proxy, TLS: no hub for this run
        lines = str(err).strip().splitlines()
        _offline_reason = (
            f"cannot reach {constants.ENDPOINT} ({type(err).__name__}: {lines[0][:160] if lines else ''})"
        )
        log.debug("%s; huggingface_hub offline for the rest of this run", _offline_reason)
        constants.HF_HUB_OFFLINE = True
        return _offline_reason
    return None


def download_hf(repo: str, official_file: str | None = None, *, name: str | None = None) -> Path:
    """Fetch ``config.json`` and the weights of a transformers X-CLIP repo into the hub cache.

    `name` (a registry name) and `official_file` only shape the message of the WeightsError raised when
    the files are neither cached nor downloadable.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    cached = _hf_cached(repo)
    if cached is not None:
        return cached
    offline = hub_offline()
    if offline:
        raise WeightsError(_missing_message(repo, offline, official_file, name))
    try:
        config = hf_hub_download(repo, "config.json")
        for filename in HF_WEIGHT_FILES:
            try:
                hf_hub_download(repo, filename)
                return Path(config).parent
            except EntryNotFoundError:
                continue
    except Exception as err:  # auth, missing repo, a connection lost mid-way: one message
        lines = str(err).strip().splitlines()
        cause = f"download failed ({type(err).__name__}{': ' + lines[0][:200] if lines else ''})"
        raise WeightsError(_missing_message(repo, cause, official_file, name)) from None
    raise WeightsError(f"hub repo {repo} has no {' or '.join(HF_WEIGHT_FILES)}")


def _missing_message(repo: str, cause: str, official: str | None = None, name: str | None = None) -> str:
    """One line: what is missing, why it could not be fetched, and the exact places that would work."""
    root = weights_dir()
    if name:
        folder = root / name
        places = f"put config.json and model.safetensors from the Hugging Face repo {repo} in {folder}/"
        fetch = f"`hf download {repo} config.json model.safetensors --local-dir {folder}`"
    else:
        places = f"put config.json and model.safetensors from the Hugging Face repo {repo} in a folder and pass it with --model"
        fetch = f"`hf download {repo} config.json model.safetensors --local-dir DIR`"
    if official:
        places += f", or the official file {official} in {root}/"
    return (
        f"weights for {name or repo} are not available locally and cannot be downloaded: {cause}. "
        f"To use them offline, {places} (on a machine with network: {fetch}, then copy the folder)."
    )


def resolve(entry: Entry) -> Path:
    """A local path holding the entry's weights, downloading X-CLIP weights if allowed."""
    path = local_copy(entry)
    if path is not None:
        return path
    if entry.kind != "xclip":
        raise WeightsError(f"{entry.name} is an open_clip model; load it through open_clip")
    return download_hf(entry.repo, entry.official_file, name=entry.name)


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
