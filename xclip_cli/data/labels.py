"""Label vocabularies: read label files, merge them with extra labels, and apply prompt templates.

Two file formats are understood:

* plain text, one label per line; surrounding whitespace is stripped, blank lines and lines starting
  with ``#`` are ignored (a ``#`` later in a line is part of the label, e.g. ``playing C# guitar``);
* CSV with a ``name`` column (the layout of the official X-CLIP label files, ``id,name``). A file is read
  as CSV when its name ends in ``.csv`` or when its first line is a comma-separated header with a
  ``name`` field.

Both may start with a UTF-8 BOM, use CRLF line endings, or be UTF-16 with a BOM (what spreadsheet
programs write as "Unicode text").
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..files import READ_TIMEOUT_S, TextError, decode_text, read_bytes

__all__ = ["DEFAULT_TEMPLATES", "LabelsError", "Vocabulary", "build_vocabulary", "read_labels"]

PathLike = str | os.PathLike[str]

#: The label text as it is: what the official X-CLIP zero-shot evaluation feeds the text encoder.
DEFAULT_TEMPLATES: tuple[str, ...] = ("{}",)


class LabelsError(UsageError):
    """A label file, label or template cannot be used. The message names the file (and line)."""


def read_labels(path: PathLike) -> list[str]:
    """Return the labels of a plain-text or CSV label file, in file order, stripped.

    Duplicates are kept (`build_vocabulary` reports and drops them); empty CSV names are left out.
    Raises LabelsError for a missing, unreadable, binary or empty file and for a CSV without a
    ``name`` column.
    """
    return [name for _, name in _read_entries(path) if name]


def _read_entries(path: PathLike) -> list[tuple[int, str]]:
    """(line number, stripped label) for every label entry of a file, empty CSV names included.

    Line numbers are kept so that problems can point at the exact line.
    """
    p = Path(path)
    if p.is_dir():
        raise LabelsError(f"labels file is a directory: {p}")
    try:
        data = read_bytes(p, timeout=READ_TIMEOUT_S)
    except FileNotFoundError:
        raise LabelsError(f"labels file not found: {p}") from None
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {p}: {exc.strerror or exc}") from None

    text = _decode(p, data)
    if not text.strip():
        raise LabelsError(f"labels file is empty: {p}")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    first = next((line for line in lines if line.strip()), "")
    if p.suffix.lower() == ".csv" or _is_csv_header(first):
        entries = _csv_entries(p, text)
    else:
        entries = [
            (number, stripped)
            for number, line in enumerate(lines, start=1)
            if (stripped := line.strip()) and not stripped.startswith("#")
        ]
    if not any(name for _, name in entries):
        raise LabelsError(f"no labels in {p}")
    return entries


def _decode(p: Path, data: bytes) -> str:
    if b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # NUL never occurs in UTF-8 text; it does in images, checkpoints, videos, archives...
        raise LabelsError(f"{p} looks like a binary file, not a list of labels")
    try:
        return decode_text(data, p)
    except TextError as err:
        raise LabelsError(str(err)) from None


def _is_csv_header(line: str) -> bool:
    # Only a comma-separated line counts: a plain-text list whose first label is "name" stays plain text.
    if "," not in line:
        return False
    fields = next(csv.reader([line]), [])
    return any(f.strip().lower() == "name" for f in fields)


def _csv_entries(p: Path, text: str) -> list[tuple[int, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    entries: list[tuple[int, str]] = []
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise LabelsError(f"labels file is empty: {p}")
        columns = [cell.strip() for cell in header]
        lowered = [c.lower() for c in columns]
        if "name" not in lowered:
            raise LabelsError(f"{p}: CSV has no 'name' column (columns: {', '.join(columns)})")
        index = lowered.index("name")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            name = row[index].strip() if index < len(row) else ""
            entries.append((reader.line_num, name))
    except csv.Error as exc:
        raise LabelsError(f"{p}:{reader.line_num}: malformed CSV ({exc})") from None
    return entries


@dataclass
class Vocabulary:
    """The labels to score and the prompt templates that turn each label into text.

    `problems` lists what `build_vocabulary` dropped (duplicates, empty labels), one human-readable
    message each, for the CLI to show as warnings.
    """

    labels: list[str]
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for template in self.templates:
            _check_template(template)

    def __len__(self) -> int:
        return len(self.labels)

    def texts(self, label: str) -> list[str]:
        """The prompts for one label: the label put into each template, in template order."""
        # str.replace rather than str.format so literal braces elsewhere in a template are harmless.
        return [template.replace("{}", label) for template in self.templates]

    @property
    def key(self) -> str:
        """12 hex digits identifying labels + templates (order matters): reports store it so that
        `--resume` only skips rows scored against exactly this vocabulary."""
        payload = json.dumps(
            {"labels": self.labels, "templates": self.templates}, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def _check_template(template: str) -> None:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise LabelsError(f"template {template!r} must contain exactly one '{{}}' where the label goes")


def build_vocabulary(
    files: Sequence[PathLike] = (),
    labels: Sequence[str] = (),
    templates: Sequence[str] = (),
) -> Vocabulary:
    """Merge the labels of `files` (in order) and then `labels` into one vocabulary.

    Labels are stripped; empty ones and duplicates (exact, case-sensitive match; the first occurrence
    is kept) are dropped and each is described in `Vocabulary.problems`, e.g.
    ``labels.txt:7: duplicate label 'swim' (first on line 2)``. `templates` default to ``["{}"]``;
    each must contain exactly one ``{}``. Raises LabelsError for unreadable files, bad templates or
    when no label is left.
    """
    kept: list[str] = []
    first_seen: dict[str, tuple[str, str]] = {}  # label -> (source, "source:line" or "--label")
    problems: list[str] = []

    def add(name: str, source: str, where: str, line: int | None) -> None:
        if not name:
            problems.append(f"{where}: empty label ignored")
            return
        if name in first_seen:
            first_source, first_where = first_seen[name]
            if line is not None and first_source == source:
                first = f"first on line {first_where.rsplit(':', 1)[1]}"
            elif first_source == "--label":
                first = "first given by --label"
            else:
                first = f"first at {first_where}"
            problems.append(f"{where}: duplicate label {name!r} ({first})")
            return
        first_seen[name] = (source, where)
        kept.append(name)

    for file in files:
        source = os.fspath(file)
        for line, name in _read_entries(file):
            add(name, source, f"{source}:{line}", line)
    for name in labels:
        add(name.strip(), "--label", "--label", None)

    if not kept:
        if not files and not labels:
            raise LabelsError("no labels given: use --labels FILE and/or --label TEXT")
        raise LabelsError("no usable labels: " + "; ".join(problems))

    chosen: list[str] = []
    for template in templates or DEFAULT_TEMPLATES:
        _check_template(template)
        if template in chosen:
            problems.append(f"duplicate template {template!r} ignored")
        else:
            chosen.append(template)
    return Vocabulary(labels=kept, templates=chosen, problems=problems)
