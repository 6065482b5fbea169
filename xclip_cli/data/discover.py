"""Turn what the user typed (files, folders, glob patterns, ``-`` for stdin) into a sorted list of videos."""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

__all__ = ["DEFAULT_EXTENSIONS", "Discovery", "discover", "normalize_extensions"]

#: Extensions (lower case, no dot) of the files kept when walking a folder. Explicitly named files are
#: taken whatever their extension. Note that ``ts`` (MPEG transport stream) also matches TypeScript
#: sources; such files fail to decode and are reported per file.
DEFAULT_EXTENSIONS: tuple[str, ...] = (
    "3g2", "3gp", "asf", "avi", "dv", "f4v", "flv", "gif", "m2ts", "m2v", "m4v", "mkv", "mov", "mp4",
    "mpe", "mpeg", "mpg", "mts", "mxf", "ogv", "qt", "ts", "vob", "webm", "wmv",
)  # fmt: skip

_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass
class Discovery:
    """The videos found (sorted, deduplicated) and one message per input that could not be used."""

    paths: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def normalize_extensions(extensions: str | Iterable[str]) -> frozenset[str]:
    """``"MP4,.mkv"`` or ``["mp4", ".MKV"]`` -> ``{"mp4", "mkv"}``; ``"*"`` stands for any extension."""
    if isinstance(extensions, str):
        extensions = extensions.split(",")
    found = {e.strip().lstrip(".").lower() for e in extensions}
    found.discard("")
    return frozenset(found)


def discover(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    extensions: str | Iterable[str] = DEFAULT_EXTENSIONS,
    stdin: TextIO | BinaryIO | None = None,
    null: bool = False,
    include_hidden: bool = False,
) -> Discovery:
    """Expand `inputs` into video paths.

    Each input is one of:

    * ``-``: read paths from `stdin` (``sys.stdin`` when None), one per line, or NUL-separated when
      `null` is true (``find ... -print0``); blank entries are ignored, ``\\r`` of CRLF lists is
      dropped, and each path is then handled like an input typed on the command line (a literal
      ``-`` read from stdin is a file named ``-``);
    * an existing file: kept whatever its extension, since the user named it;
    * a directory: walked recursively, following symlinks, keeping files whose extension (case-
      insensitive) is in `extensions`. A symlink that leads back to one of its own parent folders is
      reported once as a loop and not followed; a folder reached twice through links is walked once;
      unreadable folders and broken links are reported and the walk goes on;
    * a path that does not exist but contains glob characters (``* ? [``): expanded like the shell
      would, with ``**`` matching any number of folders (loop-safe, unlike ``glob.glob``); matched
      files are kept as if named, matched folders are walked;
    * anything else is reported as ``no such file or directory: X``.

    Hidden entries (names starting with ``.``) are skipped inside walked folders and by glob
    wildcards, unless `include_hidden`: that keeps ``.git``, ``.cache`` and macOS ``._clip.mp4``
    resource forks (which are not videos) out of a library scan. A hidden file or folder named
    explicitly is always used.

    Paths keep the spelling the user gave (relative stays relative). The result is deduplicated by
    real path (symlinks and ``./x`` spellings of one file count once; the first spelling met in input
    order wins) and sorted by its string form, so the order never depends on the file system.
    """
    finder = _Finder(normalize_extensions(extensions), include_hidden)
    for raw in inputs:
        if isinstance(raw, str) and raw == "-":
            for entry in _read_stdin(stdin, null):
                finder.add(entry)
        else:
            finder.add(os.fspath(raw))

    unique: dict[str, str] = {}
    for found in finder.found:
        unique.setdefault(os.path.realpath(found), found)
    paths = sorted((Path(p) for p in unique.values()), key=str)
    # The same problem can be met twice (a folder named and also matched by a pattern): say it once.
    return Discovery(paths=paths, problems=list(dict.fromkeys(finder.problems)))


def _read_stdin(stream: TextIO | BinaryIO | None, null: bool) -> list[str]:
    if stream is None:
        # Bytes, so that file names that are not valid UTF-8 survive (as surrogate escapes).
        stream = getattr(sys.stdin, "buffer", sys.stdin)
    data = stream.read()
    text = os.fsdecode(data) if isinstance(data, bytes) else data
    entries = text.split("\0") if null else [line.removesuffix("\r") for line in text.split("\n")]
    return [entry for entry in entries if entry.strip()]


class _Finder:
    """Collects files in discovery order plus problems; remembers walked folders across inputs."""

    def __init__(self, extensions: frozenset[str], include_hidden: bool) -> None:
        self.extensions = extensions
        self.include_hidden = include_hidden
        self.found: list[str] = []
        self.problems: list[str] = []
        self.walked: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every folder walked or queued

    def add(self, raw: str) -> None:
        try:
            st = os.stat(raw)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.lexists(raw):
                self.problems.append(f"broken symlink: {raw}")
            elif _GLOB_MAGIC.search(raw):
                self._add_glob(raw)
            else:
                self.problems.append(f"no such file or directory: {raw}")
            return
        except OSError as exc:  # permission denied on a parent, symlink pointing at itself, ...
            self.problems.append(f"cannot access {raw}: {exc.strerror or exc}")
            return
        self._add_existing(raw, st)

    def _add_existing(self, path: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            self._walk(path, st)
        else:
            # Regular files, but also FIFOs and devices: the user named them, the decoder will judge.
            self.found.append(path)

    def _wanted(self, name: str) -> bool:
        if "*" in self.extensions:
            return True
        _, dot, ext = name.rpartition(".")
        return bool(dot) and ext.lower() in self.extensions

    def _visible(self, name: str) -> bool:
        return self.include_hidden or not name.startswith(".")

    def _walk(self, root: str, root_st: os.stat_result) -> None:
        root_key = (root_st.st_dev, root_st.st_ino)
        if root_key in self.walked:
            return  # the same folder was already walked under another spelling
        self.walked.add(root_key)
        # Iterative depth-first walk; each entry carries the keys of its ancestors so that a link back
        # to an ancestor (a loop) can be told apart from a second link to an unrelated folder.
        stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(root, (root_key,))]
        while stack:
            folder, ancestors = stack.pop()
            entries = self._scandir(folder)
            subfolders = []
            for entry in entries:
                if not self._visible(entry.name):
                    continue
                path = os.path.join(folder, entry.name)
                try:
                    if entry.is_dir():  # follows symlinks
                        st = entry.stat()
                        key = (st.st_dev, st.st_ino)
                        if key in ancestors:
                            self.problems.append(
                                f"symlink loop: {path} -> {os.path.realpath(path)}, not followed"
                            )
                        elif key not in self.walked:
                            self.walked.add(key)
                            subfolders.append((path, (*ancestors, key)))
                    elif entry.is_file():
                        if self._wanted(entry.name):
                            self.found.append(path)
                    elif entry.is_symlink() and not os.path.exists(path) and self._wanted(entry.name):
                        self.problems.append(f"broken symlink: {path}")
                except OSError as exc:
                    self.problems.append(f"cannot access {path}: {exc.strerror or exc}")
            stack.extend(reversed(subfolders))  # pop in name order

    def _scandir(self, folder: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.problems.append(f"cannot read directory {folder}: {exc.strerror or exc}")
            return []

    # -- glob patterns -------------------------------------------------------------------------
    # glob.glob(recursive=True) follows symlinked folders under "**" without loop detection, which can
    # explode on a tree with two loops; this small matcher reuses the walker's loop rule instead.

    def _add_glob(self, pattern: str) -> None:
        parts = pattern.split(os.sep)
        split = next(i for i, part in enumerate(parts) if _GLOB_MAGIC.search(part))
        base = os.sep.join(parts[:split])
        if not base and pattern.startswith(os.sep):
            base = os.sep
        matches = list(self._match(base, parts[split:], ()))
        if not matches:
            self.problems.append(f"no such file or directory: {pattern} (pattern matched nothing)")
            return
        for match in matches:
            try:
                st = os.stat(match)
            except OSError as exc:
                self.problems.append(f"cannot access {match}: {exc.strerror or exc}")
                continue
            self._add_existing(match, st)

    def _match(self, base: str, parts: list[str], ancestors: tuple[tuple[int, int], ...]) -> Iterator[str]:
        if not parts:
            yield base or os.curdir  # "**" matching zero folders at the top: the current folder
            return
        part, rest = parts[0], parts[1:]
        join = (lambda name: os.path.join(base, name)) if base else (lambda name: name)
        if part == "":  # "a//b" or a trailing slash
            yield from self._match(base, rest, ancestors)
        elif part == "**":
            # "**" also matches zero folders. A trailing "**" thus yields folders only, which are then
            # walked with the extension filter, rather than every file below them.
            yield from self._match(base, rest, ancestors)
            try:
                here = os.stat(base or os.curdir)
            except OSError:
                return
            if (here.st_dev, here.st_ino) not in ancestors:
                ancestors = (*ancestors, (here.st_dev, here.st_ino))
            for entry in self._scandir(base or os.curdir):
                if not self._visible(entry.name):
                    continue
                try:
                    if not entry.is_dir():
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    link = join(entry.name)
                    self.problems.append(f"symlink loop: {link} -> {os.path.realpath(link)}, not followed")
                    continue
                yield from self._match(join(entry.name), parts, (*ancestors, key))
        elif _GLOB_MAGIC.search(part):
            for entry in self._scandir(base or os.curdir):
                # Like the shell: wildcards only match hidden names when the pattern itself starts with ".".
                if not (self._visible(entry.name) or part.startswith(".")):
                    continue
                if not fnmatch.fnmatchcase(entry.name, part):
                    continue
                if not rest:
                    yield join(entry.name)
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                if is_dir:
                    yield from self._match(join(entry.name), rest, ancestors)
        else:
            path = join(part)
            if not rest:
                if os.path.lexists(path):
                    yield path
            elif os.path.isdir(path):
                yield from self._match(path, rest, ancestors)
