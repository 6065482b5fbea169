"""Hardening of `xclip tag`: files that are not ours are never touched, reports are locked, bad values get
one line before anything loads, the feature cache is best effort, nothing hangs on a FIFO."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CLIP = EXAMPLES / "flipping_a_pancake.mkv"
OTHER = EXAMPLES / "v_SoccerJuggling_g23_c01.avi"


def xclip(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xclip_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def invoke(*args, env: dict | None = None):
    """The CLI in this process (no torch import per case): exit code, stdout, stderr."""
    from typer.testing import CliRunner

    from xclip_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("xclip: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- option values: one line, exit 2, before the model loads -------------------------------------------------
BAD_OPTIONS = [
    (["--window", "nan"], "--window"),
    (["--window", "inf"], "--window"),
    (["--window", "1e-6"], "--window"),
    (["--window", "2", "--stride", "0"], "--stride"),
    (["--stride", "2"], "--stride needs --window"),
    (["--timeout", "-5"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--frames", "-3"], "--frames"),
    (["--frames", "0"], "--frames"),
    (["--frames", "100000"], "--frames"),
    (["--threshold", "0.3"], "--threshold needs --multi-label"),
    (["--multi-label", "--threshold", "nan"], "--threshold"),
    (["--top-k", "0"], "--top-k"),
    (["--batch-size", "0"], "--batch-size"),
    (["--workers", "-1"], "--workers"),
    (["--threads", "0"], "--threads"),
    (["--threads", "-1"], "--threads"),
    (["--views", "0x1"], "--views"),
    (["--views", "100000x3"], "--views"),
    (["--views", "axb"], "--views"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda:abc"], "unknown device"),
    (["--device", ""], "unknown device"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_OPTIONS, ids=[" ".join(e) for e, _ in BAD_OPTIONS])
def test_bad_option_values_are_one_line_before_the_model_loads(tmp_path, extra, message):
    # The model does not exist: were it loaded first, the exit code would be 3.
    code, _, stderr = invoke(
        "tag", CLIP, "--label", "x", "-m", tmp_path / "missing.pt", "-o", tmp_path / "r.jsonl", *extra
    )
    assert code == 2, stderr
    assert message in one_error_line(stderr)
    assert not (tmp_path / "r.jsonl").exists()


def test_bad_device_from_the_environment_is_a_usage_error(tmp_path):
    code, _, stderr = invoke(
        "tag", CLIP, "--label", "x", "-m", tmp_path / "missing.pt", env={"XCLIP_DEVICE": "gpu"}
    )
    assert code == 2 and "unknown device 'gpu'" in one_error_line(stderr)


def test_model_failure_leaves_no_report_behind(tmp_path):
    out = tmp_path / "r.json"
    code, _, stderr = invoke("tag", CLIP, "--label", "x", "-m", tmp_path / "missing.pt", "-o", out)
    assert code == 3 and "not found" in one_error_line(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the report nor its lock


# -- files that are not ours ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_resume_and_overwrite_never_touch_a_file_that_is_not_a_report(tmp_path, fmt, flag):
    victims = {
        "video": CLIP.read_bytes(),
        "user csv": b"name,age\nada,36\nalan,41",  # no newline at the end: a 'torn' last line
        "notes": b"some notes\nwithout a final newline",
    }
    for what, content in victims.items():
        out = tmp_path / f"{what.replace(' ', '_')}.{fmt}"
        out.write_bytes(content)
        code, _, stderr = invoke("tag", OTHER, "--label", "x", "-m", tmp_path / "missing.pt", "-o", out, flag)
        assert code == 2, (what, stderr)
        assert "not an xclip" in one_error_line(stderr), what
        assert out.read_bytes() == content, f"{what} was changed"


@pytest.mark.parametrize("link", ["same", "hardlink", "symlink"])
def test_output_that_is_an_input_is_refused(tmp_path, link):
    video = tmp_path / "v.jsonl"  # a video named like a report, say by a careless rename
    shutil.copy(CLIP, video)
    out = {"same": video, "hardlink": tmp_path / "h.jsonl", "symlink": tmp_path / "s.jsonl"}[link]
    if link == "hardlink":
        os.link(video, out)
    elif link == "symlink":
        out.symlink_to(video)
    before = video.read_bytes()
    code, _, stderr = invoke("tag", video, "--label", "x", "-m", "ViT-B-32:random", "-o", out, "--overwrite")
    assert code == 2 and "is one of the inputs" in one_error_line(stderr)
    assert video.read_bytes() == before


def test_existing_report_is_refused_before_the_model_loads(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    code, _, stderr = invoke("tag", CLIP, "--label", "x", "-m", tmp_path / "missing.pt", "-o", out)
    assert code == 2 and "already exists" in one_error_line(stderr)
    assert out.read_text() == "precious\n"


# -- locks ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]], ids=["fresh", "resume", "overwrite"])
def test_a_second_writer_of_a_report_is_refused(tiny_dir, tmp_path, fmt, flag):
    from xclip_cli.files import FileLock

    out = tmp_path / f"r.{fmt}"
    assert invoke("tag", CLIP, "--label", "x", "-m", tiny_dir, "-o", out, "--workers", "0")[0] == 0
    before = out.read_bytes()
    with FileLock(out):  # what a running `xclip tag -o r.{fmt}` holds
        code, _, stderr = invoke("tag", OTHER, "--label", "y", "-m", tiny_dir, "-o", out, *flag)
    assert code == 2, stderr
    line = one_error_line(stderr)
    assert str(out) in line and "in use by another xclip process" in line
    assert out.read_bytes() == before


def test_lock_of_a_killed_writer_is_released(tmp_path):
    out = tmp_path / "r.jsonl"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time, sys
        sys.path.insert(0, {str(REPO)!r})
        from xclip_cli.reports import open_writer
        writer = open_writer({str(out)!r}, "jsonl")
        writer.write({{"path": "a.mp4", "model": "m"}})
        open({str(ready)!r}, "w").close()
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            import time

            time.sleep(0.1)
        assert ready.exists()
        from xclip_cli.errors import FileLockedError
        from xclip_cli.reports import open_writer

        with pytest.raises(FileLockedError):
            open_writer(str(out), "jsonl", resume=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open_writer(str(out), "jsonl", resume=True) as writer:  # the kernel dropped the lock
        assert writer.resumed_rows == 1
    assert [r["path"] for r in jsonl(out.read_text())] == ["a.mp4"]


# -- resume keys on the file, not on how it was named ----------------------------------------------------------
def test_resume_from_another_folder_skips_what_is_done(tiny_dir, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for clip in (CLIP, OTHER):
        shutil.copy(clip, lib / clip.name)
    out = tmp_path / "r.csv"
    proc = xclip("tag", "lib", "--label", "x", "-m", tiny_dir, "-o", out, "--workers", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = out.read_text()
    proc = xclip(
        "-v", "tag", lib, "--label", "x", "-m", tiny_dir, "-o", out, "--resume", "--workers", "0", cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 2 of 2 inputs already" in proc.stderr
    assert out.read_text() == first  # nothing re-tagged, nothing written twice
    # another vocabulary under --resume is allowed, and said
    proc = xclip(
        "tag", lib, "--label", "y", "-m", tiny_dir, "-o", out, "--resume", "--workers", "0", cwd=REPO
    )
    assert proc.returncode == 0 and "it will hold two runs" in proc.stderr


# -- nothing hangs -------------------------------------------------------------------------------------------
def test_fifo_input_with_cache_does_not_block(tiny_dir, tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    # A guard, not a timing assertion: the old code blocked forever in open() of the FIFO.
    proc = xclip(
        "tag",
        fifo,
        CLIP,
        "--label",
        "x",
        "-m",
        tiny_dir,
        "--cache",
        tmp_path / "cache",
        "--workers",
        "0",
        timeout=240,
    )
    rows = {Path(r["path"]).name: r for r in jsonl(proc.stdout)}
    assert proc.returncode == 1, proc.stderr
    assert "not a regular file" in rows["pipe.mp4"]["error"]
    assert rows[CLIP.name]["error"] is None


def test_fifo_as_labels_file_does_not_block(tmp_path):
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    proc = xclip("tag", CLIP, "--labels", fifo, "-m", tmp_path / "missing.pt", timeout=240)
    assert proc.returncode == 2 and "not a regular file" in one_error_line(proc.stderr)


# -- the feature cache is best effort ---------------------------------------------------------------------------
def test_cache_folder_that_cannot_be_written_warns_and_tags(tiny_dir, tmp_path):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    proc = xclip("tag", CLIP, OTHER, "--label", "x", "-m", tiny_dir, "--cache", blocked, "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    assert len(jsonl(proc.stdout)) == 2
    assert proc.stderr.count("feature cache") == 1 and "Traceback" not in proc.stderr


def test_full_disk_under_the_cache_warns_once_and_tags(tiny_dir, tmp_path, monkeypatch, caplog):
    import safetensors.torch

    from xclip_cli import tag

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    rows = list(tag([CLIP, OTHER], labels=["x", "y"], model=str(tiny_dir), cache=tmp_path / "c", workers=0))
    assert [r["error"] for r in rows] == [None, None]
    warnings = [r for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warnings) == 1 and "No space" in warnings[0].getMessage()
    assert not list((tmp_path / "c").rglob("*.tmp*"))


def test_cache_entry_with_wrong_shapes_is_ignored_and_replaced(tiny_dir, tmp_path, caplog):
    import torch
    from safetensors.torch import save_file

    from xclip_cli import tag

    cache = tmp_path / "c"
    first = list(tag([CLIP], labels=["x", "y"], model=str(tiny_dir), cache=cache, workers=0))
    [entry] = list(cache.rglob("*.safetensors"))
    save_file(
        {"embedding": torch.zeros(1, 7), "prompt_tokens": torch.zeros(1, 2, 7)},
        str(entry),
        metadata={"clips": json.dumps([{"start": None, "end": None, "duration": 1.0}])},
    )
    again = list(tag([CLIP], labels=["x", "y"], model=str(tiny_dir), cache=cache, workers=0))
    assert again[0]["error"] is None and again[0]["scores"] == pytest.approx(first[0]["scores"], abs=1e-6)
    assert any("ignoring unreadable or foreign" in r.getMessage() for r in caplog.records)
    from safetensors import safe_open

    with safe_open(str(entry), "pt") as f:  # replaced by a good entry
        assert f.get_tensor("embedding").shape[1] != 7


def test_files_we_write_follow_the_umask(tiny_dir, tmp_path):
    old = os.umask(0o022)
    try:
        from xclip_cli import tag
        from xclip_cli.reports import open_writer

        list(tag([CLIP], labels=["x"], model=str(tiny_dir), cache=tmp_path / "c", workers=0))
        [entry] = list((tmp_path / "c").rglob("*.safetensors"))
        assert entry.stat().st_mode & 0o777 == 0o644
        for fmt in ("json", "jsonl", "csv"):
            with open_writer(str(tmp_path / f"r.{fmt}"), fmt) as writer:
                writer.write({"path": "a.mp4", "model": "m"})
            assert (tmp_path / f"r.{fmt}").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


# -- a full disk on the report ----------------------------------------------------------------------------------
def test_full_disk_on_the_report_is_one_line_and_keeps_the_rows(tiny_dir, tmp_path, monkeypatch):
    from xclip_cli.reports import tag as reports

    calls = {"n": 0}
    real = reports._LineWriter._emit

    def emit(self, row):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, row)

    monkeypatch.setattr(reports._LineWriter, "_emit", emit)
    out = tmp_path / "r.jsonl"
    code, _, stderr = invoke("tag", CLIP, OTHER, "--label", "x", "-m", tiny_dir, "-o", out, "--workers", "0")
    assert code == 1
    assert "No space left on device" in one_error_line(stderr)
    assert [Path(r["path"]).name for r in jsonl(out.read_text())] == [CLIP.name]


# -- seeded random weights, whole names -------------------------------------------------------------------------
def test_random_weights_are_seeded(tmp_path):
    from xclip_cli import tag

    def scores(seed):
        rows = tag([CLIP], labels=["a", "b", "c"], model="ViT-B-32:random", workers=0, seed=seed)
        return next(iter(rows))["scores"]

    assert scores(0) == scores(0)
    assert scores(0) != scores(1)


def test_models_never_cuts_names_in_a_pipe():
    from xclip_cli import weights

    proc = xclip("models", env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    for name in weights.registry():
        assert name in proc.stdout, name


# -- eval: the same rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "tpu"], "unknown device"),
        (["--timeout", "-5"], "--timeout"),
        (["--frames", "0"], "--frames"),
        (["--views", "0x3"], "--views"),
    ],
)
def test_eval_bad_values_are_one_line_before_anything_loads(tmp_path, extra, message):
    clips = tmp_path / "clips.csv"
    clips.write_text(f"path,label\n{CLIP},flipping pancake\n")
    code, _, stderr = invoke("eval", "-d", "csv", "--root", clips, "-m", tmp_path / "missing.pt", *extra)
    assert code == 2 and message in one_error_line(stderr)


@pytest.mark.parametrize("option", ["--output", "--predictions"])
def test_eval_overwrite_never_replaces_a_file_that_is_not_ours(tmp_path, option):
    clips = tmp_path / "clips.csv"
    clips.write_text(f"path,label\n{CLIP},flipping pancake\n")
    precious = tmp_path / "notes.json"
    precious.write_text('{"my": "notes"}\n')
    code, _, stderr = invoke(
        "eval", "-d", "csv", "--root", clips, "-m", tmp_path / "missing.pt", option, precious, "--overwrite"
    )
    assert code == 2 and "not an xclip eval" in one_error_line(stderr)
    assert precious.read_text() == '{"my": "notes"}\n'
