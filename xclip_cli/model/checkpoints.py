"""Checkpoint formats: detect them, read them safely, map their names onto the official layout.

Formats, all detected from the files themselves:

* ours: a folder with ``xclip_config.json`` and ``model.safetensors`` (:func:`save_model`);
* transformers: a folder with ``config.json`` (model_type ``xclip``) and ``model.safetensors`` or
  ``pytorch_model.bin``;
* official X-CLIP ``.pth``: ``{"model": state_dict, "config": yacs CfgNode, ...}``;
* a CLIP checkpoint (OpenAI TorchScript ``.pt``, or an open_clip state dict): X-CLIP's new modules are
  then initialised as the official code does.

No model file runs code. Pickles are only read with ``torch.load(weights_only=True)``, or a restricted
unpickler that admits the same globals plus the one non-tensor type official files contain (a yacs
``CfgNode``, as a plain dict stand-in). TorchScript archives are never given to ``torch.jit.load``
(which runs their code): their module pickle is read with inert stand-ins for the scripted classes and
their tensors come straight from the archive (:func:`torchscript_state_dict`). Anything else is
refused with a WeightsError ("refusing to load: ... would run code").
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import types
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import FrameCountError, WeightsError
from ..files import atomic_save, atomic_write
from .config import XCLIPConfig
from .xclip import XCLIP, build_clip

log = logging.getLogger(__name__)

OUR_CONFIG = "xclip_config.json"
OUR_WEIGHTS = "model.safetensors"
FORMAT_NAME = "xclip-cli"
FORMAT_VERSION = 1


# -- safe reading -----------------------------------------------------------------------------------
class _YacsConfig(dict):
    """Stand-in for yacs' ``CfgNode`` (a dict subclass) so official files unpickle without yacs code."""

    def __setstate__(self, state: dict) -> None:  # CfgNode pickles its attributes as state
        self.__dict__.update(state)


class _RestrictedUnpickler(pickle.Unpickler):
    """The classic restricted unpickler: only torch's weights-only globals, plus the yacs config stand-in.

    torch's own ``weights_only`` loader refuses official X-CLIP files because it only allows item
    assignment on plain dicts, and yacs' CfgNode is a dict subclass.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("yacs.config", "CfgNode"):
            return _YacsConfig
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
            return {"set": set, "frozenset": frozenset}[name]  # yacs keeps key sets in its state
        allowed = _torch_allowed_globals()
        if f"{module}.{name}" in allowed:
            return allowed[f"{module}.{name}"]
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def _torch_allowed_globals() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return _weights_only_unpickler._get_allowed_globals()


_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
    __name__="xclip_restricted_pickle",
)


def torch_load(path: Path) -> Any:
    """Read a torch pickle admitting tensors, containers and the official yacs config, nothing else.

    TorchScript archives never reach ``torch.load`` (which hands them to ``torch.jit.load``, and that
    runs the archive's code): :func:`torchscript_state_dict` reads them.
    """
    if _is_torchscript(path):
        return torchscript_state_dict(path)
    # A zip archive (every torch.save since 1.6) is memory-mapped: its tensors are read when used, and an
    # official file's optimizer state is never read at all.
    mmap = zipfile.is_zipfile(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            return torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle, mmap=mmap
            )
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: refusing to load: the file pickles objects other than tensors ({_last_line(err)}), "
            "which would run code. Only checkpoints with tensors (and the official yacs config) are loaded."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError) as err:
        raise WeightsError(f"{path}: cannot read checkpoint, truncated or corrupt ({_short(err)})") from None


def _last_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(err).__name__


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


# -- TorchScript archives, read without running them ------------------------------------------------
class _ScriptObject:
    """Inert stand-in for a TorchScript class (a scripted module): it records the state it is unpickled
    with and does nothing else. A module pickles its attributes (parameters, buffers, submodules, plain
    values) as a dict; a class with its own ``__setstate__`` pickles what that method takes, and
    ``torch.jit.load`` would run the method: such files are refused after unpickling."""

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    @property
    def state(self) -> Any:
        return self.__dict__.get("_state")


class _Refused(pickle.UnpicklingError):
    """Something in a TorchScript archive that only running code could restore (`args[0]` says what)."""


def _identity(value: Any, *_: Any) -> Any:
    return value


#: TorchScript's own pickle helpers for typed lists and dicts: they only return their argument.
_SCRIPT_HELPERS = {
    f"torch.jit._pickle.{name}": _identity
    for name in (
        "build_intlist",
        "build_doublelist",
        "build_boollist",
        "build_tensorlist",
        "restore_type_tag",
    )
}


_REBUILD_FUNCTIONS = frozenset(
    f"torch._utils.{name}"
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter")
)


def _script_globals() -> dict[str, Any]:
    """The globals a TorchScript module pickle may name: a subset of torch's weights-only allowlist
    (the plain tensor rebuild functions, storage types, dtypes) and ``collections.OrderedDict`` (the
    backward hooks of a rebuilt tensor)."""
    keep = {}
    for name, value in _torch_allowed_globals().items():
        storage = (
            name.startswith("torch.")
            and name.endswith("Storage")
            and (isinstance(value, type) or isinstance(getattr(value, "dtype", None), torch.dtype))
        )
        if (
            name in _REBUILD_FUNCTIONS
            or storage
            or isinstance(value, torch.dtype)
            or name == "collections.OrderedDict"
        ):
            keep[name] = value
    return keep


class _ScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: torch's tensor-rebuild functions and storage types, plain
    containers, and an inert :class:`_ScriptObject` for every ``__torch__`` class; nothing else."""

    def __init__(self, file: Any, load_storage: Any) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if module == "__torch__" or module.startswith("__torch__."):
            if qualname not in self._classes:
                self._classes[qualname] = type(
                    name, (_ScriptObject,), {"qualname": qualname, "__module__": __name__}
                )
            return self._classes[qualname]
        if qualname in _SCRIPT_HELPERS:
            return _SCRIPT_HELPERS[qualname]
        allowed = _script_globals()
        if qualname in allowed:
            return allowed[qualname]
        raise _Refused(f"its module pickle names the global {qualname}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unexpected persistent id {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        return self._load_storage(storage_type, key, numel)


class _ScriptClasses:
    """What the archive's code says about each class: its parameters and buffers, and whether it is a
    module. The code is read as text and never run."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self._archive = archive
        self._prefix = prefix
        self._files: dict[str, str | None] = {}

    def _source(self, module: str) -> str | None:
        if module not in self._files:
            name = f"{self._prefix}/code/{module.replace('.', '/')}.py"
            try:
                self._files[module] = self._archive.read(name).decode("utf-8", errors="replace")
            except KeyError:
                self._files[module] = None
        return self._files[module]

    def info(self, qualname: str) -> dict[str, Any] | None:
        module, _, name = qualname.rpartition(".")
        source = self._source(module)
        if source is None:
            return None
        match = re.search(rf"^class {re.escape(name)}(?:\(([\w.]*)\))?:\n((?:[ \t]+.*\n?|\n)*)", source, re.M)
        if match is None:
            return None
        body = match.group(2)

        def names(field: str) -> list[str] | None:
            found = re.search(rf"^\s+{field} = \[(.*)\]\s*$", body, re.M)
            return re.findall(r'"([^"]*)"', found.group(1)) if found else None

        return {
            "module": (match.group(1) or "").rpartition(".")[2] == "Module",
            "parameters": names("__parameters__"),
            "buffers": names("__buffers__"),
        }


_MAX_DEPTH = 200


def torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive (OpenAI's CLIP ``.pt``), as
    ``torch.jit.load(path).state_dict()`` gives them, read without loading the archive: its module
    pickle is unpickled with inert stand-ins for the scripted classes, tensors come from the archive's
    storages, and the code is never run. A file whose classes restore themselves with their own
    ``__setstate__`` (code that ``torch.jit.load`` would run) is refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            state = _read_torchscript(path, archive)
    except _Refused as err:
        raise WeightsError(
            f"{path}: refusing to load: {err.args[0]}, and loading the TorchScript archive would run code. "
            "Only archives of plain modules (as OpenAI's CLIP .pt files) are read."
        ) from None
    except WeightsError:
        raise
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        RuntimeError,
        RecursionError,
    ) as err:  # a corrupt archive fails in any of these
        raise WeightsError(
            f"{path}: cannot read TorchScript checkpoint, truncated or corrupt ({_short(err)})"
        ) from None
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    return state


def _read_torchscript(path: Path, archive: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    names = set(archive.namelist())
    prefixes = sorted(n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    prefixes = [p for p in prefixes if f"{p}/constants.pkl" in names]
    if len(prefixes) != 1:
        raise WeightsError(
            f"{path}: not a TorchScript archive (no single <name>/data.pkl with constants.pkl)"
        )
    prefix = prefixes[0]
    if f"{prefix}/byteorder" in names and archive.read(f"{prefix}/byteorder").strip() not in (b"little", b""):
        raise WeightsError(f"{path}: big-endian TorchScript archives are not supported")
    # The one hook torch.jit.load runs while loading is a class's own __setstate__: any definition of one,
    # anywhere in the archive's code, refuses the file (however the class that uses it is named or laid out).
    code = sorted(n for n in names if n.startswith(f"{prefix}/code/") and n.endswith(".py"))
    for name in code:
        if re.search(rb"\b__setstate__\b", archive.read(name)):
            raise _Refused(f"its code defines __setstate__ (in {name.removeprefix(prefix + '/code/')})")
    storages: dict[str, torch.UntypedStorage] = {}

    def load_storage(storage_type: Any, key: Any, numel: Any) -> torch.storage.TypedStorage:
        dtype = (
            getattr(storage_type, "dtype", None) if storage_type is not torch.UntypedStorage else torch.uint8
        )
        if (
            not isinstance(dtype, torch.dtype)
            or not isinstance(key, str)
            or not isinstance(numel, int)
            or numel < 0
        ):
            raise ValueError(f"a storage record that is not a tensor storage ({str(storage_type)[:60]})")
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if key not in storages:
            raw = bytearray(archive.read(f"{prefix}/data/{key}"))
            if len(raw) < nbytes:
                raise ValueError(f"storage {key} has {len(raw)} bytes, {nbytes} expected")
            data = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            storages[key] = data.untyped_storage()
        untyped = storages[key]
        if untyped.nbytes() < nbytes:
            raise ValueError(f"storage {key} is used with {nbytes} bytes, it has {untyped.nbytes()}")
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

    with archive.open(f"{prefix}/data.pkl") as fh:
        root = _ScriptUnpickler(fh, load_storage).load()
    if not isinstance(root, _ScriptObject):
        raise WeightsError(f"{path}: not a TorchScript module archive")
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out, _ScriptClasses(archive, prefix), ())
    return out


def _collect(
    obj: _ScriptObject,
    prefix: str,
    out: dict[str, torch.Tensor],
    classes: _ScriptClasses,
    parents: tuple[int, ...],
) -> None:
    """Parameters and buffers of `obj` and its submodules under dotted names, in ``state_dict`` order."""
    if len(parents) > _MAX_DEPTH:
        raise ValueError(f"modules nested deeper than {_MAX_DEPTH} levels")
    info = classes.info(obj.qualname)
    state = obj.state
    if not isinstance(state, dict):  # not a module's attributes: what a custom __setstate__ takes
        raise _Refused(
            f"its class {obj.qualname.removeprefix('__torch__.')} is restored by its own __setstate__"
        )
    if info and info["parameters"] is not None and info["buffers"] is not None:
        own = info["parameters"] + info["buffers"]
    else:  # no readable class code: every tensor attribute
        own = [k for k, v in state.items() if isinstance(v, torch.Tensor)]
    for name in own:
        value = state.get(name)
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value.detach()
    parents = (*parents, id(obj))
    for name, value in state.items():
        if isinstance(value, _ScriptObject) and id(value) not in parents:
            child = classes.info(value.qualname)
            if child is None or child["module"]:
                _collect(value, f"{prefix}{name}.", out, classes, parents)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors file or a (weights-only) torch pickle.

    safetensors files and torch zip archives are memory-mapped (copy-on-write): nothing is copied here.
    """
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(
                f"{path}: cannot read safetensors file, truncated or corrupt ({_short(err)})"
            ) from None
    data = torch_load(path)
    if isinstance(data, dict):
        for key in ("model", "state_dict", "module"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return {re.sub(r"^module\.", "", k): v for k, v in data.items()}


# -- the official layout ----------------------------------------------------------------------------
def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def infer_config(
    state: dict[str, torch.Tensor], frames: int | None = None, source: str = "checkpoint"
) -> XCLIPConfig:
    """Architecture from an official-layout (X-CLIP or CLIP) state dict, as the official build_model does."""
    try:
        conv = state["visual.conv1.weight"]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        has_mit = "mit.positional_embedding" in state
        ckpt_frames = state["mit.positional_embedding"].shape[1] if has_mit else None
        config = XCLIPConfig(
            embed_dim=state["text_projection"].shape[1],
            image_size=conv.shape[-1] * grid,
            patch_size=conv.shape[-1],
            vision_width=conv.shape[0],
            vision_layers=_count(state, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight"),
            text_width=state["ln_final.weight"].shape[0],
            text_layers=_count(state, r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight"),
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            frames=ckpt_frames or frames or 8,
            mit_layers=_count(state, r"mit\.resblocks\.(\d+)\.") if has_mit else 1,
            prompt_layers=_count(state, r"prompts_generator\.decoder\.(\d+)\.") if has_mit else 2,
        )
    except KeyError as err:
        raise WeightsError(f"{source}: not a CLIP/X-CLIP state dict: missing {err.args[0]!r}") from None
    except (IndexError, ValueError) as err:  # tensors of the wrong rank
        raise WeightsError(
            f"{source}: not a CLIP/X-CLIP state dict: unexpected tensor shapes ({_short(err)})"
        ) from None
    except WeightsError as err:  # the shapes describe no buildable model
        raise WeightsError(f"{source}: the weights' shapes describe no X-CLIP model: {err}") from None
    if ckpt_frames and frames and frames != ckpt_frames:
        raise FrameCountError(
            f"the checkpoint was trained with {ckpt_frames} frames (its temporal embedding is "
            f"[1, {ckpt_frames}, {config.embed_dim}]); {frames} frames need a {frames}-frame checkpoint"
        )
    return config


def model_from_state(
    config: XCLIPConfig,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    strict: bool = True,
    name: str | None = None,
    metadata: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> XCLIP:
    """An XCLIP with exactly these weights, in `dtype`. Built on the meta device (no time on random init)
    and given the tensors themselves: a memory-mapped file's tensors already in `dtype` are not copied.

    `source` names the weights in errors; the model records `name` (default: `source`) as its source.
    """
    with torch.device("meta"):
        model = XCLIP(config, source=name or source, metadata=metadata)
    missing, unexpected = _load_weights(model, state, source, assign=True)
    if strict and (missing or unexpected):
        raise WeightsError(f"{source}: {_describe_mismatch(missing, unexpected)}")
    if missing:  # not strict: what the state lacks must still be a real tensor
        raise WeightsError(f"{source}: {_describe_mismatch(missing, [])}")
    return model.to(dtype).eval()


_SIZE_MISMATCH = re.compile(
    r"size mismatch for ([^:\s]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) from checkpoint, "
    r"the shape in current model is (torch\.Size\(\[[^\]]*\]\))"
)


def _load_weights(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, *, assign: bool = False
):
    """``load_state_dict(strict=False)`` with shape mismatches as WeightsError naming the parameter."""
    try:
        return module.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as err:
        found = _SIZE_MISMATCH.findall(str(err))
        if not found:
            raise
        name, theirs, ours = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise WeightsError(
            f"{source}: weights do not fit the architecture: {name} is {_shape(theirs)} in the checkpoint, "
            f"the architecture needs {_shape(ours)}{more}"
        ) from None


def _shape(text: str) -> str:
    return "[" + text.removeprefix("torch.Size([").removesuffix("])") + "]"


def _describe_mismatch(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing weights (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
    return "checkpoint does not match the X-CLIP layout: " + "; ".join(parts)


def model_from_clip_state(
    state: dict[str, torch.Tensor],
    frames: int,
    *,
    source: str,
    name: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> XCLIP:
    """X-CLIP from CLIP weights, in `dtype`; the new modules get the official initialisation (from the
    global RNG). The CLIP towers are built on the meta device and given the tensors themselves.

    `source` names the weights in errors; the model records `name` (default: `source`) as its source.
    """
    config = infer_config(state, frames=frames, source=source)
    with torch.device("meta"):
        clip = build_clip(config)
    # Buffers that are not part of a state dict (the causal attn_mask, recomputed from the config) can
    # still be in a TorchScript archive, whose state dict holds every buffer.
    transient = {name for name, _ in clip.named_buffers()} - set(clip.state_dict())
    state = {k: v for k, v in state.items() if k not in transient}
    missing, unexpected = _load_weights(clip, state, source, assign=True)
    if missing or unexpected:
        raise WeightsError(
            f"{source}: not a CLIP checkpoint of a known layout: {_describe_mismatch(missing, unexpected)}"
        )
    return XCLIP(config, clip, source=name or source).to(dtype).eval()


# -- transformers layout ------------------------------------------------------------------------------
_EXACT = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "mit.positional_embedding": "mit.position_embedding",
    "prompts_visual_proj": "prompts_visual_projection",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_PREFIXES = [
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
    ("mit.resblocks.", "mit.encoder.layers."),
    ("visual.conv1.", "vision_model.embeddings.patch_embedding."),
    ("visual.ln_pre.", "vision_model.pre_layernorm."),
    ("visual.ln_post.", "vision_model.post_layernorm."),
    ("ln_final.", "text_model.final_layer_norm."),
    ("prompts_visual_ln.", "prompts_visual_layernorm."),
    ("prompts_generator.norm.", "prompts_generator.layernorm."),
]
_INNER = [
    (".ln_1.", ".layer_norm1."),
    (".ln_2.", ".layer_norm2."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
]


def hf_names(key: str) -> tuple[list[str], str]:
    """Where an official parameter lives in a transformers XCLIPModel, and how: copy, transpose or qkv.

    The rules of transformers' conversion script, read in the other direction.
    """
    if key in _EXACT:
        return [_EXACT[key]], "copy"
    if key in _TRANSPOSED:
        return [_TRANSPOSED[key]], "transpose"
    name = key
    for old, new in _PREFIXES:
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    for old, new in _INNER:
        name = name.replace(old, new)
    attn = ".message_attn." if ".message_attn." in name else ".self_attn."
    name = name.replace(".attn.out_proj.", ".self_attn.out_proj.")
    match = re.match(r"(.*)\.(?:message_)?attn\.in_proj_(weight|bias)$", name)
    if match:
        return [f"{match.group(1)}{attn}{p}_proj.{match.group(2)}" for p in "qkv"], "qkv"
    return [name], "copy"


def hf_to_official(hf_state: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """Gather the official-layout state dict (names `keys`) from a transformers state dict."""
    hf_state = {re.sub(r"^x_clip\.", "", k): v for k, v in hf_state.items()}
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key in keys:
        names, how = hf_names(key)
        if not all(n in hf_state for n in names):
            missing.extend(n for n in names if n not in hf_state)
            continue
        if how == "qkv":
            out[key] = torch.cat([hf_state[n] for n in names])
        elif how == "transpose":
            out[key] = hf_state[names[0]].t().contiguous()
        else:
            out[key] = hf_state[names[0]]
    if missing:
        raise WeightsError(
            f"transformers checkpoint lacks {len(missing)} X-CLIP weights (e.g. {', '.join(missing[:3])})"
        )
    return out


def official_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformers layout of an official-layout state dict (for export and parity checks)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        names, how = hf_names(key)
        if how == "qkv":
            for name, part in zip(names, value.chunk(3)):
                out[name] = part.contiguous()
        elif how == "transpose":
            out[names[0]] = value.t().contiguous()
        else:
            out[names[0]] = value
    return out


#: Where each of our config fields lives in a transformers ``config.json``.
_HF_FIELDS = {
    "embed_dim": "projection_dim",
    "image_size": "vision_config.image_size",
    "patch_size": "vision_config.patch_size",
    "vision_width": "vision_config.hidden_size",
    "vision_layers": "vision_config.num_hidden_layers",
    "text_width": "text_config.hidden_size",
    "text_layers": "text_config.num_hidden_layers",
    "context_length": "text_config.max_position_embeddings",
    "vocab_size": "text_config.vocab_size",
    "frames": "vision_config.num_frames",
    "mit_layers": "vision_config.mit_num_hidden_layers",
    "prompt_layers": "prompt_layers",
    "prompt_alpha": "prompt_alpha",
}


def config_from_hf(cfg: dict[str, Any], source: str) -> XCLIPConfig:
    """Our config from a transformers ``config.json`` (defaults as transformers' XCLIPConfig)."""
    text, vision = cfg.get("text_config") or {}, cfg.get("vision_config") or {}
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise WeightsError(f"{source}: config.json: text_config and vision_config must be objects")
    try:
        config = XCLIPConfig(
            embed_dim=cfg.get("projection_dim", 512),
            image_size=vision.get("image_size", 224),
            patch_size=vision.get("patch_size", 32),
            vision_width=vision.get("hidden_size", 768),
            vision_layers=vision.get("num_hidden_layers", 12),
            text_width=text.get("hidden_size", 512),
            text_layers=text.get("num_hidden_layers", 12),
            context_length=text.get("max_position_embeddings", 77),
            vocab_size=text.get("vocab_size", 49408),
            frames=vision.get("num_frames", 8),
            mit_layers=vision.get("mit_num_hidden_layers", 1),
            prompt_layers=cfg.get("prompt_layers", 2),
            prompt_alpha=cfg.get("prompt_alpha", 0.1),
        )
    except WeightsError as err:
        field = _HF_FIELDS.get(getattr(err, "field", ""), "")
        raise WeightsError(f"{source}: config.json{f' field {field}' if field else ''}: {err}") from None
    checks = {
        "text heads": (text.get("num_attention_heads", 8), config.text_heads),
        "vision heads": (vision.get("num_attention_heads", 12), config.vision_heads),
        "text MLP width": (text.get("intermediate_size", 2048), 4 * config.text_width),
        "vision MLP width": (vision.get("intermediate_size", 3072), 4 * config.vision_width),
        "MIT width": (vision.get("mit_hidden_size", 512), config.embed_dim),
    }
    for what, (theirs, ours) in checks.items():
        if theirs != ours:
            raise WeightsError(f"{source}: unsupported architecture: {what} {theirs}, X-CLIP uses {ours}")
    for what, theirs in (
        ("MIT", vision.get("mit_num_attention_heads", 8)),
        ("prompt generator", cfg.get("prompt_num_attention_heads", 8)),
    ):
        if theirs != config.mit_heads:
            log.warning(
                "%s: config.json gives the %s %d attention heads; the official X-CLIP uses width // 64 = %d, "
                "which is what we compute (transformers' own outputs differ for this checkpoint)",
                source,
                what,
                theirs,
                config.mit_heads,
            )
    return config


def load_hf_dir(
    path: Path, frames: int | None = None, *, name: str | None = None, dtype: torch.dtype = torch.float32
) -> XCLIP:
    """A transformers X-CLIP folder (config.json + weights) in `dtype`; the model's source is `name` or
    the path."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path / 'config.json'}: unreadable ({_short(err)})") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path / 'config.json'}: not a transformers config (expected a JSON object)")
    if cfg.get("model_type") not in (None, "xclip", "x_clip", "x-clip"):
        raise WeightsError(f"{path}: config.json is for model_type {cfg.get('model_type')!r}, not X-CLIP")
    config = config_from_hf(cfg, str(path))
    _check_frames(config.frames, frames, str(path))
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            hf_state = read_tensors(path / name)
            break
    else:
        raise WeightsError(
            f"{path}: config.json found but no model.safetensors or pytorch_model.bin next to it"
        )
    with torch.device("meta"):
        keys = list(XCLIP(config).state_dict())
    return model_from_state(config, hf_to_official(hf_state, keys), source=str(path), name=name, dtype=dtype)


def _check_frames(have: int, want: int | None, source: str) -> None:
    if want is not None and want != have:
        raise FrameCountError(
            f"{source} is a {have}-frame checkpoint; {want} frames need a {want}-frame checkpoint"
        )


# -- our own format -----------------------------------------------------------------------------------
def save_model(model: XCLIP, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` as a folder with ``model.safetensors`` and ``xclip_config.json``.

    Each file is replaced all or nothing and gets the mode the user's umask gives new files.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save(path / OUR_WEIGHTS, lambda name: save_file(state, name))
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "source": getattr(model, "source", None),
        "metadata": metadata or {},
    }
    atomic_write(path / OUR_CONFIG, lambda fh: fh.write(json.dumps(doc, indent=2)))
    return path


def read_our_config(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads((path / OUR_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path / OUR_CONFIG}: unreadable ({_short(err)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise WeightsError(f"{path / OUR_CONFIG}: not an xclip-cli checkpoint config")
    return doc


def load_our_dir(
    path: Path, frames: int | None = None, *, name: str | None = None, dtype: torch.dtype = torch.float32
) -> XCLIP:
    """A folder written by :func:`save_model`, in `dtype`; the model's source is `name` or the path."""
    doc = read_our_config(path)
    try:
        config = XCLIPConfig.from_dict(doc.get("config"))
    except WeightsError as err:
        raise WeightsError(f"{path / OUR_CONFIG}: {err}") from None
    except TypeError as err:  # a field of the wrong kind that the dataclass itself refuses
        raise WeightsError(f"{path / OUR_CONFIG}: invalid X-CLIP config ({_short(err)})") from None
    _check_frames(config.frames, frames, str(path))
    return model_from_state(
        config,
        read_tensors(path / OUR_WEIGHTS),
        source=str(path),
        name=name,
        metadata=doc.get("metadata") or {},
        dtype=dtype,
    )


# -- files of unknown kind --------------------------------------------------------------------------
def load_file_checkpoint(
    path: Path, frames: int | None = None, *, name: str | None = None, dtype: torch.dtype = torch.float32
) -> XCLIP:
    """An official X-CLIP ``.pth``, or a CLIP checkpoint (TorchScript ``.pt`` / state dict), in `dtype`;
    the model's source is `name` or the path."""
    state = read_tensors(path)
    if "mit.positional_embedding" in state:
        config = infer_config(state, frames=frames, source=str(path))
        return model_from_state(config, state, source=str(path), name=name, dtype=dtype)
    if "visual.conv1.weight" in state:
        return model_from_clip_state(state, frames or 8, source=str(path), name=name, dtype=dtype)
    if any(k.startswith(("vision_model.", "x_clip.vision_model.")) for k in state):
        raise WeightsError(
            f"{path}: transformers weights need their config.json: pass the folder that holds both"
        )
    raise WeightsError(f"{path}: not an X-CLIP or CLIP checkpoint (no visual.conv1.weight)")
