"""The decord backend (the official X-CLIP decoder): fast random access to a handful of frames.

It cannot open some inputs (GIF, WebM without a duration, AV1, 1x1-pixel video); :mod:`.decode` then
falls back to :mod:`.ffmpeg_backend`. Its functions raise whatever the native library raises: the
dispatcher logs :func:`cause` and tries ffmpeg. decord applies a file's rotation but does not report
it, so this module also reads the rotation of MP4/MOV files from their boxes.

libav's and decord's own messages are kept off the terminal unless this module's logger is enabled for
INFO (``xclip -v``); see :func:`_native_output`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import struct
import sys
import tempfile
import threading

import numpy as np

from .base import VideoInfo

log = logging.getLogger(__name__)

try:  # decord has no wheels for some platforms (e.g. macOS arm64); ffmpeg then does all the work
    import decord
except ImportError:  # pragma: no cover - depends on the platform
    decord = None


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Metadata of the video stream decord opens (the same "best" stream as ffmpeg's)."""
    return Reader(path, threads=1).info


def read(
    path: str | os.PathLike[str], wanted: np.ndarray, size: tuple[int, int] | None, threads: int
) -> np.ndarray:
    """Frames ``wanted`` (clamped to the last one), scaled to ``size`` (width, height) when given.

    ``threads``: decord's decoding threads for this file (0 lets FFmpeg choose).
    """
    vr, _ = _open(path, size, threads)
    return _get_batch(vr, wanted)


class Reader:
    """One file: probed once on opening, then read any number of times (e.g. every window), each read
    through a fresh decord reader at the wanted size (the decoder scales, so frames are never converted
    to RGB at full size); see :meth:`read` for why a reader is not reused."""

    def __init__(self, path: str | os.PathLike[str], threads: int) -> None:
        self.path = os.fspath(path)
        self.threads = threads
        self._vr, frame = _open(self.path, None, threads)
        num_frames = len(self._vr)
        fps = float(self._vr.get_avg_fps())
        if not (math.isfinite(fps) and fps > 0):
            raise RuntimeError(f"unusable frame rate {fps}")
        # decord has no width/height accessor; the first frame gives them, already displayed (rotated).
        height, width = frame.shape[:2]
        self.info = VideoInfo(
            path=self.path,
            num_frames=num_frames,
            fps=fps,
            duration=num_frames / fps,
            width=int(width),
            height=int(height),
            rotation=_iso_rotation(self.path),
        )

    def read(self, wanted: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
        """Frames ``wanted`` (clamped to the last one), scaled to ``size`` (width, height) when given.

        Each read has a reader of its own that has decoded nothing yet. A reader that has already
        decoded (the probe's, or an earlier window's) walks forward to the next frames, and near the end
        of a file whose header overstates its frame count (an HMDB-51 AVI: 73 listed, 72 decodable) that
        walk returns frame 69 or 71 for frame 71 from one run to the next; a fresh reader's first read
        gives the same frames every time (on some AVIs one frame early, as the official pipeline's
        decord reads them).
        """
        self._vr = None  # let the old reader go before the next one allocates its buffers
        width, height = size if size is not None else (-1, -1)
        with _native_output(self.path):
            vr = decord.VideoReader(
                self.path, ctx=decord.cpu(0), width=width, height=height, num_threads=self.threads
            )
        return _get_batch(vr, wanted)

    def close(self) -> None:
        self._vr = None


def _open(path: str | os.PathLike[str], size: tuple[int, int] | None, threads: int):
    """A reader scaled to ``size`` (None: as stored) that has read its first frame; and that frame."""
    width, height = size if size is not None else (-1, -1)
    with _native_output(path):
        vr = decord.VideoReader(
            os.fspath(path), ctx=decord.cpu(0), width=width, height=height, num_threads=threads
        )
    frame = _to_numpy(vr.next())
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise RuntimeError(f"bad frame shape {frame.shape}")  # seen for 1x1-pixel video
    return vr, frame


def _get_batch(vr, wanted: np.ndarray) -> np.ndarray:
    # Sorted unique indices let decord walk the file forward once.
    unique, inverse = np.unique(np.minimum(wanted, len(vr) - 1), return_inverse=True)
    batch = _to_numpy(vr.get_batch(unique.tolist()))
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[3] != 3:
        raise RuntimeError(f"bad batch shape {batch.shape}")
    if len(unique) == len(wanted) and (inverse == np.arange(len(wanted))).all():
        return batch  # asked in order without repeats (the usual case): no gather copy
    return batch[inverse]


def cause(exc: Exception) -> str:
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


# File descriptor 2 belongs to the whole process: one redirection at a time.
_native_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _native_output(path: str | os.PathLike[str]):
    """Keep decord's native messages off the terminal (they cut through a progress bar and ``-q``).

    libav's log goes through its level (QUIET). decord's own C++ log ("[12:00:00] .../video_reader.cc:83:
    ERROR opening: ...", e.g. for a truncated MP4) has no switch, so file descriptor 2 points at a scratch
    file while a reader opens, and what was written there goes to the debug log. With the logger enabled
    for INFO (``xclip -v``) both reach stderr as before.
    """
    if log.isEnabledFor(logging.INFO):
        decord.logging.set_level(decord.logging.ERROR)
        yield
        return
    decord.logging.set_level(decord.logging.QUIET)
    with _native_stderr_lock:
        try:
            # A scratch file per reader (an unlinked temporary file costs microseconds): nothing is
            # kept between calls, so nothing can be shared by a fork either.
            sink = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        except OSError:  # no temporary folder: let the messages through
            yield
            return
        with sink:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):  # no fd 2: let the messages through
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
