"""The model computes what the official X-CLIP computes: transformers' XCLIPModel is the oracle."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from helpers import (
    SHARED,
    TINY,
    frames_for,
    hf_model_from,
    open_clip_clip,
    randomize,
    save_official,
    tiny_model,
)

from xclip_cli import load_model, save_model
from xclip_cli.errors import FrameCountError, UsageError, WeightsError
from xclip_cli.model import XCLIP, XCLIPConfig

LABELS = ["ride a bike", "swimming", "playing guitar in the rain"]


def _hf_logits(hf, frames, ids):
    with torch.no_grad():
        return hf(input_ids=ids, pixel_values=frames).logits_per_video


def _save_hf(model: XCLIP, path):
    hf = hf_model_from(model)
    hf.save_pretrained(path)
    return hf


@pytest.mark.parametrize("videos", [2, 3])
def test_tiny_transformers_parity(tmp_path, videos):
    model = tiny_model(seed=videos)
    hf = _save_hf(model, tmp_path / "hf")
    loaded = load_model(tmp_path / "hf", precision="fp32")
    frames = frames_for(TINY, videos)
    ids = loaded.tokenize(LABELS)
    with torch.no_grad():
        ours = loaded(frames, ids)
    theirs = _hf_logits(hf, frames, ids)
    assert ours.shape == (videos, len(LABELS))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    # the logits are not degenerate: the labels really get different scores
    assert ours.std() > 1e-3


def test_features_score_any_vocabulary_later():
    model = tiny_model()
    frames = frames_for(TINY, 2)
    with torch.no_grad():
        video = model.encode_video(frames)
        text = model.encode_text(model.tokenize(LABELS))
        assert video.embedding.shape == (2, TINY.embed_dim)
        assert video.prompt_tokens.shape == (2, (TINY.image_size // TINY.patch_size) ** 2, TINY.embed_dim)
        assert text.shape == (3, TINY.embed_dim)
        torch.testing.assert_close(model.logits(video, text), model(frames, model.tokenize(LABELS)))
        # scoring one video alone gives the same row as scoring it in a batch
        torch.testing.assert_close(model.logits(video[1], text), model.logits(video, text)[1:])


def test_full_base_patch32_official_layout_and_parity(tmp_path):
    """B/32 at 8 frames: exactly the official names and shapes; .pth and transformers agree."""
    expected = []
    for line in (SHARED / "research" / "xclip_b32_state_dict_keys.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            expected.append((name, tuple(int(s) for s in shape.strip("[]").split(",") if s)))
    model = randomize(XCLIP(XCLIPConfig()), seed=3).eval()
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert sorted(ours) == sorted(expected)
    assert len(ours) == 443
    pth = save_official(model, tmp_path / "k400_32_8.pth")
    del model
    loaded = load_model(pth, precision="fp32")
    frames, ids = frames_for(loaded.config, 2), loaded.tokenize(LABELS)
    with torch.no_grad():
        ours_logits = loaded(frames, ids)
    hf = hf_model_from(loaded)
    torch.testing.assert_close(ours_logits, _hf_logits(hf, frames, ids), atol=1e-4, rtol=0)
    # transformers' own folder format of the same weights loads to the same logits
    hf.save_pretrained(tmp_path / "hf")
    del hf
    again = load_model(tmp_path / "hf", precision="fp32")
    with torch.no_grad():
        torch.testing.assert_close(again(frames, ids), ours_logits, atol=1e-5, rtol=0)


def test_official_pth_loads_strictly(tmp_path):
    model = tiny_model(seed=5)
    path = save_official(model, tmp_path / "ckpt.pth")
    loaded = load_model(path, precision="fp32")
    for (k, a), (k2, b) in zip(sorted(model.state_dict().items()), sorted(loaded.state_dict().items())):
        assert k == k2 and torch.equal(a, b)
    state = model.state_dict()
    state.pop("mit.positional_embedding")
    state["unexpected.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="does not match|missing"):
        load_model(tmp_path / "bad.pth")


def test_round_trip_identical(tmp_path):
    model = tiny_model(seed=7)
    save_model(model, tmp_path / "mine", metadata={"labels": LABELS})
    loaded = load_model(tmp_path / "mine", precision="fp32")
    frames, ids = frames_for(TINY), model.tokenize(LABELS)
    with torch.no_grad():
        assert torch.equal(model(frames, ids), loaded(frames, ids))
    assert loaded.metadata == {"labels": LABELS}
    assert loaded.frames == 8 and loaded.image_size == 32
    assert loaded.mean == (123.675, 116.28, 103.53)
    assert not loaded.training


def test_tokenizer_matches_open_clip():
    import open_clip

    model = tiny_model()
    texts = [
        "ride a bike",
        "Café au lait",
        "跳舞",
        "naïve résumé — emoji 🎸",
        "x" * 0 + "dancing",
        " ".join(["word"] * 120),
    ]
    ids = model.tokenize(texts)
    reference = open_clip.get_tokenizer("ViT-B-32")(texts)
    assert ids.dtype == torch.long and ids.shape == (len(texts), 77)
    assert torch.equal(ids, reference)
    long = ids[-1]
    assert long[0] == 49406 and long[-1] == 49407  # truncated, end token kept
    assert (ids[0] == 49407).nonzero().item() == 4  # SOT ride a bike EOT


def test_frame_count_mismatch():
    model = tiny_model()
    bad = torch.randn(1, 16, 3, 32, 32)
    with pytest.raises(FrameCountError, match="8 frames per video, got 16"):
        model.encode_video(bad)
    with pytest.raises(FrameCountError, match=r"3x32x32"):
        model.encode_video(torch.randn(1, 8, 3, 48, 48))


def test_frames_argument_checked_against_checkpoint(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    with pytest.raises(FrameCountError, match="8-frame checkpoint; 16 frames"):
        load_model(tmp_path / "m", frames=16)
    save_official(tiny_model(), tmp_path / "o.pth")
    with pytest.raises(FrameCountError, match="trained with 8 frames"):
        load_model(tmp_path / "o.pth", frames=32)


def test_truncated_checkpoints(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_model(tmp_path / "m")
    pth = save_official(tiny_model(), tmp_path / "o.pth")
    pth.write_bytes(pth.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_model(pth)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_malicious_pickle_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _Evil()}, path)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_model(path)
    assert not (tmp_path / "pwned_by_pickle").exists()
    # a plain pickle file (not a torch zip) is refused the same way
    (tmp_path / "evil2.pt").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(WeightsError):
        load_model(tmp_path / "evil2.pt")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_unknown_name_and_missing_file():
    with pytest.raises(WeightsError, match="unknown model 'xclip-b32-k4000'.*xclip-b32-k400"):
        load_model("xclip-b32-k4000")
    with pytest.raises(WeightsError, match="not found"):
        load_model("./no/such/model.pth")


def test_offline_without_cache_names_repo_and_files(monkeypatch):
    with pytest.raises(WeightsError) as info:
        load_model("xclip-b32-k400")
    message = str(info.value)
    assert "microsoft/xclip-base-patch32" in message
    assert "model.safetensors" in message and "config.json" in message
    assert "k400_32_8.pth" in message and "HF_HUB_OFFLINE" in message


def test_registry_lists_18_xclip_checkpoints():
    from xclip_cli import weights

    entries = weights.registry()
    xclip = [e for e in entries.values() if e.kind == "xclip"]
    assert len(xclip) == 18
    assert entries["xclip-b32-k400"].repo == "microsoft/xclip-base-patch32"
    assert {e.frames for e in xclip} == {8, 16, 32}
    assert {e.backbone for e in entries.values()} == {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"}


def test_registry_name_resolves_to_local_copy(tmp_path, monkeypatch):
    """A registry name finds the weights in the weights folder or the hub cache, without network."""
    model = tiny_model(seed=9)
    monkeypatch.setenv("XCLIP_WEIGHTS", str(tmp_path))
    save_official(model, tmp_path / "k400_32_8.pth")
    loaded = load_model("xclip-b32-k400", precision="fp32")
    assert torch.equal(
        loaded.state_dict()["mit.positional_embedding"], model.state_dict()["mit.positional_embedding"]
    )
    assert loaded.source == "xclip-b32-k400"


def test_hub_cache_layout_is_used(tmp_path, monkeypatch):
    """Files in the standard huggingface_hub cache layout are found offline by repo id."""
    import huggingface_hub.constants as c

    model = tiny_model(seed=4)
    hf = hf_model_from(model)
    snapshot = tmp_path / "hub" / "models--someone--tiny-xclip" / "snapshots" / ("0" * 40)
    hf.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-xclip" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-xclip" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_model("someone/tiny-xclip", precision="fp32")
    frames, ids = frames_for(TINY), model.tokenize(LABELS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, ids), model(frames, ids), atol=1e-5, rtol=0)


def test_open_clip_backbone_gets_official_init(tmp_path):
    """From CLIP weights: CLIP parts kept, new modules initialised as the official code does."""
    from xclip_cli.model.xclip import build_clip

    clip = randomize(build_clip(TINY), seed=11)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = load_model(tmp_path / "clip.pt", frames=16, precision="fp32")
    assert model.frames == 16
    sd = model.state_dict()
    for key, value in clip.state_dict().items():
        assert torch.equal(sd[key], value), key
    assert torch.allclose(sd["prompts_generator.alpha"], torch.full((TINY.embed_dim,), 0.1))
    assert abs(sd["prompts_visual_proj"].std().item() - 1.0) < 0.1  # official: randn, std 1
    assert abs(sd["mit.positional_embedding"].std().item() - 0.02) < 0.003  # trunc_normal(std=0.02)
    assert torch.equal(
        sd["mit.resblocks.0.mlp.c_fc.bias"], torch.zeros_like(sd["mit.resblocks.0.mlp.c_fc.bias"])
    )


def test_open_clip_random_backbone_and_offline_tag():
    model = load_model("ViT-B-32:random", frames=16)
    assert model.frames == 16 and model.config.vision_width == 768 and model.config.patch_size == 32
    with pytest.raises(WeightsError, match="ViT-B-32.*openai"):
        load_model("ViT-B-32:openai")


@pytest.mark.parametrize("precision", ["bf16"])
def test_reduced_precision_agrees(precision, tmp_path):
    save_model(tiny_model(seed=2), tmp_path / "m")
    full = load_model(tmp_path / "m", precision="fp32")
    low = load_model(tmp_path / "m", precision=precision)
    assert low.dtype == torch.bfloat16 and low.precision == "bf16"
    frames = frames_for(TINY, 4)
    with torch.no_grad():
        a = full.encode_video(frames).embedding
        b = low.encode_video(frames).embedding.float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() >= 0.99


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_warns(native, tmp_path, monkeypatch, caplog):
    from xclip_cli import precision

    save_model(tiny_model(seed=2), tmp_path / "m")
    monkeypatch.delenv("XCLIP_PRECISION")  # left out, the precision is auto again
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: native)
    with caplog.at_level("WARNING"):
        assert load_model(tmp_path / "m", precision="bf16").precision == "bf16"
        assert "slower than fp32" in caplog.text if not native else "slower" not in caplog.text
        caplog.clear()
        # auto picks bf16 only where the CPU has bf16 units, and never warns
        assert load_model(tmp_path / "m").precision == ("bf16" if native else "fp32")
        assert load_model(tmp_path / "m", precision="fp16").precision == "bf16"  # fp16 on the CPU: bf16
    assert "fp16 is not supported well on the CPU" in caplog.text
    assert ("slower than fp32" in caplog.text) is not native


def test_precision_auto_is_the_default_and_checked(tiny_dir, monkeypatch):
    from xclip_cli import precision

    monkeypatch.delenv("XCLIP_PRECISION")  # left out, the precision is auto again
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: True)
    assert load_model(tiny_dir).precision == "bf16" == load_model(tiny_dir, precision="auto").precision
    assert load_model(tiny_dir, precision=None).precision == "bf16"
    assert load_model(tiny_dir, precision="fp32").dtype == torch.float32
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: False)
    assert load_model(tiny_dir).precision == "fp32"
    with pytest.raises(UsageError, match="unknown precision 'fp8'.*auto, fp32, bf16, fp16"):
        load_model(tiny_dir, precision="fp8")


# -- our CLIP towers are open_clip's ------------------------------------------------------------------
def test_our_clip_towers_compute_what_open_clip_computes():
    from xclip_cli.model.xclip import build_clip

    theirs = randomize(open_clip_clip(TINY), seed=13).eval()
    ours = build_clip(TINY).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # the same names and shapes, nothing else
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert torch.equal(ours.attn_mask, theirs.attn_mask)
    images = torch.randn(3, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(2))
    ids = tiny_model().tokenize([*LABELS, " ".join(["word"] * 120)])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), theirs.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(ids), theirs.encode_text(ids), atol=1e-5, rtol=0)
        for a, b in zip(ours(images, ids), theirs(images, ids)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_our_clip_draws_open_clips_random_weights_from_the_same_seed():
    from xclip_cli.model.xclip import build_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        theirs = open_clip_clip(TINY).state_dict()
        torch.manual_seed(3)
        ours = build_clip(TINY).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_xclip_takes_an_open_clip_clip_and_computes_with_our_towers():
    from xclip_cli.model.clip import VisionTransformer
    from xclip_cli.model.xclip import build_clip

    theirs = randomize(open_clip_clip(TINY), seed=17)
    ours = build_clip(TINY)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = XCLIP(TINY, theirs).eval()
        torch.manual_seed(0)
        b = XCLIP(TINY, ours).eval()
    assert isinstance(a.visual, VisionTransformer)
    assert a.visual.conv1.weight is theirs.visual.conv1.weight  # its parameters, not copies
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    frames, ids = frames_for(TINY), a.tokenize(LABELS)
    with torch.no_grad():
        assert torch.equal(a(frames, ids), b(frames, ids))


def test_loading_draws_no_random_weights(tmp_path):
    """A model whose weights all come from the file is built without random init (the RNG is untouched)
    and holds real tensors only, the causal mask buffer included."""
    save_model(tiny_model(seed=3), tmp_path / "m")
    save_official(tiny_model(seed=3), tmp_path / "o.pth")
    before = torch.get_rng_state()
    for source in (tmp_path / "m", tmp_path / "o.pth"):
        model = load_model(source, precision="fp32")
        assert torch.equal(torch.get_rng_state(), before)
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
        assert torch.equal(model.attn_mask, torch.full((77, 77), float("-inf")).triu(1))


def test_standalone_tokenizer_gives_open_clips_ids():
    """open_clip's tokenizer.py loaded on its own (no open_clip package import) tokenizes the same."""
    import open_clip.tokenizer

    from xclip_cli.model._open_clip import _standalone_tokenizer

    module = _standalone_tokenizer()
    assert module is not open_clip.tokenizer and module.__name__ != "open_clip.tokenizer"
    texts = ["ride a bike", "Café au lait", "naïve résumé — emoji 🎸", "a person " + "dancing " * 100]
    ours, theirs = module.SimpleTokenizer(), open_clip.tokenizer.SimpleTokenizer()
    ids = ours(texts)
    assert torch.equal(ids, theirs(texts))
    assert ids[-1, -1] == theirs.eot_token_id  # the long one is cut, its end token kept
    assert ours.encode(texts[1]) == theirs.encode(texts[1])
    assert ours.decode(ours.encode(texts[0])).strip() == texts[0]
