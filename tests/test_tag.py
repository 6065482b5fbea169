"""`xclip tag` end to end on real third-party clips, with a tiny random model in our checkpoint format."""

from __future__ import annotations

import csv
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import VIDEOS

pytestmark = pytest.mark.skipif(not VIDEOS.is_dir(), reason="../shared/data/videos not present")
LABELS = ["riding a bike", "flipping pancake", "waving hand", "drinking water"]


def manifest() -> list[dict]:
    with open(VIDEOS / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def xclip(*args, stdin=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xclip_cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def label_args(labels=LABELS):
    out = []
    for label in labels:
        out += ["--label", label]
    return out


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_manifest_clip_gets_one_row(tiny_dir, tmp_path):
    report = tmp_path / "all.csv"
    proc = xclip(
        "tag", VIDEOS, "--ext", "mp4,mkv,mov,avi,webm,gif,mp3", "-m", tiny_dir, *label_args(), "-o", report
    )
    assert proc.returncode == 1, proc.stderr  # some inputs failed, the rest are written
    from xclip_cli.reports import read_report

    rows = {Path(r["path"]).relative_to(VIDEOS).as_posix(): r for r in read_report(report)}
    expected = {m["path"]: m for m in manifest()}
    assert set(rows) == set(expected)
    for path, row in rows.items():
        m = expected[path]
        if m["video_codec"] == "" or "corrupt" in path:
            assert row["error"] and row["label"] is None, path
        else:
            assert row["error"] is None, (path, row["error"])
            assert row["label"] in LABELS and 0 < row["score"] <= 1
            assert row["frames"] == 8 and row["views"] == "1x1"
            if m["duration_s"]:
                assert abs(row["duration"] - float(m["duration_s"])) < 0.6, path
    assert "no video stream" in rows["torchcodec/nasa_13013.mp4.audio.mp3"]["error"]
    assert rows["decord/corrupted.mp4"]["error"]
    # stderr carries one line per failed file; stdout carries nothing when writing to a file
    assert "decord/corrupted.mp4" in proc.stderr and proc.stdout == ""


def test_stdin_null_to_stdout_jsonl(tiny_dir):
    names = [
        "moviepy/-video-with-dash-.mp4",
        "torchvision/v_SoccerJuggling_g23_c01.avi",
        "kinetics_i3d/v_CricketShot_g04_c01_rgb.gif",
    ]
    stdin = "\0".join(str(VIDEOS / n) for n in names) + "\0"
    proc = xclip("tag", "-", "--null", "-m", tiny_dir, *label_args(), "--top-k", "2", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    rows = jsonl(proc.stdout)  # every stdout line parses on its own
    assert [r["path"] for r in rows] == sorted(str(VIDEOS / n) for n in names)
    for row in rows:
        assert len(row["labels"]) == 2 and row["labels"][0] == row["label"]
        assert set(row["all_scores"]) == set(LABELS)
        assert abs(sum(row["all_scores"].values()) - 1) < 1e-4
        assert row["scores"] == sorted(row["scores"], reverse=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_without_duplicates(tiny_dir, tmp_path, sig):
    report = tmp_path / "r.jsonl"
    clips = sorted(str(p) for p in VIDEOS.rglob("*") if p.suffix in {".mov", ".avi"} or "carphone" in p.name)
    args = [
        "tag",
        *clips,
        "-m",
        tiny_dir,
        *label_args(),
        "-o",
        report,
        "--workers",
        "0",
        "--batch-size",
        "1",
        "--views",
        "4x3",
    ]  # slow enough per clip that the kill lands mid-run
    # Default SIGINT handling in the child even when this suite runs as a background job (`pytest &` in a
    # script starts with SIGINT ignored, which its children would inherit).
    proc = subprocess.Popen(
        [sys.executable, "-m", "xclip_cli", *map(str, args)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not report.exists() or len(report.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    partial = report.read_text()
    assert 3 <= len(partial.splitlines()) < len(clips)
    if sig == signal.SIGKILL:  # simulate the worst case: the kill tore the last line
        report.write_text(partial + '{"path": "torn')
    done = xclip(*args, "--resume")
    assert done.returncode in (0, 1), done.stderr
    rows = jsonl(report.read_text())
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(clips) and len(paths) == len(set(paths))


def test_cache_skips_decoding_and_matches(tiny_dir, tmp_path, monkeypatch):
    import xclip_cli.video.clips as clips_module
    from xclip_cli import tag

    files = [VIDEOS / "torchvision/v_SoccerJuggling_g23_c01.avi", VIDEOS / "decord/video_90.mov"]
    opts = dict(model=str(tiny_dir), workers=0, cache=tmp_path / "cache")
    first = list(tag(files, labels=LABELS, **opts))
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2

    def no_decoding(*a, **k):
        raise AssertionError("decoded a video despite the cache")

    other = ["swimming", "cooking", "riding a bike"]
    with monkeypatch.context() as patched:
        patched.setattr(clips_module, "read_frames", no_decoding)
        patched.setattr(clips_module, "probe", no_decoding)
        cached = list(tag(files, labels=other, **opts))
    fresh = list(tag(files, labels=other, model=str(tiny_dir), workers=0))
    assert [r["label"] for r in cached] == [r["label"] for r in fresh]
    for a, b in zip(cached, fresh):
        for label in other:
            assert abs(a["all_scores"][label] - b["all_scores"][label]) < 1e-5
    assert [r["error"] for r in first] == [None, None]


def test_window_segments_cover_a_30s_clip(tiny_dir):
    proc = xclip(
        "tag",
        VIDEOS / "moviepy/big_buck_bunny_0_30.webm",
        "-m",
        tiny_dir,
        *label_args(),
        "--window",
        "10",
        "-f",
        "jsonl",
    )
    assert proc.returncode == 0, proc.stderr
    rows = jsonl(proc.stdout)
    spans = [(r["start"], r["end"]) for r in rows]
    assert len(spans) == 3 and spans[0][0] == 0
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == pytest.approx(start)
    assert spans[-1][1] == pytest.approx(rows[0]["duration"], abs=1e-3)
    assert rows[0]["duration"] == pytest.approx(30.0, abs=0.1)


def test_views_4x3_deterministic(tiny_dir):
    from xclip_cli import tag

    clip = [VIDEOS / "mmaction2/demo.mp4"]
    a = list(tag(clip, labels=LABELS, model=str(tiny_dir), views="4x3", workers=0))
    b = list(tag(clip, labels=LABELS, model=str(tiny_dir), views="4x3", workers=1))
    one = list(tag(clip, labels=LABELS, model=str(tiny_dir), workers=0))
    assert a[0]["views"] == "4x3" and a[0]["all_scores"] == b[0]["all_scores"]
    assert a[0]["all_scores"] != one[0]["all_scores"]


def test_hanging_decoder_is_abandoned(tiny_dir, monkeypatch):
    """A file that hangs the decoder is reported after the timeout; the run goes on."""
    import xclip_cli.video.clips as clips_module
    from xclip_cli import tag

    real = clips_module.read_frames

    def hang_on_gif(path, *a, **k):
        if str(path).endswith(".gif"):
            time.sleep(3600)
        return real(path, *a, **k)

    monkeypatch.setattr(clips_module, "read_frames", hang_on_gif)  # inherited by forked workers
    files = [VIDEOS / "kinetics_i3d/v_CricketShot_g04_c01_rgb.gif", VIDEOS / "decord/video_0.mov"]
    rows = {
        Path(r["path"]).suffix: r
        for r in tag(files, labels=LABELS, model=str(tiny_dir), workers=1, timeout=3)
    }
    assert "timed out after 3 s" in rows[".gif"]["error"]
    assert rows[".mov"]["error"] is None and rows[".mov"]["label"] in LABELS


def test_multi_label_threshold(tiny_dir):
    from xclip_cli import tag

    rows = list(
        tag([VIDEOS / "decord/video_0.mov"], labels=LABELS, model=str(tiny_dir), workers=0, threshold=0.0)
    )
    assert rows[0]["labels"][0] == rows[0]["label"] and len(rows[0]["labels"]) == len(LABELS)
    rows = list(
        tag([VIDEOS / "decord/video_0.mov"], labels=LABELS, model=str(tiny_dir), workers=0, threshold=1.0)
    )
    assert rows[0]["labels"] == [] and rows[0]["label"] is not None


def test_usage_errors_exit_2(tiny_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    clip = VIDEOS / "decord/video_0.mov"
    for args, needle in [
        (["tag", clip, "-m", tiny_dir, "--labels", empty], "no labels"),
        (["tag", clip, "-m", tiny_dir], "no labels"),
        (["tag", tmp_path / "nothing-here", "-m", tiny_dir, "--label", "a"], "no input videos"),
        (["tag", clip, "-m", tiny_dir, "--label", "a", "--views", "2y2"], "CLIPSxCROPS"),
        (["tag", clip, "-m", tiny_dir, "--label", "a", "--frames", "16"], "16 frames"),
    ]:
        proc = xclip(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1
    proc = xclip("tag", clip, "-m", tmp_path / "missing-model", "--label", "a")
    assert proc.returncode == 3 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_existing_output_needs_resume_or_overwrite(tiny_dir, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("path\n")
    proc = xclip(
        "tag", VIDEOS / "decord/video_0.mov", "-m", tiny_dir, "--label", "a", "--label", "b", "-o", out
    )
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert out.read_text() == "path\n"
