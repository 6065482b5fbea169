"""Decoding under signals and bad files: ffmpeg outlives a Ctrl-C to the terminal's process group, decode
workers stop quietly on SIGTERM, and native libraries print nothing on stderr by default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xclip_cli.video import decode, decord_backend, ffmpeg_backend

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared/data/videos"


def _wait_for(predicate, what: str, proc: subprocess.Popen, limit: float = 120.0) -> None:
    """Poll a handshake (a file the child writes); fail with the child's output if it died first."""
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {limit:g} s")
        time.sleep(0.02)


def _script(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(code))
    return path


def test_ffmpeg_children_run_in_their_own_session(monkeypatch):
    seen = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        seen.append((kwargs.get("start_new_session"), os.getsid(proc.pid), proc.pid))  # exec'd: setsid done
        return proc

    monkeypatch.setattr(ffmpeg_backend.subprocess, "Popen", popen)
    code, _, _ = ffmpeg_backend._run_ffmpeg([sys.executable, "-c", "pass"], timeout=60)
    assert code == 0
    ((new_session, sid, pid),) = seen
    assert new_session is True and sid == pid != os.getsid(0)


def test_ctrl_c_to_the_process_group_does_not_kill_ffmpeg_mid_file(tmp_path):
    # The child stands for a decode worker (SIGINT ignored, as in workers._worker_main) running a fake
    # ffmpeg that waits for a "go" file. SIGINT to the worker's whole process group must not reach it.
    started, go = tmp_path / "started", tmp_path / "go"
    # Like ffmpeg, it sets its own SIGINT handler (a worker's SIG_IGN is inherited, but ffmpeg overrides it).
    fake_ffmpeg = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: os._exit(255))\n"
        f"open({str(started)!r}, 'w').close()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "sys.stderr.write('finished')\n"
    )
    child = _script(
        tmp_path,
        f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from xclip_cli.video import ffmpeg_backend
        code, stderr, _ = ffmpeg_backend._run_ffmpeg([sys.executable, "-c", {fake_ffmpeg!r}], timeout=300)
        print(code, stderr)
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, str(child)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a job
    )
    try:
        _wait_for(started.exists, "fake ffmpeg start", proc)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
        go.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.split() == ["0", "finished"], (out, err)


WORKER_POOL_SCRIPT = """
import os, signal, sys, time
from xclip_cli.workers import WorkerPool

def handler(signum, frame):  # what the CLI installs (cli.common.Interrupts)
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, handler)
flags = sys.argv[1]

def task(n):
    open(os.path.join(flags, f"{n}-{os.getpid()}"), "w").close()  # the handshake: this worker is busy
    time.sleep(3600)
    yield n

try:
    with WorkerPool(task, workers=2, timeout=3600, ahead=1) as pool:
        for _ in pool.run((n, n) for n in range(2)):
            pass
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_stops_workers_without_traceback(tmp_path, signum):
    flags = tmp_path / "flags"
    flags.mkdir()
    child = _script(tmp_path, WORKER_POOL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(child), str(flags)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: len(os.listdir(flags)) == 2, "two busy workers", proc)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130 and err.strip() == "interrupted", err
    for name in os.listdir(flags):  # no worker outlives the pool (a zombie of a reparented one is fine)
        pid = int(name.split("-")[1])
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state in ("Z", "X"), f"worker {pid} still running ({state})"


def _truncated_mp4(tmp_path: Path) -> Path:
    """An MP4 cut in half before its moov box (an interrupted download): libav and decord both complain."""
    whole = tmp_path / "whole.mp4"
    subprocess.run(
        [
            ffmpeg_backend._ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10",
            "-t",
            "1",
            "-c:v",
            "mpeg4",
            "-y",
            str(whole),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    data = whole.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


DECODE_SCRIPT = """
import sys
from xclip_cli.video import VideoError, probe, read_frames
for path in sys.argv[1:]:
    try:
        info = probe(path)
        read_frames(path, [0, 10, 20, 40], info=info)
    except VideoError as err:
        print(err)
"""


@pytest.mark.skipif(decode.decord is None, reason="decord is not installed")
def test_libav_and_decord_messages_stay_off_stderr(tmp_path):
    paths = [str(_truncated_mp4(tmp_path))]
    if (VIDEOS / "decord/corrupted.mp4").is_file():  # libav's "[h264 @ 0x...] Invalid NAL unit size"
        paths.append(str(VIDEOS / "decord/corrupted.mp4"))
    child = _script(tmp_path, DECODE_SCRIPT)
    quiet = subprocess.run(
        [sys.executable, str(child), *paths], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert len(quiet.stdout.splitlines()) == len(paths)  # each still fails, with its cause
    assert "moov atom not found" in quiet.stdout

    # With logging at INFO (xclip -v) the libraries' own lines come through again.
    verbose = _script(tmp_path, "import logging; logging.basicConfig(level=logging.INFO)\n" + DECODE_SCRIPT)
    shown = subprocess.run(
        [sys.executable, str(verbose), *paths], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "moov atom not found" in shown.stderr and "ERROR opening" in shown.stderr


@pytest.mark.skipif(decode.decord is None, reason="decord is not installed")
def test_decoder_threads_are_a_parameter_with_a_default(monkeypatch):
    opened = []
    real = decode.decord.VideoReader

    def reader(*args, **kwargs):
        opened.append(kwargs.get("num_threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(decord_backend.decord, "VideoReader", reader)
    path = ROOT / "examples" / "flipping_a_pancake.mkv"
    decode.read_frames(path, [0, 5])
    decode.read_frames(path, [0, 5], threads=3)
    decode.read_frames(path, [0, 5], threads=1)  # what a decode worker's task passes
    decode.read_frames(path, [0, 5])  # nothing remembered from the calls before
    assert opened == [decode.DECODER_THREADS, 3, 1, decode.DECODER_THREADS]


@pytest.fixture
def fresh_passthrough_cache():
    ffmpeg_backend._passthrough_option.cache_clear()
    yield
    ffmpeg_backend._passthrough_option.cache_clear()  # forget the fake binaries


def test_old_ffmpeg_passthrough_option_is_detected_once_per_binary(monkeypatch, fresh_passthrough_cache):
    calls = []

    def run(args, timeout, frame_bytes=0, keep_last=False):
        calls.append(args)
        if "-fps_mode" in args and args[0] == "/old/ffmpeg":
            return (
                1,
                "Unrecognized option 'fps_mode'.\nError splitting the argument list: Option not found",
                [],
            )
        if "-i" not in args:  # the option check of a new ffmpeg: no input given
            return 1, "Output file #0 does not contain any stream", []
        return 0, "", [bytes(frame_bytes)]

    monkeypatch.setattr(ffmpeg_backend, "_run_ffmpeg", run)
    monkeypatch.setattr(ffmpeg_backend, "_ffmpeg_exe", lambda: "/old/ffmpeg")
    assert len(ffmpeg_backend._ffmpeg_select("x.mp4", "eq(n\\,0)", 4, 2, 1, 60, False)) == 1
    assert ["-fps_mode" in a for a in calls] == [True, False] and "-vsync" in calls[
        1
    ]  # checked, then decoded
    ffmpeg_backend._ffmpeg_select("x.mp4", "eq(n\\,0)", 4, 2, 1, 60, False)
    assert len(calls) == 3 and "-vsync" in calls[2]  # remembered: no second check
    monkeypatch.setattr(ffmpeg_backend, "_ffmpeg_exe", lambda: "/new/ffmpeg")
    ffmpeg_backend._ffmpeg_select("x.mp4", "eq(n\\,0)", 4, 2, 1, 60, False)
    assert len(calls) == 5 and "-fps_mode" in calls[4]  # another binary is checked on its own


def test_passthrough_option_check_on_the_real_binaries():
    exes = {ffmpeg_backend._ffmpeg_exe()}
    try:
        import imageio_ffmpeg

        exes.add(imageio_ffmpeg.get_ffmpeg_exe())
    except ImportError:
        pass
    for exe in exes:
        option = ffmpeg_backend._passthrough_option(exe)
        assert option in (("-fps_mode", "passthrough"), ("-vsync", "passthrough"))
        # The check is right: the option it picks is one this binary accepts.
        code, stderr, _ = ffmpeg_backend._run_ffmpeg(
            [exe, "-v", "error", "-f", "lavfi", "-i", "nullsrc=s=16x16:d=0.04", *option, "-f", "null", "-"],
            60,
        )
        assert code == 0, stderr


# A fake ffmpeg for the planned-read stream: writes `frames` frames of 4x2 pixels (frame i all i),
# then exits, or hangs.
FAKE_STREAM = """
import sys, time
for i in range(int(sys.argv[1])):
    sys.stdout.buffer.write(bytes([i]) * 24)
    sys.stdout.flush()
while sys.argv[2] == "hang":
    time.sleep(0.01)
"""


def _fake_stream(frames: int, union, budget: float, hang: bool = False):
    import numpy as np

    args = [sys.executable, "-c", FAKE_STREAM, str(frames), "hang" if hang else "exit"]
    return ffmpeg_backend._FrameStream("x.mp4", args, (4, 2), np.asarray(union), budget)


def test_frame_stream_runs_in_its_own_session_and_close_stops_it():
    stream = _fake_stream(1, [0, 5], budget=300, hang=True)
    try:
        assert [n for n, _ in stream.frames_until(0)] == [0]
        pid = stream._proc.pid
        assert os.getsid(pid) == pid != os.getsid(0)
    finally:
        stream.close()
    assert stream._proc.returncode is not None  # killed and reaped, not left running


def test_frame_stream_time_limit_counts_only_time_spent_waiting_for_frames(monkeypatch):
    # The caller's time between reads (a worker blocked on a full queue while the model runs) is not
    # the decoder's: 1000 s of it pass between two reads on the stream's clock, and the stream goes on.
    now = [0.0]
    monkeypatch.setattr(ffmpeg_backend, "_clock", lambda: now[0])
    stream = _fake_stream(3, [0, 1, 2], budget=60)
    try:
        assert [n for n, _ in stream.frames_until(0)] == [0]
        now[0] += 1000.0
        frames = list(stream.frames_until(2))
        assert [n for n, _ in frames] == [1, 2] and frames[1][1].tolist() == [[[2] * 3] * 4] * 2
        assert stream._left == 60  # no clock time passed while it read
    finally:
        stream.close()


def test_frame_stream_that_stalls_is_killed_with_a_one_line_error():
    stream = _fake_stream(1, [0, 1], budget=0.5, hang=True)
    try:
        assert [n for n, _ in stream.frames_until(0)] == [0]
        with pytest.raises(ffmpeg_backend.VideoError) as err:
            list(stream.frames_until(1))
        assert str(err.value) == "x.mp4: timed out after 0.5 s"
    finally:
        stream.close()


def test_frame_stream_failure_is_a_one_line_error():
    import numpy as np

    args = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('[h264 @ 0xdead] Invalid NAL unit size\\n'); sys.exit(1)",
    ]
    stream = ffmpeg_backend._FrameStream("x.mp4", args, (4, 2), np.array([0]), 60)
    try:
        with pytest.raises(ffmpeg_backend.VideoError) as err:
            list(stream.frames_until(0))
        assert str(err.value) == "x.mp4: cannot decode video (Invalid NAL unit size)"
    finally:
        stream.close()
