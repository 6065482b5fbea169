"""Tests for xclip_cli.video: decoding real third-party clips, sampling, transforms (CPU, fast)."""

from __future__ import annotations

import ast
import csv
import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xclip_cli.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoError,
    VideoInfo,
    decode,
    decord_backend,
    ffmpeg_backend,
    normalize,
    probe,
    range_to_frames,
    read_frames,
    segment_indices,
    short_side_for,
    test_views,  # importing it must not make pytest collect it as a test
    train_transform,
    view_indices,
    windows,
)
from xclip_cli.video.base import Plan

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared/data/videos"
MANIFEST = VIDEOS / "manifest.csv"
needs_videos = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"test clips not found at {VIDEOS}")
ROWS = list(csv.DictReader(MANIFEST.open())) if MANIFEST.is_file() else []

# Clips that must fail, and the start of the cause their message must give.
EXPECTED_ERRORS = {
    "torchcodec/nasa_13013.mp4.audio.mp3": "no video stream",
    "decord/corrupted.mp4": "cannot decode video (Invalid NAL unit size",
}


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    # These tensors are small; on a busy 2-core CI box, torch's intra-op threads only contend
    # (elementwise ops measured 10-50x slower with 2 threads than with 1).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip(name: str) -> Path:
    return VIDEOS / name


@pytest.fixture(params=["decord", "ffmpeg"])
def backend(request, monkeypatch):
    """Run a test with decord first (the default) and again with the ffmpeg path only."""
    if request.param == "decord" and decode.decord is None:
        pytest.skip("decord is not installed")
    if request.param == "ffmpeg":
        monkeypatch.setattr(decode, "decord", None)
    return request.param


def ffmpeg_raw_frames(path: Path, width: int, height: int) -> np.ndarray:
    """All frames as stored, without rotation: an independent reference for orientation tests."""
    args = [ffmpeg_backend._ffmpeg_exe(), "-v", "error", "-noautorotate", "-i", str(path)]
    args += ["-frames:v", "3", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(args, capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


# --------------------------------------------------------------------------------------------- decoding


@needs_videos
@pytest.mark.parametrize("row", ROWS, ids=[r["path"] for r in ROWS])
def test_every_manifest_clip_decodes_or_fails_with_a_cause(row):
    path = clip(row["path"])
    if row["path"] in EXPECTED_ERRORS:
        with pytest.raises(VideoError) as err:
            info = probe(path)
            read_frames(path, segment_indices(info.num_frames, 8), short_side=256, info=info)
        assert err.value.reason.startswith(EXPECTED_ERRORS[row["path"]])
        assert str(err.value) == f"{path}: {err.value.reason}"
        return

    info = probe(path)
    assert info.num_frames > 0 and info.fps > 0
    assert info.duration == pytest.approx(info.num_frames / info.fps)
    if row["path"] != "torchcodec/nasa_13013.mp4":  # see test_multi_stream_file_uses_the_best_stream
        assert abs(info.num_frames - int(row["num_frames"])) <= 1
        assert info.fps == pytest.approx(float(row["fps"]), rel=1e-3)
        stored = (int(row["width"]), int(row["height"]))
        assert (info.width, info.height) == (stored if info.rotation in (0, 180) else stored[::-1])

    frames = read_frames(path, segment_indices(info.num_frames, 8), short_side=256, info=info)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == 8 and frames.shape[3] == 3
    height, width = frames.shape[1:3]
    assert min(height, width) == min(256, info.width, info.height)
    assert width / height == pytest.approx(info.width / info.height, rel=0.02)
    if row["path"] == "decord/unordered.mov":
        assert (frames == 255).all()  # genuinely four white frames
    elif min(height, width) >= 8:
        assert frames.std() > 1.0  # real picture content, not a blank buffer


@needs_videos
def test_damaged_packet_is_an_error_in_both_backends(backend):
    # decord/corrupted.mp4 has one broken packet. ffmpeg could conceal it, but damaged frames are
    # not something to classify silently: both backends refuse, naming the decoder's complaint.
    path = clip("decord/corrupted.mp4")
    with pytest.raises(VideoError, match="Invalid NAL unit size"):
        read_frames(path, segment_indices(50, 8), short_side=128)


@needs_videos
def test_unreadable_inputs_raise_video_error(tmp_path, backend):
    data = clip("mmaction2/test.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"  # mdat first, so the cut loses the moov atom
    truncated.write_bytes(data[:20000])
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(bytes(range(256)) * 64)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")

    with pytest.raises(VideoError, match="moov atom not found") as err:
        read_frames(truncated, [0])
    assert err.value.path == str(truncated)
    with pytest.raises(VideoError, match="cannot"):
        probe(garbage)
    for target, cause in [
        (empty, "empty file"),
        (tmp_path, "not a regular file"),
        (tmp_path / "x.mp4", "not found"),
    ]:
        with pytest.raises(VideoError) as err:
            read_frames(target, [0])
        assert err.value.reason == cause


@needs_videos
@pytest.mark.parametrize(
    "name, rotation",
    [
        ("decord/video_0.mov", 0),
        ("decord/video_90.mov", 90),
        ("decord/video_180.mov", 180),
        ("decord/video_270.mov", 270),
        ("moviepy/fire2.mp4", 180),
    ],
)
def test_rotated_clips_come_out_upright(name, rotation, backend):
    path = clip(name)
    info = probe(path)
    assert info.rotation == rotation
    stored_w, stored_h = (568, 320) if name.startswith("decord") else (1280, 720)
    assert (info.width, info.height) == (
        (stored_w, stored_h) if rotation in (0, 180) else (stored_h, stored_w)
    )
    frames = read_frames(path, [0, 2], info=info)
    raw = ffmpeg_raw_frames(path, stored_w, stored_h)[[0, 2]]
    # Display rotation is clockwise; np.rot90 turns anticlockwise for positive k.
    upright = np.rot90(raw, k=-rotation // 90, axes=(1, 2))
    assert frames.shape == upright.shape
    assert np.abs(frames.astype(int) - upright).mean() < 1.0
    if rotation:  # and not the stored orientation (guards against a decord that ignores the flag)
        assert frames.shape != raw.shape or np.abs(frames.astype(int) - raw).mean() > 10


@needs_videos
# Without passthrough, ffmpeg fills the gaps between selected frames with duplicates (and part_0.mp4
# gets an extra frame): every one of these then fails.
@pytest.mark.parametrize("name", ["mmaction2/test.mp4", "moviepy/chaplin.mp4", "mmaction2/part_0.mp4"])
def test_decord_and_ffmpeg_give_the_same_frames(name, monkeypatch):
    if decode.decord is None:
        pytest.skip("decord is not installed")
    path = clip(name)
    info = probe(path)
    indices = np.concatenate([segment_indices(info.num_frames, 8), np.arange(40, 46)])  # a run, too
    full = read_frames(path, indices, info=info)
    small = read_frames(path, indices, short_side=128, info=info)
    monkeypatch.setattr(decode, "decord", None)
    full_ff = read_frames(path, indices, info=info)
    small_ff = read_frames(path, indices, short_side=128, info=info)
    assert full.shape == full_ff.shape and small.shape == small_ff.shape
    assert np.abs(full.astype(int) - full_ff).mean() < 0.5  # same decoder, same frames: ~bit-exact
    assert np.abs(small.astype(int) - small_ff).mean() < 2.0  # two scalers: small differences


@needs_videos
def test_indices_repeat_unsorted_and_past_the_end(backend):
    path = clip("mmaction2/test.mp4")  # 300 frames
    got = read_frames(path, [120, 7, 120, 10_000, 299, 0])
    singles = np.stack([read_frames(path, [i])[0] for i in (120, 7, 299, 0)])
    np.testing.assert_array_equal(got[[0, 1, 4, 5]], singles)
    np.testing.assert_array_equal(got[2], got[0])
    np.testing.assert_array_equal(got[3], singles[2])  # clamped to the last frame
    assert not np.array_equal(singles[0], singles[1])
    with pytest.raises(ValueError):
        read_frames(path, [])
    with pytest.raises(ValueError):
        read_frames(path, [-1])


@needs_videos
def test_ffmpeg_clamps_to_the_last_decodable_frame_when_the_header_overstates(monkeypatch):
    monkeypatch.setattr(decode, "decord", None)
    path = clip("mmaction2/part_0.mp4")  # 32 frames
    info = probe(path)
    liar = dataclasses.replace(info, num_frames=info.num_frames + 40)
    frames = read_frames(path, [info.num_frames + 30, 3, info.num_frames + 10], info=liar)
    reference = read_frames(path, [info.num_frames - 1, 3], info=info)
    np.testing.assert_array_equal(frames[[0, 1, 2]], reference[[0, 1, 0]])


@needs_videos
def test_ffmpeg_probe_matches_decord_probe(monkeypatch):
    if decode.decord is None:
        pytest.skip("decord is not installed")
    names = ["mmaction2/test.mp4", "decord/video_90.mov", "torchvision/SOX5yA1l24A.mp4"]
    by_decord = [probe(clip(n)) for n in names]
    monkeypatch.setattr(decode, "decord", None)
    for name, expected in zip(names, by_decord):
        got = probe(clip(name))
        assert (got.num_frames, got.width, got.height, got.rotation) == (
            expected.num_frames,
            expected.width,
            expected.height,
            expected.rotation,
        )
        assert got.fps == pytest.approx(expected.fps, rel=1e-4)  # 29.97 printed, 30000/1001 restored


@needs_videos
def test_ffmpeg_is_killed_after_its_time_limit(monkeypatch):
    monkeypatch.setattr(decode, "decord", None)
    monkeypatch.setattr(ffmpeg_backend, "FFMPEG_TIMEOUT_S", 0.001)  # no ffmpeg even starts that fast
    with pytest.raises(VideoError) as err:
        probe(clip("mmaction2/test.mp4"))
    assert err.value.reason == "timed out after 0 s"


@needs_videos
def test_multi_stream_file_uses_the_best_stream(backend):
    # nasa_13013.mp4 has a 320x180 25 fps stream and a 480x270 29.97 fps one; decord and ffmpeg both
    # pick the larger, so probe and decode must agree on it.
    path = clip("torchcodec/nasa_13013.mp4")
    info = probe(path)
    assert (info.width, info.height, info.num_frames) == (480, 270, 390)
    assert read_frames(path, [0, 389], info=info).shape == (2, 270, 480, 3)


@needs_videos
def test_bundled_ffmpeg_binary_works_without_ffprobe(monkeypatch):
    # pip-only installs have imageio-ffmpeg's binary (a different ffmpeg version) and no ffprobe.
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setattr(decode, "decord", None)
    monkeypatch.setattr(ffmpeg_backend, "_ffmpeg_exe", imageio_ffmpeg.get_ffmpeg_exe)
    info = probe(clip("moviepy/no_duration.webm"))
    assert (info.num_frames, info.width, info.height) == (74, 1280, 720)
    assert info.fps == pytest.approx(15000 / 1001)
    assert probe(clip("decord/video_270.mov")).rotation == 270
    assert read_frames(clip("kinetics_i3d/v_CricketShot_g04_c01_rgb.gif"), [0, 78]).shape == (2, 224, 224, 3)
    with pytest.raises(VideoError, match="no video stream"):
        probe(clip("torchcodec/nasa_13013.mp4.audio.mp3"))


def test_video_error_survives_pickling_and_one_argument_form():
    import pickle

    err = pickle.loads(pickle.dumps(VideoError("a/b.mp4", "no video stream")))
    assert (str(err), err.path, err.reason) == ("a/b.mp4: no video stream", "a/b.mp4", "no video stream")
    assert str(VideoError("a/b.mp4: timed out after 60 s")) == "a/b.mp4: timed out after 60 s"


# --------------------------------------------------------------------------------------------- sampling


def test_segment_indices_test_mode_matches_mmaction2():
    np.testing.assert_array_equal(segment_indices(300, 8), [18, 56, 93, 131, 168, 206, 243, 281])
    # 5 frames, 8 segments: avg 0.625, centres 0.3125, 0.9375, 1.5625, ... truncated
    np.testing.assert_array_equal(segment_indices(5, 8), [0, 0, 1, 2, 2, 3, 4, 4])
    np.testing.assert_array_equal(segment_indices(1, 4), [0, 0, 0, 0])
    assert segment_indices(300, 8).dtype == np.int64
    with pytest.raises(ValueError):
        segment_indices(0, 8)


def test_segment_indices_train_mode():
    draws = np.stack([segment_indices(300, 8, train=True, rng=np.random.default_rng(s)) for s in range(200)])
    low = np.arange(8) * 37  # avg_interval = 300 // 8 = 37: frame i*37 + randint(37)
    assert (draws >= low).all() and (draws <= low + 36).all()
    assert len(np.unique(draws[:, 0])) > 20  # random inside the segment, not a fixed offset
    same = [segment_indices(300, 8, train=True, rng=np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    # Shorter than T: mmaction2 rounds arange(T) * n / T (numpy rounds 2.5 to 2).
    np.testing.assert_array_equal(segment_indices(5, 8, train=True), [0, 1, 1, 2, 2, 3, 4, 4])


def test_view_indices():
    np.testing.assert_array_equal(view_indices(300, 8, 1)[0], segment_indices(300, 8))
    np.testing.assert_array_equal(view_indices(7, 16, 1)[0], segment_indices(7, 16))
    views = view_indices(300, 8, 4)
    assert views.shape == (4, 8)
    # Clip c sits at (c + 0.5) / 4 of each 37.5-frame segment.
    np.testing.assert_array_equal(views[:, 0], [4, 14, 23, 32])
    np.testing.assert_array_equal(views[:, 1], [42, 51, 60, 70])
    np.testing.assert_array_equal(views, view_indices(300, 8, 4))
    assert view_indices(3, 8, 4).max() == 2


def test_windows():
    assert windows(30.0, 10.0) == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    assert windows(35.0, 10.0)[-1] == (30.0, 35.0)
    assert windows(30.0, 10.0, 5.0) == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0), (20.0, 30.0)]
    # 30.003 s (a soundtrack's 3 ms): no 3 ms window at the end, the last one absorbs it.
    assert windows(30.003, 10.0) == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.003)]
    assert windows(4.0, 10.0) == [(0.0, 4.0)]
    assert windows(25.0, 5.0, 10.0) == [(0.0, 5.0), (10.0, 15.0), (20.0, 25.0)]
    assert windows(0.0, 10.0) == []
    many = windows(3600.0, 0.1)
    assert len(many) == 36000 and many[-1][1] == 3600.0
    with pytest.raises(ValueError):
        windows(30.0, 0.0)


def test_range_to_frames():
    info = VideoInfo(path="v.mp4", num_frames=300, fps=30.0, duration=10.0, width=340, height=256, rotation=0)
    assert range_to_frames(info, None, None) == (0, 300)
    assert range_to_frames(info, 2.0, 4.0) == (60, 60)
    assert range_to_frames(info, 0.1, 0.2) == (3, 3)  # 0.1 * 30 is 3.0000000000000004
    assert range_to_frames(info, 9.0, 50.0) == (270, 30)
    assert range_to_frames(info, 5.0, None) == (150, 150)
    assert range_to_frames(info, 1.01, 1.02) == (30, 1)  # no frame starts inside: the one on screen
    assert range_to_frames(info, 9.99, None) == (299, 1)
    assert range_to_frames(info, -1.0, 0.5) == (0, 15)
    ntsc = dataclasses.replace(info, fps=30000 / 1001)
    assert range_to_frames(ntsc, 0.0, 10.0) == (0, 300)
    for start, end in [(12.0, 15.0), (10.0, None), (4.0, 3.0), (None, 0.0)]:
        with pytest.raises(VideoError):
            range_to_frames(info, start, end)
    # Every frame lands in exactly one window.
    spans = [range_to_frames(info, s, e) for s, e in windows(info.duration, 3.0)]
    assert spans == [(0, 90), (90, 90), (180, 90), (270, 30)]
    assert [f for first, n in spans for f in range(first, first + n)] == list(range(300))


# ------------------------------------------------------------------------------------------- transforms


def test_short_side_for():
    assert short_side_for(224) == 256 and short_side_for(336) == 384
    assert short_side_for(224, 3) == 224
    with pytest.raises(ValueError):
        short_side_for(224, 2)


def test_normalize_mean_colour_is_zero():
    frames = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(normalize(frames), torch.zeros(2, 3, 4, 4))
    white = normalize(torch.full((1, 3, 1, 1), 255.0))
    assert torch.allclose(white.flatten(), (255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))


def test_test_views_shapes_and_values():
    colour = np.array([124, 116, 104], np.uint8)
    frames = np.broadcast_to(colour, (4, 360, 640, 3))
    one = test_views(frames, image_size=224)
    three = test_views(frames, image_size=224, crops=3)
    assert one.shape == (1, 4, 3, 224, 224) and one.dtype == torch.float32
    assert three.shape == (3, 4, 3, 224, 224)
    assert one.is_contiguous() and three.is_contiguous()  # callers reshape to [views * N, 3, S, S]
    expected = (torch.tensor(colour, dtype=torch.float32) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    assert torch.allclose(one, expected.view(1, 1, 3, 1, 1).expand_as(one), atol=1e-5)
    portrait = torch.zeros(2, 500, 300, 3, dtype=torch.uint8)
    assert test_views(portrait, image_size=224, crops=3).shape == (3, 2, 3, 224, 224)


def test_test_views_crop_positions():
    # Red channel = column index: crops can be located from their first column.
    width = 400
    frame = np.zeros((1, 224, width, 3), np.uint8)
    frame[..., 0] = np.arange(width, dtype=np.uint8)[None, None, :] // 2
    three = test_views(frame, image_size=224, crops=3, mean=(0, 0, 0), std=(1, 1, 1))
    firsts = three[:, 0, 0, 0, 0].tolist()
    assert firsts == [0.0, 176 // 2, 88 // 2]  # ThreeCrop order: left, right (2 * 88), middle (88)
    one = test_views(frame, image_size=200, mean=(0, 0, 0), std=(1, 1, 1))  # short side -> 228
    assert one.shape == (1, 1, 3, 200, 200)
    # Resized to 228 x 407, centre crop starts at (407 - 200) // 2 = 103 -> original column ~ 103 * 400/407.
    assert abs(one[0, 0, 0, 100, 0].item() - 103 * width / 407 / 2) <= 1.5


def test_train_transform_deterministic_per_seed():
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 240, 320, 3), dtype=np.uint8))

    def run(seed: int) -> torch.Tensor:
        return train_transform(frames, image_size=224, generator=torch.Generator().manual_seed(seed))

    first = run(1)
    assert first.shape == (8, 3, 224, 224) and first.dtype == torch.float32 and first.is_contiguous()
    assert torch.equal(first, run(1))
    assert not torch.equal(first, run(2))


def test_train_transform_augmentations_follow_the_official_recipe():
    # Identical frames show which randomness is per clip (crop, flip, coin flips) and which is per
    # frame (jitter factors). With p(jitter)=0.8 and p(grey)=0.2, 40 seeds show every case.
    base = np.random.default_rng(1).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    frames = np.repeat(base, 4, axis=0)
    identical = jittered = grey = 0
    for seed in range(40):
        out = train_transform(
            frames,
            image_size=112,
            generator=torch.Generator().manual_seed(seed),
            mean=(0, 0, 0),
            std=(1, 1, 1),
        )
        assert out.shape == (4, 3, 112, 112) and out.min() >= 0 and out.max() <= 255
        same_frames = all(torch.equal(out[0], out[i]) for i in range(1, 4))
        identical += same_frames
        jittered += not same_frames
        grey += bool(torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2]))
    assert identical > 0 and jittered > 0 and grey > 0
    assert 20 <= jittered <= 39  # about 80 % of clips


def test_transforms_reject_non_uint8():
    with pytest.raises(ValueError):
        test_views(np.zeros((2, 32, 32, 3), np.float32), image_size=16)
    with pytest.raises(ValueError):
        train_transform(np.zeros((2, 32, 32), np.uint8), image_size=16, generator=torch.Generator())


def test_video_package_does_not_import_the_model():
    # Checked in the source: importing xclip_cli.video also runs the parent package's __init__,
    # which may legitimately import the model.
    package = Path(decode.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert "model" not in name.split("."), f"{source.name} imports {name}"


# ------------------------------------------------------------------ torch-only transforms = torchvision's


def _torchvision_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    return F.resize(x, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)


RESIZES = [
    ((3, 240, 320), (256, 341)),  # upscale, landscape
    ((3, 720, 1280), (256, 455)),  # downscale, landscape
    ((2, 500, 300), (373, 224)),  # downscale, portrait
    ((1, 37, 53), (224, 320)),  # upscale a tiny single frame (torchvision's channels-last restride)
    ((1, 1080, 1920), (224, 224)),  # downscale, aspect changed
    ((4, 256, 256), (224, 224)),
]


@pytest.mark.parametrize("native", [True, False], ids=["uint8-kernel", "float-fallback"])
@pytest.mark.parametrize("shape, size", RESIZES, ids=[f"{s[1]}x{s[2]}->{t[0]}x{t[1]}" for s, t in RESIZES])
def test_resize_is_torchvisions_bit_for_bit(shape, size, native, monkeypatch):
    from torchvision.transforms.v2.functional import _geometry

    from xclip_cli.video import transforms

    # Both code paths of torchvision's resize_image: its uint8 kernel (AVX2/AVX512/arm64 CPUs) and its
    # float fallback elsewhere; ours must take the same one on the same CPU.
    monkeypatch.setattr(transforms, "_NATIVE_UINT8_RESIZE", native)
    monkeypatch.setattr(_geometry, "_do_native_uint8_resize_on_cpu", lambda interpolation: native)
    n, h, w = shape
    frames = np.random.default_rng(h * w).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    x = transforms._as_uint8_nchw(frames)  # the channels-last view test_views works on
    ours = transforms._resize(x, *size)
    assert ours.dtype == torch.uint8 and ours.shape == (n, 3, *size)
    assert torch.equal(ours, _torchvision_resize(x, *size))
    crop = x[..., h // 8 : h - h // 8, w // 8 :]  # a crop of it, as train_transform resizes
    assert torch.equal(transforms._resize(crop, *size), _torchvision_resize(crop, *size))


def test_resize_short_side_rounds_like_before():
    from xclip_cli.video import transforms

    for h, w, side, expected in [
        (240, 320, 256, (256, 341)),
        (500, 300, 224, (373, 224)),
        (720, 1280, 256, (256, 455)),
    ]:
        x = transforms._as_uint8_nchw(np.zeros((1, h, w, 3), np.uint8))
        assert tuple(transforms._resize_short_side(x, side).shape[-2:]) == expected
    x = transforms._as_uint8_nchw(np.zeros((1, 256, 300, 3), np.uint8))
    assert transforms._resize_short_side(x, 256) is x  # already decoded at that size: no work


def test_grayscale_is_torchvisions_bit_for_bit():
    import torchvision.transforms.v2.functional as F

    from xclip_cli.video import transforms

    x = torch.rand(4, 3, 17, 23, generator=torch.Generator().manual_seed(0)) * 255
    assert torch.equal(transforms._grayscale(x), F.rgb_to_grayscale(x))
    assert torch.equal(transforms._grayscale(x).expand_as(x), F.rgb_to_grayscale(x, num_output_channels=3))


def _reference_test_views(frames: np.ndarray, image_size: int, crops: int) -> torch.Tensor:
    """test_views as it was: torchvision's resize, a stack of crops, then float and normalise."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    height, width = x.shape[-2:]
    side = short_side_for(image_size, crops)
    if min(height, width) != side:
        scale = side / min(height, width)
        new_h = side if height <= width else int(height * scale + 0.5)
        new_w = side if width < height else int(width * scale + 0.5)
        x = _torchvision_resize(x, new_h, new_w)
        height, width = new_h, new_w
    if crops == 1:
        offsets = [((height - image_size) // 2, (width - image_size) // 2)]
    elif height == image_size:
        step = (width - image_size) // 2
        offsets = [(0, 0), (0, 2 * step), (0, step)]
    else:
        step = (height - image_size) // 2
        offsets = [(0, 0), (2 * step, 0), (step, 0)]
    views = torch.stack([x[..., t : t + image_size, left : left + image_size] for t, left in offsets])
    return normalize(views.float()).contiguous()


@pytest.mark.parametrize("crops", [1, 3])
@pytest.mark.parametrize("hw", [(256, 340), (360, 640), (480, 270), (120, 160)], ids=str)
def test_test_views_values_are_unchanged(hw, crops):
    frames = np.random.default_rng(hw[0]).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    expected = _reference_test_views(frames, 224, crops)
    got = test_views(frames, image_size=224, crops=crops)
    assert got.is_contiguous() and not got.is_shared()
    assert torch.equal(got, expected)
    shared = test_views(frames, image_size=224, crops=crops, shared=True)
    assert shared.is_shared() and shared.is_contiguous() and torch.equal(shared, expected)


# The tag path's start-up: no torchvision (it imports torch._dynamo, ~1.5 s); ffmpeg-python (which builds
# ffmpeg's command line) only once ffmpeg decodes.
IMPORT_CHECK = """
import sys
import xclip_cli.video.clips as clips
import xclip_cli.workers
from xclip_cli.video import decode
for path in sys.argv[1:]:
    for clip in clips.load_clips(clips.VideoTask(path), clips.ClipSpec(frames=8, image_size=224)):
        assert clip.views.shape == (1, 8, 3, 224, 224)
print(sorted(m for m in ("torchvision", "torch._dynamo", "ffmpeg", "numpy.ma") if m in sys.modules))
decode.decord = None  # the ffmpeg path too
for clip in clips.load_clips(clips.VideoTask(sys.argv[1]), clips.ClipSpec(frames=8, image_size=224, window=1.0)):
    pass
print(sorted(m for m in ("torchvision", "torch._dynamo", "numpy.ma") if m in sys.modules))
"""


@needs_videos
def test_loading_clips_imports_neither_torchvision_nor_dynamo():
    paths = [clip("mmaction2/test.mp4"), clip("torchvision/RATRACE_wave_f_nm_np1_fr_goo_37.avi")]
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["[]", "[]"], proc.stdout


# ------------------------------------------------------------------------------- one reader per file


@needs_videos
@pytest.mark.parametrize(
    "name, window, stride",
    [
        ("mmaction2/test.mp4", 2.0, 1.0),
        ("moviepy/no_duration.webm", 1.0, None),
        ("mmaction2/part_0.mp4", 0.25, 0.1),
    ],
)
def test_windows_read_through_one_reader_match_windows_read_alone(name, window, stride, backend, monkeypatch):
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    if backend == "decord" and name.endswith(".webm"):
        pytest.skip("decord cannot open a WebM without a duration")
    spec = ClipSpec(frames=8, image_size=224, clips=2, window=window, stride=stride)
    opened = []
    real_reader, real_popen = decord_backend.decord and decord_backend.decord.VideoReader, subprocess.Popen
    if backend == "decord":

        def reader(*args, **kwargs):
            opened.append(kwargs.get("width"))
            return real_reader(*args, **kwargs)

        monkeypatch.setattr(decord_backend.decord, "VideoReader", reader)
    ffmpeg_backend._passthrough_option(ffmpeg_backend._ffmpeg_exe())  # asked once per binary, before counting

    def popen(args, *rest, **kwargs):
        opened.append(args[0])
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(ffmpeg_backend.subprocess, "Popen", popen)
    together = list(load_clips(VideoTask(str(clip(name))), spec))
    # ffmpeg: the probe and one decoding pass. decord: the probe's reader, then a fresh reader per window
    # (a reused one is not repeatable near the end of some files: see decord_backend.Reader.read).
    limit = 2 if backend == "ffmpeg" else 1 + len(together)
    assert len(together) > 3 and len(opened) <= limit, opened
    monkeypatch.setattr(ffmpeg_backend.subprocess, "Popen", real_popen)
    for got in together:
        alone = list(
            load_clips(
                VideoTask(str(clip(name)), start=got.start, end=got.end),
                dataclasses.replace(spec, window=None),
            )
        )
        assert [c.indices for c in alone] == [got.indices]
        assert torch.equal(alone[0].views, got.views)


@needs_videos
def test_ffmpeg_reader_streams_a_plan_keeping_only_frames_still_needed(monkeypatch):
    monkeypatch.setattr(decode, "decord", None)
    monkeypatch.setattr(ffmpeg_backend, "_MAX_SELECT_TERMS", 20)  # several passes for this plan
    path = clip("mmaction2/test.mp4")  # 300 frames
    info = probe(path)
    sets = [view_indices(60, 4, 2).reshape(-1) + start for start in range(0, 241, 30)]  # overlapping
    reader = ffmpeg_backend.Reader(path, info)
    reader.plan(Plan(sets, info.num_frames))
    size = (170, 128)
    for wanted in sets:
        got = reader.read(wanted, size)
        assert len(reader._frames) <= 8  # the frames the next overlapping sets share, no more
        np.testing.assert_array_equal(got, ffmpeg_backend.read(path, wanted, info, size))
    # Not the planned one: a read of its own, still right.
    np.testing.assert_array_equal(
        reader.read(np.array([5, 3]), size), ffmpeg_backend.read(path, np.array([5, 3]), info, size)
    )
    reader.close()


@needs_videos
def test_ffmpeg_stream_clamps_past_a_header_that_overstates(monkeypatch):
    monkeypatch.setattr(decode, "decord", None)
    path = clip("mmaction2/part_0.mp4")  # 32 frames
    info = probe(path)
    liar = dataclasses.replace(info, num_frames=info.num_frames + 40)
    sets = [np.array([10, 20]), np.array([30, 40, 50]), np.array([60, 70])]
    reader = ffmpeg_backend.Reader(path, liar)
    reader.plan(Plan(sets, liar.num_frames))
    got = [reader.read(s, None) for s in sets]
    reader.close()
    last = read_frames(path, [info.num_frames - 1], info=info)[0]
    np.testing.assert_array_equal(got[0], read_frames(path, [10, 20], info=info))
    np.testing.assert_array_equal(got[1][0], read_frames(path, [30], info=info)[0])
    for frame in [got[1][1], got[1][2], *got[2]]:
        np.testing.assert_array_equal(frame, last)


@needs_videos
def test_damaged_packet_fails_windows_too(backend):
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    with pytest.raises(VideoError, match="Invalid NAL unit size") as err:
        list(
            load_clips(
                VideoTask(str(clip("decord/corrupted.mp4"))), ClipSpec(frames=8, image_size=224, window=1.0)
            )
        )
    assert "\n" not in str(err.value)


@needs_videos
@pytest.mark.parametrize("short_side", [None, 128])
def test_decord_reads_an_avi_that_overstates_its_frames_the_same_every_time(short_side):
    # This HMDB-51 AVI lists 73 frames and decodes 72. A decord reader that has decoded already returned
    # frame 69 or 71 for frame 71 from run to run; each of our reads has a reader that has decoded
    # nothing, whose get_batch (what the official pipeline calls) gives the same frames every time.
    if decode.decord is None:
        pytest.skip("decord is not installed")
    path = clip("torchvision/RATRACE_wave_f_nm_np1_fr_goo_37.avi")
    info = probe(path)
    indices = np.array(
        sorted({*segment_indices(info.num_frames, 8), *view_indices(info.num_frames, 8, 4).reshape(-1)})
    )
    with decode.open_video(path) as video:
        first, again = video.read(indices, short_side=short_side), video.read(indices, short_side=short_side)
    np.testing.assert_array_equal(first, again)  # a reused reader gave another frame 71 now and then
    assert len({first[i].tobytes() for i in range(len(first))}) == len(first)  # distinct frames


@needs_videos
def test_ffmpeg_reads_more_separate_frames_than_one_sum_of_its_parser_takes(monkeypatch):
    # ffmpeg's expression parser takes at most 100 terms in a sum; `--views 16x1` asks 128 frames.
    monkeypatch.setattr(decode, "decord", None)
    path = clip("mmaction2/test.mp4")  # 300 frames
    info = probe(path)
    wanted = np.arange(0, 300, 2)  # 150 separate frames, no runs
    assert ffmpeg_backend._select_expression(wanted).count("(") > 150  # nested sums
    got = read_frames(path, wanted, short_side=64, info=info)
    halves = [read_frames(path, part, short_side=64, info=info) for part in (wanted[:75], wanted[75:])]
    np.testing.assert_array_equal(got, np.concatenate(halves))
    assert ffmpeg_backend._select_expression(np.arange(5, 9)) == "between(n\\,5\\,8)"


@needs_videos
def test_overlapping_windows_walk_decord_forward_without_seeking_back(monkeypatch):
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    if decode.decord is None:
        pytest.skip("decord is not installed")
    asked = []
    real = decord_backend._get_batch

    def get_batch(vr, wanted):
        asked.append(wanted.tolist())
        return real(vr, wanted)

    monkeypatch.setattr(decord_backend, "_get_batch", get_batch)
    spec = ClipSpec(frames=8, image_size=224, window=2.0, stride=0.5)  # each frame in up to 4 windows
    clips = list(load_clips(VideoTask(str(clip("mmaction2/test.mp4"))), spec))
    assert len(clips) == 17 and len(asked) <= len(clips)
    # Each batch starts after the last one ended: decord never seeks back to a keyframe.
    assert all(later[0] > earlier[-1] for earlier, later in itertools.pairwise(asked)), asked
    assert {i for batch in asked for i in batch} == {i for c in clips for i in c.indices}


def test_sorted_unique_is_np_unique():
    from xclip_cli.video.base import sorted_unique

    rng = np.random.default_rng(0)
    for values in [rng.integers(0, 50, 40), np.array([3]), np.array([], np.int64), np.array([5, 5, 5])]:
        np.testing.assert_array_equal(sorted_unique(values), np.unique(values))
