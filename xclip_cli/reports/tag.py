"""Report writers for `xclip tag`: table, CSV, JSON and JSONL; incremental, crash-safe and resumable.

A row is a plain dict, one per video (or per window of a video)::

    path        str          the input path as discovered
    file        str          the input's resolved absolute path (what --resume matches on)
    start, end  float|None   window bounds in seconds (None: the whole video)
    label       str|None     top-1 label;  score: float|None, its score
    labels      list[str]    the reported labels (top-k or above the threshold), best first
    scores      list[float]  their scores
    duration    float|None   video duration in seconds
    frames      int          frames sampled per view;  views: str such as "1x1" (clips x crops)
    model       str          model name;  precision: str, fp32 / bf16 / fp16;  vocabulary: str, `Vocabulary.key`
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
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .. import files
from ..errors import EXIT_SOME_FAILED, EXIT_USAGE, XClipError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = [
    "FORMATS",
    "ROW_FIELDS",
    "ReportError",
    "ReportExistsError",
    "ReportWriteError",
    "ReportWriter",
    "format_for",
    "open_writer",
    "read_report",
    "row_key",
]

#: Column order of CSV reports (and key order of JSON rows, which may add `all_scores`).
ROW_FIELDS: tuple[str, ...] = (
    "path", "file", "start", "end", "label", "score", "labels", "scores",
    "duration", "frames", "views", "model", "precision", "vocabulary", "error",
)  # fmt: skip
FORMATS: tuple[str, ...] = ("table", "csv", "json", "jsonl")
_BY_EXTENSION = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_LIST_FIELDS = ("labels", "scores")
_TIME_FIELDS = ("start", "end", "duration")
_LIST_SEPARATOR = "|"

PathLike = str | os.PathLike[str]


#: Fields a row of an older xclip report may lack (it is still ours).
_NEWER_FIELDS = ("file", "precision")


class ReportError(XClipError):
    """A report cannot be read, resumed or replaced; the message names the file (and line)."""

    exit_code = EXIT_USAGE


class ReportExistsError(ReportError, FileExistsError):
    """The output file exists and neither resume nor overwrite was asked for."""


class ReportWriteError(ReportError):
    """Writing a row failed mid-run (disk full, I/O error); every row written before it is kept."""

    exit_code = EXIT_SOME_FAILED


def resolved_path(path: PathLike) -> str:
    """The absolute path with symlinks resolved: one file, one name, from whichever folder it is named."""
    return os.path.realpath(os.fspath(path))


def row_key(row: Mapping[str, Any]) -> tuple:
    """What identifies a row for `--resume`: (file, start, model, precision, frames, views, vocabulary).

    `file` is the resolved path (rows of older reports without it: their path resolved now), so a
    report resumed from another folder or through a symlink still matches. `start` is rounded to
    milliseconds, the precision CSV reports keep, so a key computed from a fresh row equals the key of
    the same row read back from any format.
    """
    start = row.get("start")
    frames = row.get("frames")
    return (
        row.get("file") or resolved_path(row["path"]),
        None if start is None else round(float(start), 3),
        row.get("model"),
        row.get("precision"),
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
        # Milliseconds rather than 6 significant digits: 6 digits would blur window starts after 28 h.
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
    if data is None:
        data = _read_bytes(p)
    try:
        return files.decode_text(data, p)
    except files.TextError as err:
        raise ReportError(f"{err}; is this a report?") from None


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


# -- what is already there -------------------------------------------------------------------------

_JSONL_START = b'{"path"'


@dataclass
class _Existing:
    """A report found at the output path, proven ours: its rows, and how many bytes are whole records."""

    rows: list[dict[str, Any]]
    complete: int
    size: int


def _looks_like_table(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and lines[0].lstrip().startswith("┏") and "path" in "".join(lines[:3])


def _existing_report(path: str, fmt: str, action: str) -> _Existing:
    """Read the report at `path` and prove it is an xclip report of format `fmt`, touching nothing.

    A torn last record (a writer killed mid-row) is allowed, but only where a report can be torn: after
    whole records, as the start of a record. Anything else raises ReportError, and the file is left as
    it is: `action` ("resume", "overwrite") says what was refused.
    """
    p = Path(path)
    refuse = f"refusing to {action} a file that is not an xclip {fmt} report"
    data = _read_bytes(p)
    if fmt == "table":
        if not _looks_like_table(_read_text(p, data)):
            raise ReportError(f"{p}: {refuse}")
        return _Existing([], len(data), len(data))
    complete = len(data) if fmt == "json" else _complete_length(data, fmt)
    whole, tail = data[:complete], data[complete:]
    try:
        text = _read_text(p, whole)
        if fmt == "json":
            rows = _parse_json(p, text)
        elif fmt == "jsonl":
            rows = _parse_jsonl(p, text, lenient_tail=False)
        else:
            header = next(csv.reader(io.StringIO(text, newline="")), None)
            if header is not None and header != list(ROW_FIELDS):
                older = header == [f for f in ROW_FIELDS if f not in _NEWER_FIELDS]
                raise ReportError(
                    f"{p}:1: columns {', '.join(header)} are not those of "
                    + (
                        "this version's reports (it was written by an older xclip)"
                        if older
                        else "an xclip report"
                    )
                    + f" ({', '.join(ROW_FIELDS)})"
                )
            rows = _parse_csv(p, text, lenient_tail=False)
    except ReportError as err:
        raise ReportError(f"{err}; {refuse}") from None
    for number, row in enumerate(rows, start=1):
        if not all(name in row for name in ROW_FIELDS if name not in _NEWER_FIELDS):
            raise ReportError(f"{p}: row {number} lacks the fields of an xclip report; {refuse}")
    if tail:
        if fmt == "jsonl":
            plausible = tail.startswith(_JSONL_START) or _JSONL_START.startswith(tail)
        else:  # csv: a torn row after the header, or a torn header
            plausible = bool(whole) or _csv_line(ROW_FIELDS).encode().startswith(tail)
        if not plausible:
            raise ReportError(f"{p}: its last {len(tail)} bytes are not a torn report record; {refuse}")
    return _Existing(rows, complete, len(data))


def _read_bytes(p: Path) -> bytes:
    try:
        return files.read_bytes(p, timeout=files.READ_TIMEOUT_S)
    except FileNotFoundError:
        raise ReportError(f"report not found: {p}") from None
    except OSError as exc:
        raise ReportError(f"cannot read report {p}: {exc.strerror or exc}") from None


# -- writers ---------------------------------------------------------------------------------------


class ReportWriter:
    """Writes rows as they come. Use `open_writer` to make one; use it as a context manager.

    Attributes: `path` (None for stdout), `fmt`, `done_keys` (row keys already in the report: those
    found when resuming, plus every row written since), `existing_rows` (the rows kept from the report
    being resumed), `rows_written`, `resumed_rows`, `retried_errors` (error rows dropped on resume so
    those inputs are tried again), `repaired` (a torn last record was cut off) and `broken_pipe`
    (stdout's reader went away, e.g. ``| head -1``: further rows are dropped, so a caller may stop
    early). A file report is locked (see :class:`xclip_cli.files.FileLock`) from `open_writer` to
    `close` or `abandon`.
    """

    def __init__(
        self, path: str | None, fmt: str, existing: _Existing | None = None, lock: Any = None
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.existing_rows: list[dict[str, Any]] = []
        self.done_keys: set[tuple] = set()
        self.rows_written = 0
        self.resumed_rows = 0
        self.retried_errors = 0
        self.repaired = False
        self.broken_pipe = False
        self.closed = False
        self._lock = lock
        # Set by open_writer: the output was absent ("absent") or empty ("empty") before this writer, so
        # `abandon` may take back what it wrote.
        self._claimed: str | None = None
        self._stdout: TextIO | None = sys.stdout if path is None else None

    def write(self, row: Mapping[str, Any]) -> bool:
        """Write one row; return False (and write nothing) if a row with its `row_key` is already in
        the report. Raises ReportWriteError when the file cannot take it (rows before it are kept)."""
        if self.closed:
            raise ValueError("report writer is closed")
        row = _normalize(row)
        key = row_key(row)
        if key in self.done_keys:
            return False
        self._guarded(self._emit, row)
        self.done_keys.add(key)
        self.rows_written += 1
        return True

    def close(self) -> None:
        """Finish the report (table: print it; JSON: final rewrite or closing bracket) and unlock it.
        Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self._guarded(self._finish)
        finally:
            self._release()

    def abandon(self) -> None:
        """Give up before any row (the model could not be loaded...): unlock, and take back an output
        this writer created, so a failed start leaves no report behind."""
        if self.closed:
            return
        self.closed = True
        try:
            self._close_file()
            if self._claimed and self.rows_written == 0 and self.path is not None:
                with contextlib.suppress(OSError):
                    if self._claimed == "absent":
                        os.unlink(self.path)
                    else:
                        os.truncate(self.path, 0)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _guarded(self, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except OSError as exc:
            where = self.path if self.path is not None else "standard output"
            raise ReportWriteError(
                f"cannot write report {where}: {exc.strerror or exc}; the {self.rows_written} rows written "
                "before are kept (continue with --resume)"
            ) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Also on Ctrl-C or an error, so that what was done reaches the output.
        self.close()

    def _emit(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def _close_file(self) -> None:
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

    def _keep(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Resume: keep the rows of inputs that succeeded; failed ones are tried again."""
        kept = [row for row in rows if not row.get("error")]
        self.retried_errors = len(rows) - len(kept)
        self.resumed_rows = len(kept)
        self.existing_rows = kept
        self.done_keys = {row_key(row) for row in kept}
        return kept


def _silence(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null so that Python's flush at exit does not print
    "Exception ignored ... BrokenPipeError" (the recipe from the `signal` module docs)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


class _LineWriter(ReportWriter):
    """JSONL and CSV: one record per row, appended, flushed and fsync'ed before `write` returns."""

    def __init__(
        self, path: str | None, fmt: str, existing: _Existing | None = None, lock: Any = None
    ) -> None:
        super().__init__(path, fmt, existing, lock)
        self._serialize: Callable[[Mapping[str, Any]], str] = _json_line if fmt == "jsonl" else _csv_row_text
        self._need_header = fmt == "csv"
        self._file: TextIO | None = None
        if path is None:
            return
        if existing is not None:  # resume
            self._resume(path, existing)
        self._file = _open_report(path, "a" if existing is not None else "w")
        if self._file.tell() > 0:
            self._need_header = False  # the resumed file already has its header

    def _resume(self, path: str, existing: _Existing) -> None:
        if existing.complete < existing.size:
            # Cut the torn record off in place, so the next row starts on a line of its own.
            os.truncate(path, existing.complete)
            self.repaired = True
        kept = self._keep(existing.rows)
        if self.retried_errors:
            # Drop the failed inputs' rows first so that no input ends up with two rows.
            header = _csv_line(ROW_FIELDS) if self.fmt == "csv" else ""
            body = "".join(self._serialize(row) for row in kept)
            files.atomic_write(path, lambda fh: fh.write(header + body))

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
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # what could not be flushed was reported by write()
                self._file.close()
            self._file = None


class _JsonWriter(ReportWriter):
    """A JSON list. A file is rewritten atomically after each row; when one rewrite takes more than
    50 ms (large reports), rewrites are spaced to at most ~10 % of the run time. Stdout gets the list
    streamed element by element, closed at `close`."""

    def __init__(self, path: str | None, existing: _Existing | None = None, lock: Any = None) -> None:
        super().__init__(path, "json", existing, lock)
        self._rows: list[dict[str, Any]] = []
        self._streamed = 0
        self._dirty = False
        self._last_cost = 0.0
        self._last_done = 0.0
        if path is None:
            return
        if existing is not None:
            self._rows = list(self._keep(existing.rows))
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
        files.atomic_write(self.path, self._dump)
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

    def __init__(self, path: str | None, existing: _Existing | None = None, lock: Any = None) -> None:
        super().__init__(path, "table", existing, lock)
        self._rows: list[dict[str, Any]] = []
        if path is not None:
            _open_report(path, "w").close()  # fail now, not after the whole run, if it cannot be written

    def _emit(self, row: dict[str, Any]) -> None:
        self._rows.append(row)

    def _finish(self) -> None:
        from rich.console import Console  # rich is only needed when a table is asked for

        table = _rich_table(self._rows)
        if self.path is not None:
            files.atomic_write(
                self.path, lambda fh: Console(file=fh, width=160, color_system=None).print(table)
            )
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

    windows = any(row.get("start") is not None for row in rows)
    errors = sum(1 for row in rows if row.get("error"))
    caption = f"{len(rows)} row{'s' if len(rows) != 1 else ''}" + (f", {errors} failed" if errors else "")
    table = Table(caption=caption)
    table.add_column("path", overflow="fold")
    if windows:
        table.add_column("window (s)", no_wrap=True)
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column("next labels")
    for row in rows:
        # Text() everywhere: a label or path holding "[...]" must not be read as rich markup.
        cells: list[Any] = [Text(row["path"])]
        if windows:
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


def check_output(path: PathLike, inputs: Iterable[PathLike] = ()) -> None:
    """Refuse an output that is one of the `inputs` (the same file under any name) or not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ReportError(f"cannot use {path} as the output: {exc.strerror or exc}") from None
    if os.path.isdir(path):
        raise ReportError(f"cannot write report {path}: it is a directory")
    if not os.path.isfile(path):
        raise ReportError(f"cannot write report {path}: not a regular file")
    for item in inputs:
        with contextlib.suppress(OSError):
            if os.path.samestat(st, os.stat(item)):
                raise ReportError(
                    f"the output {path} is one of the inputs ({os.fspath(item)}); choose another --output"
                )


def open_writer(
    path: str | None,
    fmt: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    inputs: Iterable[PathLike] = (),
) -> ReportWriter:
    """Open a report writer for `fmt` (one of FORMATS) writing to `path` (None or "-": stdout).

    A file report is locked for the writer's life: a second writer gets FileLockedError. An existing
    non-empty file is refused with ReportExistsError unless `resume` (keep its rows, skip their keys,
    cut off a torn last record, drop error rows so those inputs are retried) or `overwrite` (start
    afresh); either way it must first prove to be an xclip report of this format, or it is refused and
    left untouched (ReportError). An output that is one of `inputs` is refused. A missing file is
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
        return _make_writer(None, fmt, None, None)
    path = os.fspath(path)
    if resume and fmt == "table":
        raise ValueError("a table report cannot be resumed: use a .csv, .json or .jsonl output")
    check_output(path, inputs)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot write report {path}: {exc.strerror or exc}") from None
    try:
        lock = files.FileLock(path, what="report").acquire()
    except OSError as exc:
        raise ReportError(f"cannot lock report {path}: {exc.strerror or exc}") from None
    try:
        existing = None
        claimed = "absent" if not os.path.exists(path) else "empty" if os.path.getsize(path) == 0 else None
        if claimed is None:
            if not resume and not overwrite:
                raise ReportExistsError(
                    f"{path} already exists: use --resume to continue it or --overwrite to replace it"
                )
            existing = _existing_report(path, fmt, "resume" if resume else "overwrite")
        elif resume and os.path.exists(path):
            existing = _Existing([], 0, 0)
        try:
            writer = _make_writer(path, fmt, existing if resume else None, lock)
        except OSError as exc:
            raise ReportError(f"cannot write report {path}: {exc.strerror or exc}") from None
        writer._claimed = claimed
        return writer
    except BaseException:
        lock.release()
        raise


def _make_writer(path: str | None, fmt: str, existing: _Existing | None, lock: Any) -> ReportWriter:
    if fmt == "table":
        return _TableWriter(path, existing, lock)
    if fmt == "json":
        return _JsonWriter(path, existing, lock)
    return _LineWriter(path, fmt, existing, lock)
