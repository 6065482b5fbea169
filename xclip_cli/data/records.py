"""One listed video, and the one clip-list grammar of ``xclip eval -d csv`` and ``xclip finetune --data``.

A :class:`VideoRecord` is what every command works on: a file, its class name when known, and an optional
``[start, end)`` range in seconds. :func:`read_clip_list` reads the one CSV grammar::

    path,label[,start,end]        # header optional (columns in any order with a header)
    videos/a.mp4,swimming
    videos/b.mp4,riding a bike,12.5,20

Every problem is reported with its ``file:line``, all at once, never just the first. Whether a listed
file must exist is the caller's policy (evaluation reports missing files, fine-tuning refuses them).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..files import READ_TIMEOUT_S, TextError, decode_text, read_bytes

__all__ = ["COLUMNS", "VideoRecord", "file_problem", "format_clip_list", "read_clip_list"]

#: The columns of a clip list, in headerless order.
COLUMNS = ("path", "label", "start", "end")


@dataclass(frozen=True)
class VideoRecord:
    """One listed video: a file, its class name (None when unknown) and an optional ``[start, end)`` range.

    ``where`` (``"clips.csv:12"``) says where it was listed, for messages; it takes no part in equality.
    It has the ``path``, ``start`` and ``end`` a clip loader needs (:func:`xclip_cli.video.clips.load_clips`).
    """

    path: str
    label: str | None = None
    start: float | None = None
    end: float | None = None
    where: str = field(default="", compare=False)


def _seconds(text: str, column: str, where: str, problems: list[str]) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{where}: {column} must be a number of seconds, got {text!r}")
        return None
    if not math.isfinite(value) or value < 0:
        problems.append(f"{where}: {column} must be a non-negative number of seconds, got {text!r}")
        return None
    return value


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be a training clip (missing, not a regular file, empty, unreadable), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return f"cannot access file ({err.strerror})"
    if not path.is_file():
        return "not a regular file"
    if st.st_size == 0:
        return "empty file"
    if not os.access(path, os.R_OK):
        return "cannot read file (permission denied)"
    return None


def read_clip_list(
    path: str | os.PathLike[str], *, require_label: bool = True, timeout: float | None = READ_TIMEOUT_S
) -> tuple[list[VideoRecord], list[str]]:
    """Read a ``path,label[,start,end]`` CSV (header optional). Returns the records and every problem.

    Paths are returned as listed (relative ones are relative to whatever the caller decides, usually
    the CSV's folder); files are not checked here. Problems (``file:line: what``): unreadable file, not
    UTF-8, malformed CSV, wrong number of fields, empty paths or labels (when `require_label`), bad time
    ranges, no rows. Nothing is raised, so that all of them can be reported at once.
    """
    file = Path(path).expanduser()
    try:
        raw = read_bytes(file, timeout=timeout)
    except FileNotFoundError:
        return [], [f"{file}: clip list not found"]
    except IsADirectoryError:
        return [], [f"{file}: is a folder, not a CSV clip list"]
    except OSError as err:
        if file.is_dir():
            return [], [f"{file}: is a folder, not a CSV clip list"]
        return [], [f"{file}: cannot read ({err.strerror or err})"]
    try:
        text = decode_text(raw, file)
    except TextError as err:
        return [], [str(err)]
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[VideoRecord] = []
    problems: list[str] = []
    col: dict[str, int] | None = None  # None: no header, positional columns
    first = True
    try:
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            where = f"{file}:{reader.line_num}"
            if first:
                first = False
                names = [c.strip().lower() for c in row]
                if "path" in names:
                    if require_label and "label" not in names:
                        return [], [
                            f"{where}: a header needs path,label[,start,end] columns; got {','.join(row)}"
                        ]
                    col = {name: names.index(name) for name in COLUMNS if name in names}
                    continue
            if not 2 - (not require_label) <= len(row) <= (len(COLUMNS) if col is None else len(col)):
                problems.append(
                    f"{where}: expected 'path,label' (then optionally start,end); got {len(row)} field(s)"
                )
                continue
            if col is None:
                cell = {name: row[i].strip() if i < len(row) else "" for i, name in enumerate(COLUMNS)}
            else:
                cell = {name: (row[i].strip() if i < len(row) else "") for name, i in col.items()}
            if not cell["path"]:
                problems.append(f"{where}: empty path")
                continue
            label = cell.get("label", "") or None
            if require_label and label is None:
                problems.append(f"{where}: empty label")
                continue
            known = len(problems)
            start = _seconds(cell.get("start", ""), "start", where, problems)
            end = _seconds(cell.get("end", ""), "end", where, problems)
            if len(problems) > known:
                continue
            if start is not None and end is not None and end <= start:
                problems.append(f"{where}: end ({end:g} s) must be after start ({start:g} s)")
                continue
            records.append(VideoRecord(cell["path"], label, start, end, where))
    except csv.Error as err:
        problems.append(f"{file}:{reader.line_num}: malformed CSV ({err})")
    if not records and not problems:
        problems.append(f"{file}: no clips listed")
    return records, problems


def format_clip_list(records: Sequence[VideoRecord]) -> str:
    """The records as a ``path,label,start,end`` CSV with a header (times as ``repr``: read back exactly)."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(COLUMNS)
    for r in records:
        out.writerow(
            [
                r.path,
                "" if r.label is None else r.label,
                "" if r.start is None else repr(r.start),
                "" if r.end is None else repr(r.end),
            ]
        )
    return buffer.getvalue()
