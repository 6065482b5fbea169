"""The ffmpeg backend: the ffmpeg command-line tool, run as a subprocess (ffmpeg-python builds its command).

Slower to start than decord, but it reads anything ffmpeg reads; :mod:`.decode` uses it whenever
decord is missing or cannot open or decode a file. A packet the decoder rejects (``-xerror``) is an
error, not a frame to conceal. Frames come upright (ffmpeg's autorotate) from ffmpeg's "best" stream.

The tool's stderr is captured (never the terminal's), and it runs in a session of its own, so a Ctrl-C
or SIGTERM sent to the terminal's process group does not kill it mid-file; our timeout and cleanup
still kill it. Any ffmpeg binary works, including imageio-ffmpeg's, which ships without ffprobe.

Frame numbers are the ``select`` filter's ``n``: ffmpeg counts frames as it decodes them, which is
what makes them decord's numbers too, so every read decodes from the start of the file up to the last
frame it wants (a seek would land on a keyframe whose number ffmpeg does not know). Only the wanted
frames are scaled and converted to RGB. A file's windows are read in one such pass (:class:`Reader`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from .base import Plan, VideoError, VideoInfo, sorted_unique

log = logging.getLogger(__name__)

#: Wall-clock limit for one ffmpeg probe; decoding gets this plus time proportional to its work.
FFMPEG_TIMEOUT_S = 60.0
#: Slowest decode rate we tolerate before calling ffmpeg stuck (frames per second of video decoded).
_MIN_DECODE_FPS = 50.0
#: The clock a stream's time limit is counted on (tests replace it).
_clock = time.monotonic


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
    """ffmpeg's command line: the ``select``-ed frames of the default video stream, as raw RGB on stdout."""
    import ffmpeg  # ffmpeg-python builds the command line; imported here, only when ffmpeg decodes

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
    # Selecting first means only the wanted frames are scaled and converted to RGB.
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


#: Terms per sum in a select expression: ffmpeg's expression parser rejects a sum of more than 100
#: ("Error while parsing expression"), so longer ones are nested sums of sums.
_MAX_SUM_TERMS = 64


def _select_expression(unique: np.ndarray) -> str:
    """ffmpeg ``select`` expression true for the sorted frame numbers ``unique``.

    Runs of consecutive frames become one ``between`` term, so dense requests stay short on the
    command line; more than :data:`_MAX_SUM_TERMS` terms are grouped into parenthesised sums.
    Commas are escaped for the filtergraph parser.
    """
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    terms = []
    for run in np.split(unique, breaks):
        first, last = int(run[0]), int(run[-1])
        terms.append(f"eq(n\\,{first})" if first == last else f"between(n\\,{first}\\,{last})")
    while len(terms) > _MAX_SUM_TERMS:
        terms = [
            "(" + "+".join(terms[k : k + _MAX_SUM_TERMS]) + ")" for k in range(0, len(terms), _MAX_SUM_TERMS)
        ]
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
        after = int(unique[len(frames) - 1]) + 1 if frames else 0
        last = _last_frame(path, after, frames[-1] if frames else None, width, height, timeout)
        log.debug("%s: %d of %d frames past the end; clamped", path, len(unique) - len(frames), len(unique))
        frames += [last] * (len(unique) - len(frames))
    return _gather(frames, inverse)


def _last_frame(
    path: str | os.PathLike[str],
    after: int,
    latest: np.ndarray | None,
    width: int,
    height: int,
    timeout: float,
) -> np.ndarray:
    """The file's last decodable frame, for wanted frames past it: the file ends before the count its
    header gave.

    ffmpeg numbers frames as it decodes them, so the missing ones are exactly the last indices, those
    from `after` on. A second pass keeps only the final frame from `after` on; when there is none, the
    last frame is `latest`, the last one received before.
    """
    tail = _ffmpeg_select(path, f"gte(n\\,{after})", width, height, None, timeout, keep_last=True)
    if tail:
        return tail[-1]
    if latest is None:
        raise VideoError(path, "cannot decode video (no frame could be decoded)")
    return latest


def _gather(frames: list[np.ndarray], inverse: np.ndarray) -> np.ndarray:
    """``frames[inverse]`` as one array, with no second copy when ``inverse`` is the identity."""
    stacked = np.stack(frames)
    if len(inverse) == len(frames) and (inverse == np.arange(len(inverse))).all():
        return stacked
    return stacked[inverse]


# ------------------------------------------------------------------------------- one pass for many reads

#: At most this many terms in one select expression (a command-line argument: Linux takes 128 KiB
#: per argument, Windows 32 KiB per command line); a plan with more runs of frames takes more passes.
_MAX_SELECT_TERMS = 1000


class Reader:
    """One file whose frames are read several times, e.g. once per window of ``load_clips``.

    Without a :meth:`plan`, each :meth:`read` is a :func:`read` of its own: ffmpeg decodes from the
    start of the file up to the last frame asked for, a pass over the file per read. With one, the
    planned reads come from one ffmpeg process that decodes the file once, start to end, selecting
    every planned frame (more processes only when the frames need more than one select expression);
    each read takes its frames from that stream as they arrive, so memory holds one read's frames
    and those a later read shares with it, never the whole plan. A read that is not planned (or not
    at the planned size) is a :func:`read` of its own.
    """

    def __init__(self, path: str | os.PathLike[str], info: VideoInfo) -> None:
        self.path = os.fspath(path)
        self.info = info
        self._plan = Plan([], info.num_frames)
        self._stream: _FrameStream | None = None
        self._stream_end = 0  # the stream serves planned reads [.., _stream_end)
        self._frames: dict[int, np.ndarray] = {}  # frames from the stream that a planned read still needs
        self._last: np.ndarray | None = None  # the file's last decodable frame, once a stream ended early

    def plan(self, plan: Plan) -> None:
        """The reads to come (shared with the caller, who may have served the first ones elsewhere)."""
        self.close()
        self._plan = plan

    def read(self, wanted: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
        """Frames ``wanted`` (clamped to the last decodable one), scaled to ``size`` (width, height)."""
        width, height = size if size is not None else (self.info.width, self.info.height)
        unique, inverse = np.unique(np.minimum(wanted, max(self.info.num_frames - 1, 0)), return_inverse=True)
        at = self._plan.find(unique)
        if at is None or (self._stream is not None and self._stream.size != (width, height)):
            return read(self.path, wanted, self.info, size)
        if self._stream is None or at >= self._stream_end:
            self._start(at, width, height)
        self._plan.next = at + 1
        stream = self._stream
        for number, frame in stream.frames_until(int(unique[-1])):
            self._frames[number] = frame
        if stream.ended_early and self._last is None:
            self._last = _last_frame(
                self.path, stream.first_unseen, stream.latest, width, height, stream.budget_s
            )
        frames = [self._frames.get(i, self._last) for i in unique.tolist()]
        if self._frames:  # keep only what a later read of this stream asks for
            keep = self._plan.later(at, max(self._frames), stop=self._stream_end)
            self._frames = {n: f for n, f in self._frames.items() if n in keep}
        return _gather(frames, inverse)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self._frames.clear()

    def _start(self, at: int, width: int, height: int) -> None:
        """A stream for the planned reads from `at` on, as many as one select expression takes."""
        self.close()
        reads = self._plan.reads
        end, union = at + 1, reads[at]
        while end < len(reads):
            grown = sorted_unique(np.concatenate([union, reads[end]]))
            if 1 + np.count_nonzero(np.diff(grown) != 1) > _MAX_SELECT_TERMS:
                break
            union, end = grown, end + 1
        self._stream_end = end
        args = _ffmpeg_decode_args(self.path, _select_expression(union), width, height, len(union))
        budget = FFMPEG_TIMEOUT_S + float(union[-1]) / _MIN_DECODE_FPS
        self._stream = _FrameStream(self.path, args, (width, height), union, budget)


class _FrameStream:
    """One ffmpeg process writing the frames ``union`` (sorted) to a pipe, read as they are needed.

    Its time limit counts only the time spent waiting for frames, not the caller's time between reads
    (a decode worker blocked on a full queue while the model runs): a slow model must not make a
    healthy ffmpeg look stuck.
    """

    def __init__(
        self, path: str, args: list[str], size: tuple[int, int], union: np.ndarray, budget: float
    ) -> None:
        self.path = path
        self.size = size
        self.union = union
        self.budget_s = budget
        self.latest: np.ndarray | None = None  # the last frame received
        self._left = budget
        self._seen = 0  # how many frames of `union` came
        self._ended = False
        self._timed_out = threading.Event()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - a file, not a pipe: ffmpeg cannot block on it
        try:
            # A session of its own, as in _run_ffmpeg: Ctrl-C to the terminal's process group must not kill it.
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._err,
                start_new_session=True,
            )
        except BaseException:
            self._err.close()
            raise

    @property
    def ended_early(self) -> bool:
        """The stream ended before every frame of ``union`` came (the file is shorter than its header says)."""
        return self._ended and self._seen < len(self.union)

    @property
    def first_unseen(self) -> int:
        """The frame number after the last one received (0 when none came)."""
        return int(self.union[self._seen - 1]) + 1 if self._seen else 0

    def frames_until(self, index: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame number, frame)`` for the frames of ``union`` up to `index` not yet received.

        Raises:
            VideoError: ffmpeg failed, or ran past its time limit.
        """
        if self._ended or self._seen == len(self.union) or self.union[self._seen] > index:
            return
        width, height = self.size
        frame_bytes = width * height * 3

        def kill() -> None:
            self._timed_out.set()
            self._proc.kill()

        timer = threading.Timer(max(self._left, 0.0), kill)
        started = _clock()
        timer.start()
        try:
            while self._seen < len(self.union) and self.union[self._seen] <= index:
                chunk = self._proc.stdout.read(frame_bytes)
                if len(chunk) < frame_bytes:  # end of stream (a partial frame means ffmpeg died)
                    break
                self.latest = np.frombuffer(chunk, np.uint8).reshape(height, width, 3)
                self._seen += 1
                yield int(self.union[self._seen - 1]), self.latest
            else:
                if self._seen < len(self.union):
                    return  # more to come, for later reads
            self._end()
        finally:
            timer.cancel()
            self._left -= _clock() - started

    def _end(self) -> None:
        self._ended = True
        self._proc.stdout.read()
        returncode = self._proc.wait()
        if self._timed_out.is_set():
            raise VideoError(self.path, str(_Timeout(self.budget_s)))
        self._err.seek(0)
        stderr = self._err.read().decode("utf-8", "replace")
        if returncode != 0:
            raise VideoError(self.path, f"cannot decode video ({_ffmpeg_cause(stderr, self.path)})")
        if stderr.strip():  # decoding errors stopped ffmpeg above; what is left is muxer chatter
            log.debug("%s: ffmpeg said: %s", self.path, _ffmpeg_cause(stderr, self.path))

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._err.close()
