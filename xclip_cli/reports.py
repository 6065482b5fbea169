"""Report writers for `xclip tag`: table, CSV, JSON and JSONL; incremental, crash-safe and resumable.

A row is a plain dict, one per video (or per segment of a video)::

    path        str          the input path as discovered
    start, end  float|None   segment bounds in seconds (None: the whole video)
    label       str|None     top-1 label;  score: float|None, its score
    labels      list[str]    the reported labels (top-k or above the threshold), best first
    scores      list[float]  their scores
    duration    float|None   video duration in seconds
    frames      int          frames sampled per view;  views: str such as "1x1" (clips x crops)
    model       str          model name;  vocabulary: str, `Vocabulary.key`
    error       str|None     why this input could not be tagged (the other result fields are then empty)
    all_scores  dict         label -> score for the whole vocabulary (JSON/JSONL only, optional)

Durability: JSONL and CSV rows are appended, flushed and fsync'ed one at a time; JSON is rewritten
atomically (temporary file in the same folder, fsync, `os.replace`). A crash or SIGKILL therefore loses at
most the row being written, and `open_writer(..., resume=True)` cuts such a torn last line off before
appending. Rows whose `row_key` is already in the report are never written twice.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = [
    "FORMATS",
    "ROW_FIELDS",
    "ReportError",
    "ReportExistsError",
    "ReportWriter",
    "format_for",
    "open_writer",
    "read_report",
    "row_key",
]

#: Column order of CSV reports (and key order of JSON rows, which may add `all_scores`).
ROW_FIELDS: tuple[str, ...] = (
    "path", "start", "end", "label", "score", "labels", "scores",
    "duration", "frames", "views", "model", "vocabulary", "error",
)  # fmt: skip
FORMATS: tuple[str, ...] = ("table", "csv", "json", "jsonl")
_BY_EXTENSION = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_LIST_FIELDS = ("labels", "scores")
_TIME_FIELDS = ("start", "end", "duration")
_LIST_SEPARATOR = "|"

PathLike = str | os.PathLike[str]


class ReportError(Exception):
    """A report cannot be read, resumed or written; the message names the file (and line)."""


class ReportExistsError(ReportError, FileExistsError):
    """The output file exists and neither resume nor overwrite was asked for."""


def row_key(row: Mapping[str, Any]) -> tuple:
    """What identifies a row for `--resume`: (path, start, model, frames, views, vocabulary).

    `start` is rounded to milliseconds, the precision CSV reports keep, so a key computed from a fresh
    row equals the key of the same row read back from any format.
    """
    start = row.get("start")
    frames = row.get("frames")
    return (
        os.fspath(row["path"]),
        None if start is None else round(float(start), 3),
        row.get("model"),
        None if frames is None else int(frames),
        row.get("views"),
        row.get("vocabulary"),
    )


def format_for(output: str | None, fmt: str | None, stdout_isatty: bool) -> str:
    """Choose the report format: `fmt` if given, else from the extension of `output`
    (.csv, .json, .jsonl/.ndjson), else a table on a terminal and JSONL when stdout is a pipe or file.
    Raises ValueError for an unknown `fmt` or an output name whose extension says nothing."""
    if fmt:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise ValueError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return fmt
    if output is None or output == "-":
        return "table" if stdout_isatty else "jsonl"
    suffix = Path(output).suffix.lower()
    if suffix in _BY_EXTENSION:
        return _BY_EXTENSION[suffix]
    raise ValueError(
        f"cannot tell the report format of {output!r} from its extension: "
        "name it .csv, .json or .jsonl, or pass --format csv|json|jsonl|table"
    )


# -- rows ------------------------------------------------------------------------------------------


def _normalize(row: Mapping[str, Any]) -> dict[str, Any]:
    """All ROW_FIELDS present (in order), the path as str, then extra keys such as all_scores."""
    if "path" not in row:
        raise ValueError("a report row needs a 'path'")
    out: dict[str, Any] = {name: row.get(name, [] if name in _LIST_FIELDS else None) for name in ROW_FIELDS}
    out["path"] = os.fspath(out["path"])
    out["labels"] = list(out["labels"] or [])
    out["scores"] = list(out["scores"] or [])
    for name, value in row.items():
        if name not in out:
            out[name] = value
    return out


def _json_default(value: Any) -> Any:
    # numpy / torch scalars and arrays, should a caller pass them through unconverted.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to a report")


def _json_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"


def _score_text(value: Any) -> str:
    return format(float(value), ".6g")


def _csv_cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "labels":
        return _LIST_SEPARATOR.join(str(v) for v in value)
    if name == "scores":
        return _LIST_SEPARATOR.join(_score_text(v) for v in value)
    if name == "score":
        return _score_text(value)
    if name in _TIME_FIELDS:
        # Milliseconds rather than 6 significant digits: 6 digits would blur segment starts after 28 h.
        return f"{float(value):.3f}"
    return str(value)


def _csv_line(values: Iterable[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _csv_row_text(row: Mapping[str, Any]) -> str:
    return _csv_line(_csv_cell(name, row.get(name)) for name in ROW_FIELDS)


def _from_csv(record: Mapping[str | None, Any], where: str) -> dict[str, Any]:
    if None in record:
        raise ReportError(f"{where}: more values than columns")
    row: dict[str, Any] = {}
    for name, value in record.items():
        value = value or ""  # a short record fills missing cells with None
        try:
            if name in _TIME_FIELDS or name == "score":
                row[name] = float(value) if value else None
            elif name == "scores":
                row[name] = [float(v) for v in value.split(_LIST_SEPARATOR)] if value else []
            elif name == "labels":
                row[name] = value.split(_LIST_SEPARATOR) if value else []
            elif name == "frames":
                row[name] = int(value) if value else None
            elif name == "path":
                row[name] = value
            else:
                row[name] = value or None
        except ValueError:
            raise ReportError(f"{where}: bad value {value!r} in column {name!r}") from None
    return row


# -- reading ---------------------------------------------------------------------------------------


def read_report(path: PathLike) -> list[dict[str, Any]]:
    """Read a CSV, JSON or JSONL report back into rows (CSV lists and numbers restored).

    The format comes from the extension, else from the first character. A torn final record (what a
    killed writer leaves: no final newline and not parseable) is ignored; any other malformed record
    raises ReportError naming the file and line.
    """
    p = Path(path)
    text = _read_text(p)
    fmt = _BY_EXTENSION.get(p.suffix.lower())
    if fmt is None:
        first = text.lstrip()[:1]
        fmt = "json" if first == "[" else "jsonl" if first == "{" else "csv"
    if fmt == "json":
        return _parse_json(p, text)
    if fmt == "jsonl":
        return _parse_jsonl(p, text, lenient_tail=True)
    return _parse_csv(p, text, lenient_tail=True)


def _read_text(p: Path, data: bytes | None = None) -> str:
    try:
        if data is None:
            data = p.read_bytes()
        return data.decode("utf-8-sig")
    except FileNotFoundError:
        raise ReportError(f"report not found: {p}") from None
    except OSError as exc:
        raise ReportError(f"cannot read report {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1 if data else 1
        raise ReportError(f"{p}:{line}: not UTF-8 text; is this a report?") from None


def _parse_json(p: Path, text: str) -> list[dict[str, Any]]:
    if not text.strip():
        return []
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "path" in r for r in rows):
        raise ReportError(f"{p}: expected a JSON list of rows with a 'path'")
    return rows


def _parse_jsonl(p: Path, text: str, *, lenient_tail: bool) -> list[dict[str, Any]]:
    rows = []
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if lenient_tail and number == len(lines):  # last line, no newline after it: torn write
                break
            raise ReportError(f"{p}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "path" not in row:
            raise ReportError(f"{p}:{number}: expected a JSON object with a 'path'")
        rows.append(row)
    return rows


def _parse_csv(p: Path, text: str, *, lenient_tail: bool) -> list[dict[str, Any]]:
    if lenient_tail and not text.endswith("\n"):
        try:
            return _parse_csv_records(p, text, torn=True)
        except ReportError:
            # e.g. cut inside a quoted field: keep the complete records only.
            complete = _complete_length(text.encode("utf-8"), "csv")
            return _parse_csv_records(p, text.encode("utf-8")[:complete].decode("utf-8"), torn=False)
    return _parse_csv_records(p, text, torn=False)


def _parse_csv_records(p: Path, text: str, *, torn: bool) -> list[dict[str, Any]]:
    if not text.strip():
        return []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if "path" not in (reader.fieldnames or []):
        raise ReportError(
            f"{p}:1: not a report: no 'path' column (columns: {', '.join(reader.fieldnames or [])})"
        )
    records = []
    try:
        for record in reader:
            records.append((reader.line_num, record))
    except csv.Error as exc:
        raise ReportError(f"{p}:{reader.line_num}: malformed CSV ({exc})") from None
    rows = []
    for index, (line, record) in enumerate(records):
        last = index == len(records) - 1
        if torn and last and (None in record.values() or None in record):
            break  # a record cut short by a killed writer
        try:
            rows.append(_from_csv(record, f"{p}:{line}"))
        except ReportError:
            if torn and last:
                break
            raise
    return rows


def _complete_length(data: bytes, fmt: str) -> int:
    """Bytes of `data` that form complete records; what follows was torn by a crash mid-write.

    A record ends at a newline; for CSV only at a newline outside quotes, i.e. after an even number of
    '"' (a quoted field may hold a newline; escaped quotes come in pairs). JSON strings never hold a raw
    newline, so for JSONL every newline ends a record.
    """
    if fmt != "csv":
        return data.rfind(b"\n") + 1
    complete = position = quotes = 0
    pieces = data.split(b"\n")
    for piece in pieces[:-1]:  # every piece but the last is followed by a newline
        quotes += piece.count(b'"')
        position += len(piece) + 1
        if quotes % 2 == 0:
            complete = position
    return complete


# -- writers ---------------------------------------------------------------------------------------


class ReportWriter:
    """Writes rows as they come. Use `open_writer` to make one; use it as a context manager.

    Attributes: `path` (None for stdout), `fmt`, `done_keys` (row keys already in the report: those
    found when resuming, plus every row written since), `rows_written`, `resumed_rows` (rows kept from
    the existing report), `retried_errors` (error rows dropped on resume so those inputs are tried
    again), `repaired` (a torn last record was cut off) and `broken_pipe` (stdout's reader went away,
    e.g. ``| head -1``: further rows are dropped, so a caller may stop early).
    """

    def __init__(self, path: str | None, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.done_keys: set[tuple] = set()
        self.rows_written = 0
        self.resumed_rows = 0
        self.retried_errors = 0
        self.repaired = False
        self.broken_pipe = False
        self.closed = False
        self._stdout: TextIO | None = sys.stdout if path is None else None

    def write(self, row: Mapping[str, Any]) -> bool:
        """Write one row; return False (and write nothing) if a row with its `row_key` is already in
        the report."""
        if self.closed:
            raise ValueError("report writer is closed")
        row = _normalize(row)
        key = row_key(row)
        if key in self.done_keys:
            return False
        self._emit(row)
        self.done_keys.add(key)
        self.rows_written += 1
        return True

    def close(self) -> None:
        """Finish the report (table: print it; JSON: final rewrite or closing bracket). Idempotent."""
        if not self.closed:
            self.closed = True
            self._finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Also on Ctrl-C or an error, so that what was done reaches the output.
        self.close()

    def _emit(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _to_stdout(self, text: str) -> None:
        if self.broken_pipe or self._stdout is None:
            return
        try:
            self._stdout.write(text)
            self._stdout.flush()
        except BrokenPipeError:
            self.broken_pipe = True
            _silence(self._stdout)


def _silence(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null so that Python's flush at exit does not print
    "Exception ignored ... BrokenPipeError" (the recipe from the `signal` module docs)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


class _LineWriter(ReportWriter):
    """JSONL and CSV: one record per row, appended, flushed and fsync'ed before `write` returns."""

    def __init__(self, path: str | None, fmt: str, *, resume: bool) -> None:
        super().__init__(path, fmt)
        self._serialize: Callable[[Mapping[str, Any]], str] = _json_line if fmt == "jsonl" else _csv_row_text
        self._need_header = fmt == "csv"
        self._file: TextIO | None = None
        if path is None:
            return
        if resume and os.path.exists(path):
            self._resume(path)
        mode = "a" if resume else "w"
        self._file = _open_report(path, mode)
        if self._file.tell() > 0:
            self._need_header = False  # the resumed file already has its header

    def _resume(self, path: str) -> None:
        p = Path(path)
        data = p.read_bytes()
        complete = _complete_length(data, self.fmt)
        if complete < len(data):
            # Cut the torn record off in place, so the next row starts on a line of its own.
            os.truncate(path, complete)
            data = data[:complete]
            self.repaired = True
        text = _read_text(p, data)
        if self.fmt == "jsonl":
            rows = _parse_jsonl(p, text, lenient_tail=False)
        else:
            header = next(csv.reader(io.StringIO(text, newline="")), None)
            if header is not None and header != list(ROW_FIELDS):
                raise ReportError(
                    f"{p}:1: columns {', '.join(header)} are not those of an xclip report "
                    f"({', '.join(ROW_FIELDS)}); cannot resume it"
                )
            rows = _parse_csv(p, text, lenient_tail=False)
        kept = [row for row in rows if not row.get("error")]
        self.retried_errors = len(rows) - len(kept)
        if self.retried_errors:
            # Failed inputs are tried again; drop their rows first so no input ends up with two rows.
            header = _csv_line(ROW_FIELDS) if self.fmt == "csv" else ""
            body = "".join(self._serialize(row) for row in kept)
            _atomic_write(path, lambda fh: fh.write(header + body))
        self.resumed_rows = len(kept)
        self.done_keys = {row_key(row) for row in kept}

    def _emit(self, row: dict[str, Any]) -> None:
        text = self._serialize(row)
        if self._need_header:
            text = _csv_line(ROW_FIELDS) + text
            self._need_header = False
        if self._file is None:
            self._to_stdout(text)
            return
        # One write call per row, then fsync: after a crash the row is either complete or a torn tail.
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def _finish(self) -> None:
        if self._file is not None:
            self._file.close()


class _JsonWriter(ReportWriter):
    """A JSON list. A file is rewritten atomically after each row; when one rewrite takes more than
    50 ms (large reports), rewrites are spaced to at most ~10 % of the run time. Stdout gets the list
    streamed element by element, closed at `close`."""

    def __init__(self, path: str | None, *, resume: bool) -> None:
        super().__init__(path, "json")
        self._rows: list[dict[str, Any]] = []
        self._streamed = 0
        self._dirty = False
        self._last_cost = 0.0
        self._last_done = 0.0
        if path is None:
            return
        if resume and os.path.exists(path):
            rows = _parse_json(Path(path), _read_text(Path(path)))
            self._rows = [row for row in rows if not row.get("error")]
            self.retried_errors = len(rows) - len(self._rows)
            self.resumed_rows = len(self._rows)
            self.done_keys = {row_key(row) for row in self._rows}
        # Write the (possibly empty) list now: the name is claimed and always holds valid JSON.
        self._rewrite()

    def _emit(self, row: dict[str, Any]) -> None:
        if self.path is None:
            text = json.dumps(row, ensure_ascii=False, indent=2, default=_json_default)
            self._to_stdout(("[\n" if self._streamed == 0 else ",\n") + text)
            self._streamed += 1
            return
        self._rows.append(row)
        self._dirty = True
        if self._last_cost > 0.05 and time.monotonic() - self._last_done < 10 * self._last_cost:
            return  # written at a later row or at close
        self._rewrite()

    def _rewrite(self) -> None:
        started = time.monotonic()
        _atomic_write(self.path, self._dump)
        self._last_done = time.monotonic()
        self._last_cost = self._last_done - started
        self._dirty = False

    def _dump(self, fh: TextIO) -> None:
        json.dump(self._rows, fh, ensure_ascii=False, indent=2, default=_json_default)
        fh.write("\n")

    def _finish(self) -> None:
        if self.path is None:
            self._to_stdout("[]\n" if self._streamed == 0 else "\n]\n")
        elif self._dirty:
            self._rewrite()


class _TableWriter(ReportWriter):
    """A rich table, printed once at `close` (rows are buffered so stdout holds nothing but the table)."""

    def __init__(self, path: str | None) -> None:
        super().__init__(path, "table")
        self._rows: list[dict[str, Any]] = []
        if path is not None:
            _open_report(path, "w").close()  # fail now, not after the whole run, if it cannot be written

    def _emit(self, row: dict[str, Any]) -> None:
        self._rows.append(row)

    def _finish(self) -> None:
        from rich.console import Console  # rich is only needed when a table is asked for

        table = _rich_table(self._rows)
        if self.path is not None:
            with open(self.path, "w", encoding="utf-8") as fh:
                Console(file=fh, width=160, color_system=None).print(table)
            return
        if not self._rows or self._stdout is None:
            return
        try:
            Console(file=self._stdout).print(table)
            self._stdout.flush()
        except BrokenPipeError:
            self.broken_pipe = True
            _silence(self._stdout)


def _rich_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table
    from rich.text import Text

    segments = any(row.get("start") is not None for row in rows)
    errors = sum(1 for row in rows if row.get("error"))
    caption = f"{len(rows)} row{'s' if len(rows) != 1 else ''}" + (f", {errors} failed" if errors else "")
    table = Table(caption=caption)
    table.add_column("path", overflow="fold")
    if segments:
        table.add_column("segment (s)", no_wrap=True)
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column("next labels")
    for row in rows:
        # Text() everywhere: a label or path holding "[...]" must not be read as rich markup.
        cells: list[Any] = [Text(row["path"])]
        if segments:
            start, end = row.get("start"), row.get("end")
            cells.append(Text("" if start is None else f"{start:.1f}–{'' if end is None else f'{end:.1f}'}"))
        if row.get("error"):
            cells += [Text(f"error: {row['error']}", style="red"), Text(""), Text("")]
        else:
            pairs = list(zip(row.get("labels") or [], row.get("scores") or []))
            score = row.get("score")
            cells.append(Text(row.get("label") or ""))
            cells.append(Text("" if score is None else f"{score:.3f}"))
            cells.append(Text(", ".join(f"{label} {value:.3f}" for label, value in pairs[1:])))
        table.add_row(*cells)
    return table


def _open_report(path: str, mode: str) -> TextIO:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode, encoding="utf-8", newline="")
    except OSError as exc:
        raise ReportError(f"cannot write report {path}: {exc.strerror or exc}") from None


def _atomic_write(path: str, write: Callable[[TextIO], Any]) -> None:
    """Replace `path` with what `write` produces, all or nothing, even across a crash."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = target.stat().st_mode & 0o777 if target.exists() else None
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ReportError(f"cannot write report {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files; keep the mode the report had, or what open() would have given it.
        os.chmod(temporary, mode if mode is not None else 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(target.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def open_writer(path: str | None, fmt: str, *, resume: bool = False, overwrite: bool = False) -> ReportWriter:
    """Open a report writer for `fmt` (one of FORMATS) writing to `path` (None or "-": stdout).

    An existing non-empty file is refused with ReportExistsError unless `resume` (keep its rows, skip
    their keys, cut off a torn last record, drop error rows so those inputs are retried) or `overwrite`
    (start afresh). Resuming needs a file, and a CSV, JSON or JSONL one; a missing file is simply
    created. Raises ReportError for a report that cannot be read or written, ValueError for bad
    arguments.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if path == "-":
        path = None
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if path is None:
        if resume:
            raise ValueError("resuming needs an output file (--output FILE), not stdout")
    else:
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ReportError(f"cannot write report {path}: it is a directory")
        if resume and fmt == "table":
            raise ValueError("a table report cannot be resumed: use a .csv, .json or .jsonl output")
        if not resume and not overwrite and os.path.exists(path) and os.path.getsize(path) > 0:
            raise ReportExistsError(
                f"{path} already exists: use --resume to continue it or --overwrite to replace it"
            )
    if fmt == "table":
        return _TableWriter(path)
    if fmt == "json":
        return _JsonWriter(path, resume=resume)
    return _LineWriter(path, fmt, resume=resume)
