"""The ffmpeg backend: the ffmpeg command-line tool, driven through ffmpeg-python.

Slower to start than decord, but it reads anything ffmpeg reads; :mod:`.decode` uses it whenever
decord is missing or cannot open or decode a file. A packet the decoder rejects (``-xerror``) is an
error, not a frame to conceal. Frames come upright (ffmpeg's autorotate) from ffmpeg's "best" stream.

The tool's stderr is captured (never the terminal's), and it runs in a session of its own, so a Ctrl-C
or SIGTERM sent to the terminal's process group does not kill it mid-file; our timeout and cleanup
still kill it. Any ffmpeg binary works, including imageio-ffmpeg's, which ships without ffprobe.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from functools import lru_cache

import numpy as np

from .base import VideoError, VideoInfo

log = logging.getLogger(__name__)

#: Wall-clock limit for one ffmpeg probe; decoding gets this plus time proportional to its work.
FFMPEG_TIMEOUT_S = 60.0
#: Slowest decode rate we tolerate before calling ffmpeg stuck (frames per second of video decoded).
_MIN_DECODE_FPS = 50.0


@lru_cache(maxsize=1)
def _ffmpeg_exe() -> str:
    """System ffmpeg (distribution builds have the widest codec support), else imageio-ffmpeg's."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise RuntimeError("no ffmpeg: install ffmpeg or the imageio-ffmpeg package") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


# "-fps_mode" arrived in ffmpeg 5.1 and "-vsync" left in ffmpeg 8; system and imageio-ffmpeg binaries
# differ in version, so each binary is asked once which one it takes.
@lru_cache(maxsize=8)
def _passthrough_option(exe: str) -> tuple[str, ...]:
    """The option that passes every selected frame through once: ``-fps_mode``, or ``-vsync`` before 5.1.

    ffmpeg checks option names before it opens any file, so a command without an input tells. A
    timeout raises (and is not cached).
    """
    args = [exe, "-hide_banner", "-nostdin", "-fps_mode", "passthrough", "-f", "null", "-"]
    _, stderr, _ = _run_ffmpeg(args, FFMPEG_TIMEOUT_S)
    # "Unrecognized option 'fps_mode'." from an old ffmpeg; a new one complains about the missing input.
    return ("-vsync", "passthrough") if "fps_mode" in stderr else ("-fps_mode", "passthrough")


def _ffmpeg_cause(stderr: str, path: str | os.PathLike[str], last: bool = False) -> str:
    """Two distinct lines of ffmpeg's stderr (the first, or the ``last``), without addresses and paths."""
    absolute = os.path.abspath(path)
    causes: list[str] = []
    for line in stderr.splitlines():
        line = re.sub(r"^\[[^\]]*@ ?0x[0-9a-f]+\] ", "", line.strip())
        line = line.replace(f"{absolute}: ", "").replace(absolute, "").strip()
        if line and not line.startswith("frame=") and line not in causes:
            causes.append(line)
    return "; ".join(causes[-2:] if last else causes[:2])[:300] or "unknown error"


def _run_ffmpeg(args: list[str], timeout: float, frame_bytes: int = 0, keep_last: bool = False):
    """Run ffmpeg; return (returncode, stderr text, raw frames read from stdout).

    Frames are read as they arrive, so ``keep_last`` keeps memory flat however many frames come.
    A timer kills ffmpeg after ``timeout`` seconds so that no file can hang a batch.
    """
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty ffmpeg cannot block on it
        # A session of its own: Ctrl-C / SIGTERM to the terminal's process group must not kill it
        # mid-file (the parent decides, and stops it below when it has to).
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        frames: list[bytes] = []
        try:
            while frame_bytes:
                chunk = proc.stdout.read(frame_bytes)
                if len(chunk) < frame_bytes:  # end of stream (a partial frame means ffmpeg died)
                    break
                if keep_last:
                    frames.clear()
                frames.append(chunk)
            proc.stdout.read()
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if timed_out.is_set():
        raise _Timeout(timeout)
    return returncode, stderr, frames


class _Timeout(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {round(seconds, 2):g} s")


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Metadata of ffmpeg's "best" video stream, with a true frame count (raises VideoError)."""
    # Stream-copying the video to the null muxer reads every packet without decoding: a true packet
    # count (headers lie) for about the cost of reading the file. Parsing this text output works with
    # any ffmpeg binary, including imageio-ffmpeg's, which ships without ffprobe.
    args = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.path.abspath(path)]
    args += ["-an", "-sn", "-dn", "-c:v", "copy", "-f", "null", "-"]
    try:
        returncode, stderr, _ = _run_ffmpeg(args, FFMPEG_TIMEOUT_S)
    except _Timeout as exc:
        raise VideoError(path, str(exc)) from None
    return _parse_ffmpeg_probe(path, returncode, stderr)


_STREAM_LINE = re.compile(r"^\s*Stream #0:(\d+)\S*: (\w+): (.*)$", re.MULTILINE)


def _parse_ffmpeg_probe(path: str | os.PathLike[str], returncode: int, stderr: str) -> VideoInfo:
    input_part = stderr.split("Input #0", 1)[-1]
    input_part = re.split(r"^(?:Output #0|Stream mapping:)", input_part, maxsplit=1, flags=re.MULTILINE)[0]
    streams = {int(m.group(1)): m for m in _STREAM_LINE.finditer(input_part)}
    videos = {i: m for i, m in streams.items() if m.group(2) == "Video" and "attached pic" not in m.group(3)}
    if not videos:
        if "Input #0" not in stderr:
            raise VideoError(path, f"cannot read video ({_ffmpeg_cause(stderr, path)})")
        raise VideoError(path, "no video stream")
    if returncode != 0:  # the stream listing comes first, the error last
        raise VideoError(path, f"cannot read video ({_ffmpeg_cause(stderr, path, last=True)})")
    mapped = re.search(r"Stream #0:(\d+) -> #0:0", stderr)
    index = int(mapped.group(1)) if mapped and int(mapped.group(1)) in videos else min(videos)
    match = videos[index]
    details = match.group(3)

    size = re.search(r", (\d+)x(\d+)(?=[ ,]|$)", details)
    if size is None:
        raise VideoError(path, "cannot read video (no frame size)")
    width, height = int(size.group(1)), int(size.group(2))
    rate = re.search(r"([\d.]+)(k?) fps", details) or re.search(r"([\d.]+)(k?) tbr", details)
    fps = _unround_rate(float(rate.group(1)) * (1000 if rate.group(2) else 1)) if rate else 0.0
    counts = re.findall(r"frame=\s*(\d+)", stderr)
    num_frames = int(counts[-1]) if counts else 0
    if num_frames <= 0:
        raise VideoError(path, "no video frames")

    # Side data (display matrix) is printed on the lines under its stream, up to the next stream.
    block = input_part[match.end() :]
    following = _STREAM_LINE.search(block)
    block = block[: following.start()] if following else block
    matrix = re.search(r"rotation of (-?[\d.]+) degrees", block, re.IGNORECASE)
    rotation = round(-float(matrix.group(1))) % 360 if matrix else 0  # ffmpeg prints it anticlockwise
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=os.fspath(path),
        num_frames=num_frames,
        fps=fps,
        duration=num_frames / fps if fps > 0 else None,
        width=width,
        height=height,
        rotation=rotation,
    )


def _unround_rate(printed: float) -> float:
    """Undo ffmpeg's 2-decimal rounding of NTSC rates (k * 1000/1001: "29.97", "14.99", "23.98").

    Left rounded, 23.98 for 23.976 drifts by a second per hour of video in time-to-frame maps.
    """
    ntsc = round(printed * 1.001) / 1.001
    return ntsc if printed != round(printed) and abs(ntsc - printed) <= 0.0051 else printed


def _ffmpeg_decode_args(
    path: str | os.PathLike[str], select: str, width: int, height: int, max_frames: int | None
) -> list[str]:
    import ffmpeg  # ffmpeg-python only builds the command line

    output_options: dict[str, object] = {
        "format": "rawvideo",
        "pix_fmt": "rgb24",
        "an": None,
        "sn": None,
        "dn": None,
    }
    if max_frames is not None:
        output_options["frames:v"] = max_frames  # stop as soon as the last wanted frame is out
    # A plain -vf (not ffmpeg-python's -filter_complex, whose "[0]" would take the first video
    # stream) keeps ffmpeg's default choice of stream, the same one decord and the probe use.
    # ffmpeg's autorotation runs before this filter chain, so the scale size is the displayed one;
    # scaling even when the size is unchanged pins the output size for the byte arithmetic below.
    stream = ffmpeg.input(os.path.abspath(path), nostdin=None, hide_banner=None, loglevel="error")
    stream = stream.output("pipe:", vf=f"select={select},scale={width}:{height}", **output_options)
    exe = _ffmpeg_exe()
    args = stream.compile(cmd=exe)
    out = args.index("pipe:")
    # Passthrough: every selected frame exactly once. -xerror: stop at the first packet the decoder
    # rejects (as decord does) rather than hand out concealed, damaged frames; messages about
    # concealment alone do not stop it.
    return [*args[:out], *_passthrough_option(exe), "-xerror", *args[out:]]


def _ffmpeg_select(
    path: str | os.PathLike[str],
    select: str,
    width: int,
    height: int,
    max_frames: int | None,
    timeout: float,
    keep_last: bool,
) -> list[np.ndarray]:
    frame_bytes = width * height * 3
    try:
        args = _ffmpeg_decode_args(path, select, width, height, max_frames)
        returncode, stderr, raw = _run_ffmpeg(args, timeout, frame_bytes, keep_last)
    except _Timeout as exc:
        raise VideoError(path, str(exc)) from None
    if returncode != 0:
        raise VideoError(path, f"cannot decode video ({_ffmpeg_cause(stderr, path)})")
    if stderr.strip():  # decoding errors stopped ffmpeg above; what is left is muxer chatter
        log.debug("%s: ffmpeg said: %s", path, _ffmpeg_cause(stderr, path))
    return [np.frombuffer(chunk, np.uint8).reshape(height, width, 3) for chunk in raw]


def _select_expression(unique: np.ndarray) -> str:
    """ffmpeg ``select`` expression true for the sorted frame numbers ``unique``.

    Runs of consecutive frames become one ``between`` term, so dense requests stay short on the
    command line. Commas are escaped for the filtergraph parser.
    """
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    terms = []
    for run in np.split(unique, breaks):
        first, last = int(run[0]), int(run[-1])
        terms.append(f"eq(n\\,{first})" if first == last else f"between(n\\,{first}\\,{last})")
    return "+".join(terms)


def read(
    path: str | os.PathLike[str], wanted: np.ndarray, info: VideoInfo, size: tuple[int, int] | None
) -> np.ndarray:
    """Frames ``wanted`` of ``info``'s video (clamped to the last decodable one), scaled to ``size``."""
    width, height = size if size is not None else (info.width, info.height)
    unique, inverse = np.unique(np.minimum(wanted, max(info.num_frames - 1, 0)), return_inverse=True)
    timeout = FFMPEG_TIMEOUT_S + float(unique[-1]) / _MIN_DECODE_FPS
    select = _select_expression(unique)
    frames = _ffmpeg_select(path, select, width, height, len(unique), timeout, keep_last=False)
    if len(frames) < len(unique):
        # The file ends before the count its header gave. ffmpeg numbers frames as it decodes them,
        # so the missing ones are exactly the last indices; they get the last decodable frame, which
        # a second pass finds by keeping only the final frame after the ones already seen.
        after = int(unique[len(frames) - 1]) + 1 if frames else 0
        tail = _ffmpeg_select(path, f"gte(n\\,{after})", width, height, None, timeout, keep_last=True)
        if not frames and not tail:
            raise VideoError(path, "cannot decode video (no frame could be decoded)")
        last = tail[-1] if tail else frames[-1]
        log.debug("%s: %d of %d frames past the end; clamped", path, len(unique) - len(frames), len(unique))
        frames += [last] * (len(unique) - len(frames))
    return np.stack(frames)[inverse]
