"""Probe videos and decode only the frames a model needs.

Two backends:

* decord (the official X-CLIP decoder): fast random access to a handful of frames. It cannot open
  some inputs (GIF, WebM without a duration, AV1, 1x1-pixel video).
* the ffmpeg command-line tool, driven through ffmpeg-python: slower to start, but it reads
  anything ffmpeg reads. Used whenever decord is missing or cannot open or decode a file.

A packet the decoder rejects (a damaged file) is an error in both backends, not a frame to conceal.

Both backends return frames upright (rotation metadata applied: decord >= 0.6 and ffmpeg's
autorotate both honour it) and pick the same stream when a file has several video streams (ffmpeg's
"best" stream, the one with the highest resolution).

Nothing here writes to the terminal: libav's own messages (decord's bundled FFmpeg logs straight to
stderr) are silenced unless this module's logger is enabled for INFO (``xclip -v``), and the ffmpeg
tool's stderr is captured. ffmpeg runs in a session of its own, so a Ctrl-C or SIGTERM sent to the
terminal's process group does not kill it mid-file; our timeout and cleanup still kill it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import XClipError

log = logging.getLogger(__name__)

try:  # decord has no wheels for some platforms (e.g. macOS arm64); ffmpeg then does all the work
    import decord
except ImportError:  # pragma: no cover - depends on the platform
    decord = None

#: Default decord decoding threads per file (``read_frames(threads=None)``); 0 lets FFmpeg choose.
#: Decode workers pass 1: with one worker per core, extra decoder threads only add work (a threaded
#: decoder refills its pipeline after every seek).
DECODER_THREADS = 0

#: Wall-clock limit for one ffmpeg probe; decoding gets this plus time proportional to its work.
FFMPEG_TIMEOUT_S = 60.0
#: Slowest decode rate we tolerate before calling ffmpeg stuck (frames per second of video decoded).
_MIN_DECODE_FPS = 50.0


class VideoError(XClipError):
    """A video that cannot be read, with one human-readable cause.

    ``str(error)`` is ``"<path>: <reason>"``. Built as ``VideoError(path, reason)``; the one-argument
    form (a whole message) also works, so that the error survives re-raising across processes.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return self.path if self.reason is None else f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder reports about a video's (best) video stream.

    ``width``/``height`` are as displayed, i.e. after ``rotation`` (clockwise degrees from the
    container's display matrix) has been applied. ``duration`` is ``num_frames / fps``, the length
    the frame indices span; it is None only when the frame rate is unknown.
    """

    path: str
    num_frames: int
    fps: float
    duration: float | None
    width: int
    height: int
    rotation: int


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's metadata cheaply (decord; ffmpeg when decord cannot open the file).

    Raises:
        VideoError: the file is missing, unreadable, has no video stream or cannot be decoded.
    """
    _check_file(path)
    if decord is not None:
        try:
            return _probe_decord(path)
        except Exception as exc:  # a native library raising assorted types
            log.debug("%s: decord cannot probe (%s); using ffmpeg", path, _decord_cause(exc))
    return _probe_ffmpeg(path)


def read_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    *,
    short_side: int | None = None,
    info: VideoInfo | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` as uint8 RGB ``[N, H, W, 3]``, upright, in the order asked.

    Indices may repeat and be unsorted. Indices past the last decodable frame (headers often
    overstate the count) are clamped to it. With ``short_side``, the decoder downscales so that the
    shorter side is ``short_side`` pixels (aspect ratio kept; never upscales), which saves most of
    the memory and resize work for HD video. ``info`` (from :func:`probe`) saves a second probe.
    ``threads``: decord's decoding threads (None: :data:`DECODER_THREADS`, or what the decode worker
    running this call set with :func:`set_decoder_threads`).

    Raises:
        VideoError: the video cannot be read.
        ValueError: ``indices`` is empty or has negative values.
    """
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("no frame indices requested")
    if wanted.min() < 0:
        raise ValueError(f"negative frame index {int(wanted.min())}")
    _check_file(path)
    if short_side is not None and info is None:
        info = probe(path)  # the target size depends on the source size
    if decord is not None:
        size = _scaled_size(info.width, info.height, short_side) if info is not None else None
        try:
            return _read_decord(path, wanted, size, _threads if threads is None else threads)
        except Exception as exc:  # a native library raising assorted types
            log.debug("%s: decord cannot decode (%s); using ffmpeg", path, _decord_cause(exc))
    if info is None:
        info = probe(path)
    return _read_ffmpeg(path, wanted, info, _scaled_size(info.width, info.height, short_side))


# ---------------------------------------------------------------------------------------------- helpers


def _check_file(path: str | os.PathLike[str]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "not found") from None
    except OSError as exc:
        raise VideoError(path, f"cannot access file ({exc.strerror})") from None
    # A FIFO or device would make readers block forever.
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "cannot read file (permission denied)")
    if st.st_size == 0:
        raise VideoError(path, "empty file")


def _scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int] | None:
    """(width, height) with the shorter side at ``short_side``; None when no downscale is needed."""
    if short_side is None or min(width, height) <= short_side:
        return None
    if width <= height:
        return short_side, max(1, int(height * short_side / width + 0.5))
    return max(1, int(width * short_side / height + 0.5)), short_side


def _decord_cause(exc: Exception) -> str:
    """decord messages carry timestamps and source paths of its build machine; keep the reason."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    text = re.sub(r"^\[[^\]]*\] ", "", text.strip())  # "[<the file name>] Failed to ..."
    return text[:200]


def _to_numpy(batch: object) -> np.ndarray:
    # decord returns its own NDArray, or a torch/mxnet/tf tensor when a caller changed its bridge.
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


# ------------------------------------------------------------------------------------------------ decord


_threads = DECODER_THREADS


def set_decoder_threads(threads: int) -> None:
    """The decoding threads of this process's ``read_frames`` calls (a decode worker sets 1 at start)."""
    global _threads
    _threads = int(threads)


_native_stderr_lock = threading.Lock()
_native_stderr_sink: tuple[int, Any] | None = None  # (pid, file): one per process, never shared by a fork


@contextlib.contextmanager
def _native_output(path: str | os.PathLike[str]):
    """Keep decord's native messages off the terminal (they cut through a progress bar and ``-q``).

    libav's log goes through its level (QUIET). decord's own C++ log ("[12:00:00] .../video_reader.cc:83:
    ERROR opening: ...", e.g. for a truncated MP4) has no switch, so file descriptor 2 points at a scratch
    file while a reader opens, and what was written there goes to this module's debug log. With this
    logger enabled for INFO (``xclip -v``) both reach stderr as before.
    """
    global _native_stderr_sink
    if log.isEnabledFor(logging.INFO):
        decord.logging.set_level(decord.logging.ERROR)
        yield
        return
    decord.logging.set_level(decord.logging.QUIET)
    with _native_stderr_lock:
        try:
            if _native_stderr_sink is None or _native_stderr_sink[0] != os.getpid():
                _native_stderr_sink = (os.getpid(), tempfile.TemporaryFile())  # noqa: SIM115 - kept open
            sink = _native_stderr_sink[1]
            sink.seek(0)
            sink.truncate()
            if sys.stderr is not None:
                sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no fd 2, no temporary folder: let the messages through
            yield
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(4096).decode("utf-8", "replace").strip()
            if text:
                log.debug("%s: decord said: %s", path, " / ".join(text.splitlines()))


def _probe_decord(path: str | os.PathLike[str]) -> VideoInfo:
    with _native_output(path):
        vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), num_threads=1)
    num_frames = len(vr)
    fps = float(vr.get_avg_fps())
    if not (math.isfinite(fps) and fps > 0):
        raise RuntimeError(f"unusable frame rate {fps}")
    # decord has no width/height accessor; one decoded frame is the cheapest way to get them, and
    # its shape is already the displayed (rotated) one.
    frame = _to_numpy(vr.next())
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise RuntimeError(f"bad frame shape {frame.shape}")  # seen for 1x1-pixel video
    height, width = frame.shape[:2]
    return VideoInfo(
        path=os.fspath(path),
        num_frames=num_frames,
        fps=fps,
        duration=num_frames / fps,
        width=int(width),
        height=int(height),
        rotation=_iso_rotation(path),
    )


def _read_decord(
    path: str | os.PathLike[str], wanted: np.ndarray, size: tuple[int, int] | None, threads: int
) -> np.ndarray:
    width, height = size if size is not None else (-1, -1)
    with _native_output(path):
        vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), width=width, height=height, num_threads=threads)
    # Sorted unique indices let decord walk the file forward once.
    unique, inverse = np.unique(np.minimum(wanted, len(vr) - 1), return_inverse=True)
    batch = _to_numpy(vr.get_batch(unique.tolist()))
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[3] != 3:
        raise RuntimeError(f"bad batch shape {batch.shape}")
    return batch[inverse]


# ------------------------------------------------------------------------------------------------ ffmpeg


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


# "-fps_mode" arrived in ffmpeg 5.1 and "-vsync" left in ffmpeg 8: the new one first, and per binary
# the old one once ffmpeg rejected the new (system and imageio-ffmpeg binaries differ in version).
_OLD_PASSTHROUGH: set[str] = set()


def _passthrough_option(exe: str) -> list[str]:
    return ["-vsync", "passthrough"] if exe in _OLD_PASSTHROUGH else ["-fps_mode", "passthrough"]


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


def _probe_ffmpeg(path: str | os.PathLike[str]) -> VideoInfo:
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
    return args[:out] + _passthrough_option(exe) + ["-xerror"] + args[out:]


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
    args = _ffmpeg_decode_args(path, select, width, height, max_frames)
    try:
        returncode, stderr, raw = _run_ffmpeg(args, timeout, frame_bytes, keep_last)
        if returncode != 0 and "fps_mode" in stderr and "-fps_mode" in args:
            _OLD_PASSTHROUGH.add(args[0])  # ffmpeg older than 5.1
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


def _read_ffmpeg(
    path: str | os.PathLike[str], wanted: np.ndarray, info: VideoInfo, size: tuple[int, int] | None
) -> np.ndarray:
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


# ------------------------------------------------------------------------------------- ISO-BMFF rotation

# Top-level box types that mark an MP4/MOV/3GP file; anything else is not ISO-BMFF.
_ISO_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"junk"}
_MAX_MOOV_BYTES = 256 << 20


def _iso_rotation(path: str | os.PathLike[str]) -> int:
    """Clockwise rotation (0/90/180/270) from the first video track's tkhd matrix of an MP4/MOV.

    decord applies this rotation but does not report it, and an ffprobe process costs ~0.1 s; reading
    the few boxes on the way to ``moov/trak/tkhd`` costs well under a millisecond. Other containers
    (Matroska, AVI, ...) rarely carry rotation and report 0.
    """
    try:
        with open(path, "rb") as f:
            moov = _read_top_level_box(f, b"moov")
    except OSError:
        return 0
    if moov is None:
        return 0
    for trak in _boxes(moov, b"trak"):
        tkhd = next(_boxes(trak, b"tkhd"), None)
        mdia = next(_boxes(trak, b"mdia"), None)
        hdlr = next(_boxes(mdia, b"hdlr"), None) if mdia is not None else None
        if tkhd is None or hdlr is None or hdlr[8:12] != b"vide":
            continue
        matrix_at = 4 + (32 if tkhd[0] == 1 else 20) + 16  # version/flags, times and ids, layer...
        if len(tkhd) < matrix_at + 36:
            return 0
        a, b = struct.unpack_from(">2i", tkhd, matrix_at)
        return round(math.degrees(math.atan2(b, a))) % 360
    return 0


def _read_top_level_box(f, wanted: bytes) -> bytes | None:
    """Payload of the first top-level box of type ``wanted`` (skipping over mdat without reading it)."""
    size_of_file = os.fstat(f.fileno()).st_size
    offset = 0
    while offset + 8 <= size_of_file:
        f.seek(offset)
        header = f.read(16)
        size, kind = struct.unpack_from(">I4s", header)
        header_len = 8
        if size == 1 and len(header) >= 16:
            size, header_len = struct.unpack_from(">Q", header, 8)[0], 16
        elif size == 0:
            size = size_of_file - offset
        if kind not in _ISO_TOP_LEVEL or size < header_len:
            return None
        if kind == wanted:
            if size > _MAX_MOOV_BYTES:
                return None
            f.seek(offset + header_len)
            return f.read(size - header_len)
        offset += size
    return None


def _boxes(data: bytes, wanted: bytes):
    """Payloads of the child boxes of type ``wanted`` inside a box payload."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        header_len = 8
        if size == 1 and offset + 16 <= len(data):
            size, header_len = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif size == 0:
            size = len(data) - offset
        if size < header_len:
            return
        if kind == wanted:
            yield data[offset + header_len : offset + size]
        offset += size
