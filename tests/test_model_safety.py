"""Model files never run code, bad configs fail as one-line errors, and loading is reproducible."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import stat
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import TINY, open_clip_clip, randomize, tiny_model

from xclip_cli import load_model, save_model
from xclip_cli.errors import UsageError, WeightsError
from xclip_cli.model.checkpoints import torchscript_state_dict
from xclip_cli.model.xclip import build_clip

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / "examples" / "flipping_a_pancake.mkv"
DROPPED = ("input_resolution", "context_length", "vocab_size")


@pytest.fixture(autouse=True)
def _quiet_jit():
    with (
        warnings.catch_warnings()
    ):  # torch.jit.* are deprecated in torch 2.x; the archives they write are not
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


# -- TorchScript archives ------------------------------------------------------------------------------
class _FileWritingSetstate(torch.nn.Module):
    """A scripted module whose own __setstate__ (run by torch.jit.load) creates the file `target`."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.weight = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.target, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.target = state[0]
        self.weight = state[1] + 0.0 * torch.from_file(state[0], shared=True, size=2)
        self.training = state[2]


def _setstate_payload(tmp_path: Path) -> tuple[Path, Path]:
    """A TorchScript archive whose loading by torch.jit.load creates a file; proven live here."""
    marker = tmp_path / "pwned_by_torchscript"
    archive = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(_FileWritingSetstate(str(marker))), str(archive))
    assert not marker.exists()
    torch.jit.load(str(archive))  # the payload is real: plain torch.jit.load runs it...
    assert marker.exists()
    marker.unlink()  # ...so the tests below would notice if we ran it too
    return archive, marker


def test_torchscript_setstate_payload_refused_by_load_model(tmp_path):
    archive, marker = _setstate_payload(tmp_path)
    with pytest.raises(WeightsError, match=r"refusing to load: .*would run code") as info:
        load_model(archive)
    assert info.value.exit_code == 3 and "\n" not in str(info.value)
    assert "__setstate__" in str(info.value)
    assert not marker.exists()


def test_torchscript_custom_state_refused_even_without_its_code(tmp_path):
    """The same archive with its code removed: the pickled state (a tuple, not attributes) still refuses it."""
    archive, marker = _setstate_payload(tmp_path)
    stripped = tmp_path / "stripped.pt"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            if "/code/" not in item.filename:
                dst.writestr(item, src.read(item))
    with pytest.raises(
        WeightsError,
        match=r"refusing to load: its class .*_FileWritingSetstate is restored by its own __setstate__",
    ):
        load_model(stripped)
    assert not marker.exists()


def test_torchscript_setstate_payload_refused_by_cli(tmp_path):
    archive, marker = _setstate_payload(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "xclip_cli", "tag", str(VIDEO), "--label", "x", "--model", str(archive)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("xclip: error:")]
    assert len(errors) == 1 and "refusing to load" in errors[0] and "would run code" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_torchscript_archive_with_foreign_global_refused(tmp_path, monkeypatch):
    """A TorchScript-shaped zip whose module pickle names os.system: refused, not run, not torch.load-ed."""
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(good))
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = (
                pickle.dumps(_Evil(), protocol=2) if item.filename.endswith("/data.pkl") else src.read(item)
            )
            dst.writestr(item, data)
    with pytest.raises(
        WeightsError, match=r"refusing to load: .*names the global (posix|os)\.system, .*would run code"
    ):
        load_model(bad)
    assert not (tmp_path / "pwned_by_pickle").exists()


class _Box:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


with warnings.catch_warnings():  # torch.jit.script is deprecated in torch 2.x
    warnings.simplefilter("ignore", FutureWarning)
    _Box = torch.jit.script(_Box)


class _WithPlainAttributes(torch.nn.Module):
    """Tensors that are not in a state dict: a plain tensor attribute, and one inside a script class."""

    def __init__(self) -> None:
        super().__init__()
        self.box = _Box(torch.ones(3))
        self.plain = torch.zeros(4)
        self.lin = torch.nn.Linear(2, 2, bias=False)
        self.register_buffer("running", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.box.t.sum() + self.plain.sum() + self.running.sum()


def test_torchscript_reader_keeps_only_parameters_and_buffers(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(_WithPlainAttributes()), str(path))
    reference = torch.jit.load(str(path)).state_dict()
    ours = torchscript_state_dict(path)
    assert list(ours) == list(reference) == ["running", "lin.weight"]
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def _tiny_clip_archive(tmp_path: Path, how: str, dtype: torch.dtype = torch.float32) -> tuple[Path, dict]:
    """A TorchScript archive of a tiny open_clip CLIP, shaped like OpenAI's .pt (whose state dict also holds
    input_resolution; context_length and vocab_size stay open_clip's plain ints here)."""
    clip = randomize(open_clip_clip(TINY), seed=21).eval()
    clip.register_buffer("input_resolution", torch.tensor(TINY.image_size))
    clip = clip.to(dtype)
    if how == "script":
        scripted = torch.jit.script(clip)
    else:
        image = torch.zeros(1, 3, TINY.image_size, TINY.image_size, dtype=dtype)
        text = torch.zeros(1, TINY.context_length, dtype=torch.long)
        scripted = torch.jit.trace(clip, (image, text), check_trace=False)
    path = tmp_path / f"tiny-{how}.pt"
    torch.jit.save(scripted, str(path))
    return path, clip.state_dict()


@pytest.mark.parametrize(("how", "dtype"), [("script", torch.float32), ("trace", torch.float16)])
def test_torchscript_clip_archive_loads_with_its_weights(tmp_path, monkeypatch, how, dtype):
    path, weights = _tiny_clip_archive(tmp_path, how, dtype)
    reference = dict(torch.jit.load(str(path)).state_dict())
    ours = torchscript_state_dict(path)
    # exactly what torch.jit.load gives, in its order, less OpenAI's three int buffers
    assert "input_resolution" in reference
    assert list(ours) == [k for k in reference if k not in DROPPED]
    for key, value in ours.items():
        assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be used on model files")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    model = load_model(path, frames=16, precision="fp32")
    assert model.frames == 16 and model.config.vision_width == TINY.vision_width
    state = model.state_dict()
    for key, value in weights.items():
        if key not in DROPPED:
            assert torch.equal(state[key], value.float()), key


# -- open_clip pretrained tags -------------------------------------------------------------------------
@pytest.fixture
def tiny_backbone(monkeypatch):
    """Make ``ViT-B-32`` a tiny backbone so that the open_clip paths run in milliseconds."""
    from xclip_cli.model import config

    monkeypatch.setitem(config.BACKBONES, "ViT-B-32", TINY)


def _hub_serves(monkeypatch, files: dict[str, Path]) -> list[str]:
    """open_clip's hub downloads answer from local `files` (by file name); returns the names asked for."""
    import open_clip.pretrained

    asked: list[str] = []

    def hf_hub_download(repo_id, filename, **kwargs):
        asked.append(f"{repo_id}/{filename}")
        if filename in files:
            return str(files[filename])
        raise FileNotFoundError(f"{filename} not in {repo_id}")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", hf_hub_download)
    return asked


def _no_unsafe_loaders(monkeypatch):
    import open_clip
    import open_clip.factory

    def forbidden(*args, **kwargs):
        raise AssertionError("pretrained weights must be read by our own readers")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(open_clip, "create_model", forbidden)
    monkeypatch.setattr(open_clip.factory, "load_state_dict", forbidden)


def test_open_clip_tag_prefers_safetensors_and_reads_them_ourselves(tmp_path, monkeypatch, tiny_backbone):
    from safetensors.torch import save_file

    clip = randomize(build_clip(TINY), seed=23)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(
        {"state_dict": {k: torch.zeros_like(v) for k, v in clip.state_dict().items()}}, tmp_path / "w.bin"
    )
    asked = _hub_serves(
        monkeypatch,
        {
            "open_clip_model.safetensors": tmp_path / "w.safetensors",
            "open_clip_pytorch_model.bin": tmp_path / "w.bin",
        },
    )
    _no_unsafe_loaders(monkeypatch)
    model = load_model("ViT-B-32:openai", precision="fp32")
    assert asked == ["timm/vit_base_patch32_clip_224.openai/open_clip_model.safetensors"]
    state = model.state_dict()
    for key, value in clip.state_dict().items():
        assert torch.equal(state[key], value), key
    assert model.source == "ViT-B-32:openai"


def test_open_clip_tag_with_a_pickle_payload_is_refused(tmp_path, monkeypatch, tiny_backbone):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Evil()}, tmp_path / "evil.bin")
    _hub_serves(monkeypatch, {"open_clip_pytorch_model.bin": tmp_path / "evil.bin"})
    _no_unsafe_loaders(monkeypatch)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_model("ViT-B-32:openai")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_open_clip_tag_from_openai_url_reads_torchscript_safely(tmp_path, monkeypatch, tiny_backbone):
    """Without a hub copy open_clip falls back to OpenAI's URL: a TorchScript .pt, read without running it."""
    import open_clip.pretrained

    path, weights = _tiny_clip_archive(tmp_path, "script")
    archive, marker = _setstate_payload(tmp_path)
    monkeypatch.setattr(open_clip.pretrained, "has_hf_hub", lambda necessary=False: False)
    served = {"file": path}
    monkeypatch.setattr(
        open_clip.pretrained, "download_pretrained_from_url", lambda url, cache_dir=None: str(served["file"])
    )
    _no_unsafe_loaders(monkeypatch)
    model = load_model("ViT-B-32:openai", precision="fp32")
    assert torch.equal(model.state_dict()["visual.conv1.weight"], weights["visual.conv1.weight"])
    served["file"] = archive
    with pytest.raises(WeightsError, match="would run code"):
        load_model("ViT-B-32:openai")
    assert not marker.exists()


def test_open_clip_tag_of_another_architecture_is_refused(tmp_path, monkeypatch, tiny_backbone):
    from safetensors.torch import save_file

    clip = build_clip(TINY.replace(vision_layers=3))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "w.safetensors"))
    _hub_serves(monkeypatch, {"open_clip_model.safetensors": tmp_path / "w.safetensors"})
    with pytest.raises(WeightsError, match="not a ViT-B-32 backbone"):
        load_model("ViT-B-32:openai")


def test_unknown_open_clip_tag_lists_the_known_ones():
    with pytest.raises(WeightsError, match="no pretrained tag 'nosuchtag'.*openai"):
        load_model("ViT-B-32:nosuchtag")


# -- configs that build no model -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vision_width": 100}, "vision_width"),
        ({"text_width": 96}, "text_width"),
        ({"embed_dim": 65}, "embed_dim"),
        ({"image_size": 40}, "image_size"),
        ({"frames": 0}, "frames"),
        ({"frames": 100000}, "frames"),
        ({"vision_layers": -1}, "vision_layers"),
        ({"text_layers": 2.5}, "text_layers"),
        ({"prompt_alpha": math.nan}, "prompt_alpha"),
        ({"drop_path": 1.0}, "drop_path"),
        ({"std": [0.0, 1.0, 1.0]}, "std"),
    ],
)
def test_bad_config_field_is_a_weights_error_naming_it(tmp_path, changes, field):
    with pytest.raises(WeightsError, match=field):
        TINY.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
    save_model(tiny_model(), tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "xclip_config.json").read_text())
    doc["config"].update(changes)
    (tmp_path / "m" / "xclip_config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=rf"xclip_config.json: invalid X-CLIP config: {field}") as info:
        load_model(tmp_path / "m")
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("vision_config", "hidden_size", 100, "vision_config.hidden_size"),
        ("text_config", "hidden_size", 72, "text_config.hidden_size"),
        ("vision_config", "image_size", 50, "vision_config.image_size"),
        ("vision_config", "num_frames", -8, "vision_config.num_frames"),
        ("vision_config", "num_hidden_layers", 100000, "vision_config.num_hidden_layers"),
    ],
)
def test_bad_transformers_config_names_its_field(tmp_path, section, key, value, field):
    cfg = {
        "model_type": "xclip",
        "projection_dim": 64,
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 1,
        },
        "vision_config": {
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            "num_frames": 8,
            "mit_hidden_size": 64,
            "mit_num_attention_heads": 1,
        },
        "prompt_num_attention_heads": 1,
    }
    cfg[section][key] = value
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=rf"config.json field {field}: invalid X-CLIP config") as info:
        load_model(tmp_path / "hf")
    assert info.value.exit_code == 3


def test_weights_of_another_size_name_the_parameter(tmp_path):
    # our folder: the config says 16 frames, the weights were made for 8
    save_model(tiny_model(), tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "xclip_config.json").read_text())
    doc["config"]["frames"] = 16
    (tmp_path / "m" / "xclip_config.json").write_text(json.dumps(doc))
    with pytest.raises(
        WeightsError,
        match=r"mit\.positional_embedding is \[1, 8, 64\] in the checkpoint, the architecture needs \[1, 16, 64\]",
    ):
        load_model(tmp_path / "m")
    # a CLIP state dict with one tensor of the wrong size
    state = build_clip(TINY).state_dict()
    state["ln_final.bias"] = torch.zeros(65)
    torch.save(state, tmp_path / "clip.pt")
    with pytest.raises(
        WeightsError, match=r"ln_final\.bias is \[65\] in the checkpoint, the architecture needs \[64\]"
    ) as info:
        load_model(tmp_path / "clip.pt")
    assert info.value.exit_code == 3


# -- options -------------------------------------------------------------------------------------------
def test_random_backbone_is_seeded_without_touching_the_global_rng(tiny_backbone):
    before = torch.get_rng_state()
    a = load_model("ViT-B-32:random", precision="fp32").state_dict()
    b = load_model("ViT-B-32:random", precision="fp32").state_dict()
    c = load_model("ViT-B-32:random", seed=1, precision="fp32").state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp64"}, "unknown precision 'fp64'"),
        ({"frames": 0}, "frames must be"),
        ({"frames": 100000}, "frames must be"),
    ],
)
def test_bad_option_value_is_a_usage_error(tiny_dir, kwargs, match):
    with pytest.raises(UsageError, match=match) as info:
        load_model(tiny_dir, **kwargs)
    assert info.value.exit_code == 2 and not isinstance(info.value, WeightsError)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_saved_model_files_get_the_umask_mode(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        save_model(tiny_model(), tmp_path / "m")
        save_model(tiny_model(seed=1), tmp_path / "m")  # replacing keeps working
    finally:
        os.umask(old)
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["model.safetensors", "xclip_config.json"]  # no temporary files left
    for name in files:
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == mode, name
    assert torch.equal(
        load_model(tmp_path / "m", precision="fp32").state_dict()["prompts_visual_proj"],
        tiny_model(seed=1).state_dict()["prompts_visual_proj"],
    )


def test_long_label_cut_warns_once_naming_it(caplog):
    model = tiny_model()
    long = "a person " + " ".join(f"word{i}" for i in range(100))
    with caplog.at_level(logging.WARNING, logger="xclip_cli"):
        ids = model.tokenize(["ride a bike", long])
        model.tokenize([long, "swimming"])
    warnings_ = [r for r in caplog.records if "longer than the text encoder" in r.getMessage()]
    assert len(warnings_) == 1
    message = warnings_[0].getMessage()
    assert warnings_[0].name.startswith("xclip_cli")
    assert "'a person word0 word1" in message and "77 tokens" in message and "cut after '" in message
    # the cut is shown in the label's own words: the last whole words that still fit
    tail = message.split("cut after '")[1].split("'")[0].removeprefix("...")
    kept = long[: long.index(tail) + len(tail)]
    assert len(model._tokenizer.encode(kept)) <= 75 < len(model._tokenizer.encode(long[: len(kept) + 7]))
    assert ids[1, -1] == model._tokenizer.eot_token_id
