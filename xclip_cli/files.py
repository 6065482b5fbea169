"""One home for the file rules: atomic writes with the user's umask, regular-file checks that never block,
reads of a user's file under a timeout, and exclusive locks on what we write.

* :func:`atomic_write` replaces a file all or nothing (temporary file in the same folder, fsync, rename,
  fsync of the folder); the new file gets the mode the old one had, else what ``open()`` would give it.
* :func:`open_regular` opens a user's file for reading without ever blocking on a FIFO or a device.
* :func:`with_timeout` runs a read of a user's file (a hung network mount) under a time limit.
* :class:`FileLock` is an exclusive ``fcntl`` lock on a sidecar file, held for a whole run; the kernel
  drops it when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from .errors import FileLockedError

T = TypeVar("T")
#: Seconds a read of a small user file (labels, lists, a report) may take: a hung network mount.
READ_TIMEOUT_S = 120.0
PathLike = str | os.PathLike[str]


def umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def fsync_folder(folder: PathLike) -> None:
    """Make a rename in `folder` durable (best effort: not every platform can fsync a folder)."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


@contextlib.contextmanager
def _replacing(target: Path, mode: int) -> Iterator[tuple[int, str]]:
    """``(handle, name)`` of a temporary file beside `target` for the caller to fill (and fsync); then it
    gets `mode` and replaces `target`, and the rename is made durable. On any error it is removed and
    `target` is left as it was."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        yield handle, temporary
        os.chmod(temporary, mode)  # mkstemp makes 0600 files
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_folder(target.parent)


def atomic_write(path: PathLike, write: Callable[[IO[Any]], Any], *, binary: bool = False) -> None:
    """Replace `path` with what ``write(handle)`` produces, all or nothing, even across a crash.

    Raises OSError (disk full, read-only folder...) with `path` untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = default_mode()
    with (
        _replacing(target, mode) as (handle, _),
        os.fdopen(
            handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})
        ) as fh,
    ):
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_save(path: PathLike, save: Callable[[str], Any]) -> None:
    """Replace `path` with the file ``save(temporary_name)`` writes, for libraries that write by name
    (safetensors): a temporary file in the same folder, the umask's mode, fsync, rename. On any error the
    temporary file is removed and `path` is left as it was."""
    with _replacing(Path(path), default_mode()) as (handle, temporary):
        os.close(handle)
        save(temporary)
        with open(temporary, "rb") as fh:
            os.fsync(fh.fileno())


def is_regular(path: PathLike) -> bool:
    """Whether `path` is a regular file (following symlinks); never blocks, never raises."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def open_regular(path: PathLike) -> IO[bytes]:
    """Open a user's file for binary reading; OSError (ENXIO-like) for anything but a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer; the descriptor is
    checked with fstat before a byte is read, so no stat/open race can slip a FIFO in.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: PathLike, timeout: float | None = None) -> bytes:
    """All of a user's regular file, under `timeout` seconds (None: no limit)."""

    def read() -> bytes:
        with open_regular(path) as fh:
            return fh.read()

    return with_timeout(read, timeout, what=f"reading {path}")


class TextError(ValueError):
    """A user's file that is not text we can read; ``str()`` is ``"<path>:<line>: <what>"``."""


def decode_text(data: bytes, path: PathLike) -> str:
    """The text of a user's file: UTF-8 (a BOM is dropped), or UTF-16 with a BOM (what spreadsheet
    programs write as "Unicode text"). TextError names the file and the line where decoding failed."""
    encoding = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TextError(
            f"{os.fspath(path)}:{line}: not valid {encoding.removesuffix('-sig').upper()} text"
        ) from None


def with_timeout(fn: Callable[[], T], timeout: float | None, what: str = "reading a file") -> T:
    """``fn()`` in a helper thread; TimeoutError after `timeout` seconds (the thread is left to finish or
    hang on its own: a read blocked in the kernel cannot be cancelled, but it no longer holds the run)."""
    if timeout is None:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="xclip-read", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(errno.ETIMEDOUT, f"{what}: no answer after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


#: The sidecar a folder's lock is taken on, inside it (a run folder's ``RUN/.lock``).
FOLDER_LOCK = ".lock"


class FileLock:
    """An exclusive lock on `target` (a report or a run folder) held for a whole run.

    The lock is taken on a sidecar file, ``.<name>.lock`` beside a file or ``.lock`` inside a folder,
    because reports are replaced by renames (a lock on the report's own inode would not survive one).
    A second process gets :class:`FileLockedError` at once (no waiting). The kernel releases the lock
    when the process ends however it ends; a sidecar left by a killed run is reused. Sidecars are empty
    files: the holder removes one on release (a non-empty file of that name is not ours and is left).

    Forked children (decoding and DataLoader workers) do not keep the lock: an ``flock`` belongs to the
    open file, which a fork shares, so a worker outliving a SIGKILLed parent would otherwise hold the
    report or run folder locked against ``--resume``. Each child closes its copy at fork.
    """

    #: Locks held by this process (closed in forked children, see above).
    _held: ClassVar[set[FileLock]] = set()

    def __init__(self, target: PathLike, what: str = "report") -> None:
        self.target = Path(target)
        self.what = what
        self.path = (
            self.target / FOLDER_LOCK
            if self.target.is_dir()
            else self.target.with_name(f".{self.target.name}.lock")
        )
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, default_mode())
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue  # removed by its owner in between: try again
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "lock file is not a regular file", str(self.path))
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FileLockedError(
                    f"{self.target} is in use by another xclip process (lock {self.path}); "
                    f"wait for it to finish or write another {self.what}"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # The owner may have removed the sidecar between our open and our lock: then we hold a lock on
            # a file nobody else will find. Start over on the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                FileLock._held.add(self)
                return self
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        FileLock._held.discard(self)
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_size == 0:
                os.unlink(self.path)  # while still holding the lock; see acquire()
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @classmethod
    def _forget_in_child(cls) -> None:
        for lock in cls._held:
            fd, lock._fd = lock._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's descriptor, and so its lock, stays
        cls._held = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=FileLock._forget_in_child)
