"""Label files, input discovery and report writers: the plumbing under `xclip tag`."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xclip_cli.data.discover import DEFAULT_EXTENSIONS, discover, normalize_extensions
from xclip_cli.data.labels import LabelsError, Vocabulary, build_vocabulary, read_labels
from xclip_cli.reports import (
    ROW_FIELDS,
    ReportError,
    ReportExistsError,
    ReportWriteError,
    format_for,
    open_writer,
    read_report,
    row_key,
)

REPO = Path(__file__).resolve().parents[1]
LABELS_DIR = REPO.parent / "shared/data/labels"


# -- labels ----------------------------------------------------------------------------------------


def test_plain_text_comments_blank_lines_crlf_bom(tmp_path: Path) -> None:
    f = tmp_path / "labels.txt"
    f.write_bytes(b"\xef\xbb\xbf# my labels\r\nswim\r\n\r\n  ride a bike  \r\n#skip\r\nplaying C# guitar\r\n")
    assert read_labels(f) == ["swim", "ride a bike", "playing C# guitar"]


def test_plain_text_utf16_with_bom(tmp_path: Path) -> None:
    f = tmp_path / "labels.txt"
    f.write_bytes("café\nyoga\n".encode("utf-16"))
    assert read_labels(f) == ["café", "yoga"]


def test_plain_text_whose_first_label_is_name_stays_plain(tmp_path: Path) -> None:
    f = tmp_path / "labels.txt"
    f.write_text("name\nswim\n")
    assert read_labels(f) == ["name", "swim"]


def test_vocabulary_reports_duplicates_and_empty_labels(tmp_path: Path) -> None:
    f = tmp_path / "labels.txt"
    f.write_text("swim\nrun\n\nswim\n")
    g = tmp_path / "more.csv"
    g.write_text('id,name\n0,run\n1,"jump, high"\n2,  \n')
    vocab = build_vocabulary([f, g], ["dance", "swim", "  ", "dance"])
    assert vocab.labels == ["swim", "run", "jump, high", "dance"]
    assert vocab.problems == [
        f"{f}:4: duplicate label 'swim' (first on line 1)",
        f"{g}:2: duplicate label 'run' (first at {f}:2)",
        f"{g}:4: empty label ignored",
        f"--label: duplicate label 'swim' (first at {f}:1)",
        "--label: empty label ignored",
        "--label: duplicate label 'dance' (first given by --label)",
    ]
    assert vocab.templates == ["{}"]


def test_vocabulary_is_case_sensitive_and_strips() -> None:
    vocab = build_vocabulary([], [" Swim ", "swim", "swim "])
    assert vocab.labels == ["Swim", "swim"]
    assert vocab.problems == ["--label: duplicate label 'swim' (first given by --label)"]


def test_vocabulary_needs_labels(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="no labels given"):
        build_vocabulary([], [])
    with pytest.raises(LabelsError, match="no usable labels"):
        build_vocabulary([], ["", "  "])


@pytest.mark.parametrize(
    ("name", "count", "first", "kept"),
    [
        ("kinetics_400_labels.csv", 400, "abseiling", "zumba"),
        ("kinetics_600_labels.csv", 600, "abseiling", "acting in play"),
        ("hmdb_51_labels.csv", 51, "brush hair", "cartwheel"),
        ("ucf_101_labels.csv", 101, "ApplyEyeMakeup", "ApplyLipstick"),
    ],
)
def test_real_label_files(name: str, count: int, first: str, kept: str) -> None:
    path = LABELS_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    labels = read_labels(path)
    assert len(labels) == count
    assert labels[0] == first
    assert kept in labels
    assert not any(label != label.strip() or "\r" in label for label in labels)
    vocab = build_vocabulary([path], [])
    assert vocab.labels == labels and vocab.problems == []


def test_csv_detected_by_header_without_csv_extension(tmp_path: Path) -> None:
    f = tmp_path / "classes.txt"
    f.write_text('id,Name,group\n0,swim,water\n1,"dive, high",water\n')
    assert read_labels(f) == ["swim", "dive, high"]


def test_csv_without_name_column_names_its_columns(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("id,label\n0,swim\n")
    with pytest.raises(LabelsError, match=r"bad\.csv.*no 'name' column \(columns: id, label\)"):
        read_labels(f)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\n  \r\n", "empty"),
        (b"# only a comment\n", "no labels"),
        (b"id,name\n", "no labels"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"swim\n\xff\xfe\xfa broken\n", r":2: not valid UTF-8"),
    ],
)
def test_unusable_label_files(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "labels.txt"
    f.write_bytes(content)
    with pytest.raises(LabelsError, match=message) as info:
        read_labels(f)
    assert str(f) in str(info.value)


def test_missing_label_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="not found"):
        read_labels(tmp_path / "nope.txt")
    with pytest.raises(LabelsError, match="directory"):
        read_labels(tmp_path)
    assert issubclass(LabelsError, ValueError)


def test_templates() -> None:
    vocab = build_vocabulary([], ["swim", "run"], ["a video of {}.", "{} {{literal}}", "a video of {}."])
    assert vocab.templates == ["a video of {}.", "{} {{literal}}"]
    assert vocab.problems == ["duplicate template 'a video of {}.' ignored"]
    assert vocab.texts("swim") == ["a video of swim.", "swim {{literal}}"]
    for bad in ["no slot", "{} and {}", "{label}"]:
        with pytest.raises(LabelsError, match="exactly one"):
            build_vocabulary([], ["swim"], [bad])
    with pytest.raises(LabelsError):
        Vocabulary(labels=["swim"], templates=["nothing"])


def test_vocabulary_key_is_stable_and_sensitive() -> None:
    a = build_vocabulary([], ["swim", "run"])
    assert a.key == build_vocabulary([], ["swim", "run", "swim"]).key  # dropped duplicates do not count
    assert len(a.key) == 12 and int(a.key, 16) >= 0
    assert a.key != build_vocabulary([], ["run", "swim"]).key
    assert a.key != build_vocabulary([], ["swim", "run"], ["a video of {}."]).key
    assert a.key == Vocabulary(labels=["swim", "run"]).key


# -- discovery -------------------------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small tree; the tests run inside it so that relative spellings can be checked."""
    for name in ["b.mp4", "a.MKV", "notes.txt", "sub/c.webm", "sub/deeper/d.mov", "sub/e.avi.txt",
                 ".hidden.mp4", ".cache/f.mp4", "sub/._g.mp4"]:  # fmt: skip
        touch(tmp_path / "lib" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "lib"


def names(result) -> list[str]:
    return [str(p) for p in result.paths]


def test_walk_recursive_sorted_case_insensitive_without_hidden(library: Path) -> None:
    result = discover(["lib"])
    assert names(result) == ["lib/a.MKV", "lib/b.mp4", "lib/sub/c.webm", "lib/sub/deeper/d.mov"]
    assert result.problems == []


def test_extension_filter_and_hidden_option(library: Path) -> None:
    assert names(discover(["lib"], extensions="TXT")) == ["lib/notes.txt", "lib/sub/e.avi.txt"]
    assert names(discover(["lib"], extensions=[".mov", "webm"])) == ["lib/sub/c.webm", "lib/sub/deeper/d.mov"]
    assert names(discover(["lib"], extensions=["mp4"], include_hidden=True)) == [
        "lib/.cache/f.mp4", "lib/.hidden.mp4", "lib/b.mp4", "lib/sub/._g.mp4",
    ]  # fmt: skip
    assert normalize_extensions("MP4, .mkv,") == {"mp4", "mkv"}
    assert {"mp4", "mkv", "webm", "mov", "avi", "gif"} <= set(DEFAULT_EXTENSIONS)
    assert all(e == e.lower() and not e.startswith(".") for e in DEFAULT_EXTENSIONS)


def test_explicit_files_kept_whatever_extension(library: Path) -> None:
    result = discover(["lib/notes.txt", "lib/.hidden.mp4", "missing.mp4"])
    assert names(result) == ["lib/.hidden.mp4", "lib/notes.txt"]
    assert result.problems == ["no such file or directory: missing.mp4"]


def test_symlink_loop_reported_once_and_terminates(library: Path) -> None:
    os.symlink("..", library / "sub" / "loop")
    os.symlink(library / "sub", library / "sub" / "deeper" / "back")
    result = discover(["lib"])
    assert names(result) == ["lib/a.MKV", "lib/b.mp4", "lib/sub/c.webm", "lib/sub/deeper/d.mov"]
    assert sorted(result.problems) == [
        f"symlink loop: lib/sub/deeper/back -> {library / 'sub'}, not followed",
        f"symlink loop: lib/sub/loop -> {library}, not followed",
    ]


def test_symlinked_folder_walked_once_and_files_deduplicated(library: Path, tmp_path: Path) -> None:
    os.symlink(library / "sub", tmp_path / "alias")
    os.symlink(library / "b.mp4", library / "sub" / "link-to-b.mp4")
    result = discover(["lib", "./lib/b.mp4", "alias", str(library / "a.MKV")])
    assert names(result) == ["lib/a.MKV", "lib/b.mp4", "lib/sub/c.webm", "lib/sub/deeper/d.mov"]
    assert result.problems == []


def test_broken_symlink_reported(library: Path) -> None:
    os.symlink(library / "gone.mp4", library / "dangling.mp4")
    result = discover(["lib", "lib/dangling.mp4"])
    assert "lib/dangling.mp4" not in names(result)
    assert result.problems == ["broken symlink: lib/dangling.mp4"]  # met twice, said once


def test_unreadable_folder_reported_and_walk_continues(library: Path) -> None:
    locked = library / "sub" / "deeper"
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running with privileges that ignore folder permissions (root)")
        result = discover(["lib"])
        assert names(result) == ["lib/a.MKV", "lib/b.mp4", "lib/sub/c.webm"]
        assert result.problems == ["cannot read directory lib/sub/deeper: Permission denied"]
    finally:
        locked.chmod(0o755)


def test_glob_patterns(library: Path) -> None:
    assert names(discover(["lib/*.mp4"])) == ["lib/b.mp4"]  # "*" skips hidden names, like the shell
    assert names(discover(["lib/**/*.m[ko]v"])) == ["lib/sub/deeper/d.mov"]  # case-sensitive, like glob
    assert names(discover(["lib/**/*.txt"])) == ["lib/notes.txt", "lib/sub/e.avi.txt"]  # files as named
    assert names(discover(["l?b/s*"])) == ["lib/sub/c.webm", "lib/sub/deeper/d.mov"]  # folder walked
    assert names(discover(["lib/.h*"])) == ["lib/.hidden.mp4"]
    assert names(discover(["**"])) == ["lib/a.MKV", "lib/b.mp4", "lib/sub/c.webm", "lib/sub/deeper/d.mov"]
    assert names(discover([f"{library}/*/*.webm"])) == [f"{library}/sub/c.webm"]  # absolute pattern
    result = discover(["lib/*.flac"])
    assert result.paths == [] and result.problems == [
        "no such file or directory: lib/*.flac (pattern matched nothing)"
    ]


def test_recursive_glob_terminates_on_symlink_loops(library: Path) -> None:
    os.symlink("..", library / "sub" / "loop1")
    os.symlink("../..", library / "sub" / "deeper" / "loop2")
    result = discover(["lib/**/*.mp4"])
    assert names(result) == ["lib/b.mp4"]
    assert len(result.problems) == 2 and all(p.startswith("symlink loop") for p in result.problems)
    both = discover(["lib/**", "lib"])  # folders matched by "**" are walked; each loop still said once
    assert names(both) == ["lib/a.MKV", "lib/b.mp4", "lib/sub/c.webm", "lib/sub/deeper/d.mov"]
    assert sorted(both.problems) == sorted(result.problems)


def test_stdin_newline_and_nul(library: Path) -> None:
    text = "lib/b.mp4\r\n\nlib/sub\n   \nlib/*.MKV\nnope.mp4\n"
    result = discover(["-"], stdin=io.StringIO(text))
    assert names(result) == ["lib/a.MKV", "lib/b.mp4", "lib/sub/c.webm", "lib/sub/deeper/d.mov"]
    assert result.problems == ["no such file or directory: nope.mp4"]

    touch(library / "line\nbreak.mp4")
    data = b"lib/line\nbreak.mp4\0lib/b.mp4\0\0"
    assert names(discover(["-"], stdin=io.BytesIO(data), null=True)) == ["lib/b.mp4", "lib/line\nbreak.mp4"]


def test_stdin_mixed_with_arguments(library: Path) -> None:
    result = discover(["lib/sub", "-"], stdin=io.BytesIO(b"lib/b.mp4\nlib/sub/c.webm\n"))
    assert names(result) == ["lib/b.mp4", "lib/sub/c.webm", "lib/sub/deeper/d.mov"]


def test_dash_prefixed_names(library: Path) -> None:
    dashed = touch(library / "-video-with-dash-.mp4")
    result = discover(["./lib/-video-with-dash-.mp4", "lib"])
    assert result.problems == []
    assert Path("lib/-video-with-dash-.mp4") in result.paths
    assert names(result).count("lib/-video-with-dash-.mp4") == 1
    assert all(p.exists() for p in result.paths) and dashed.exists()


def test_order_does_not_depend_on_input_order(library: Path) -> None:
    a = discover(["lib/sub", "lib/b.mp4", "lib/a.MKV"])
    b = discover(["lib/a.MKV", "lib/b.mp4", "lib/sub"])
    assert a.paths == b.paths == sorted(a.paths, key=str)


# -- reports ---------------------------------------------------------------------------------------


def make_row(path: str, start: float | None = None, error: str | None = None, **extra) -> dict:
    row = {
        "path": path,
        "file": f"/videos/{path}",
        "start": start,
        "end": None if start is None else start + 2.0,
        "label": None if error else "swim",
        "score": None if error else 0.8123456789,
        "labels": [] if error else ["swim", "dive, high", "a|b-free run"],
        "scores": [] if error else [0.8123456789, 0.15, 1e-7],
        "duration": 12.5,
        "frames": 8,
        "views": "1x1",
        "model": "xclip-base-patch32",
        "precision": "fp32",
        "vocabulary": "0123456789ab",
        "error": error,
    }
    row.update(extra)
    return row


def assert_same(read: dict, written: dict, csv_format: bool) -> None:
    for name in ROW_FIELDS:
        want, got = written[name], read[name]
        if name == "labels" and csv_format:
            want = "|".join(want).split("|") if want else []  # the CSV list separator is "|"
        if isinstance(want, float) and name in ("start", "end", "duration"):
            assert got == pytest.approx(want, abs=5e-4 if csv_format else 0), name  # CSV keeps ms
        elif isinstance(want, float) or (want and isinstance(want, list) and isinstance(want[0], float)):
            assert got == pytest.approx(want, rel=1e-5), name
        else:
            assert got == want, name


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"report.{fmt}"
    rows = [
        make_row("b.mp4", all_scores={"swim": 0.8, "run": 0.2}),
        make_row('a,b "quoted".mp4', start=4.266666666),
        make_row("c.mp4", error="cannot decode:\nmoov atom not found"),
    ]
    with open_writer(str(path), fmt, resume=False) as writer:
        for row in rows:
            assert writer.write(row) is True
        assert writer.write(dict(rows[0])) is False  # never twice the same key
    back = read_report(path)
    assert len(back) == 3
    for read, written in zip(back, rows):
        assert_same(read, written, fmt == "csv")
    assert back[1]["start"] == pytest.approx(4.267 if fmt == "csv" else 4.266666666)
    assert [row_key(r) for r in back] == [row_key(r) for r in rows]
    if fmt == "csv":
        assert "all_scores" not in back[0]
        assert path.read_text().splitlines()[0] == ",".join(ROW_FIELDS)
    else:
        assert back[0]["all_scores"] == {"swim": 0.8, "run": 0.2}


def test_csv_cell_formats(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with open_writer(str(path), "csv") as writer:
        writer.write(make_row("x.mp4", start=1 / 3))
        writer.write(make_row("y.mp4", error="boom"))
    lines = path.read_text().splitlines()
    assert (
        lines[1]
        == 'x.mp4,/videos/x.mp4,0.333,2.333,swim,0.812346,"swim|dive, high|a|b-free run",0.812346|0.15|1e-07,12.500,8,1x1,xclip-base-patch32,fp32,0123456789ab,'
    )
    assert lines[2] == "y.mp4,/videos/y.mp4,,,,,,,12.500,8,1x1,xclip-base-patch32,fp32,0123456789ab,boom"


def test_format_for() -> None:
    assert format_for(None, None, stdout_isatty=True) == "table"
    assert format_for(None, None, stdout_isatty=False) == "jsonl"
    assert format_for("-", None, stdout_isatty=True) == "table"
    assert format_for("out/x.CSV", None, stdout_isatty=True) == "csv"
    assert format_for("x.json", None, stdout_isatty=True) == "json"
    assert format_for("x.ndjson", None, stdout_isatty=True) == "jsonl"
    assert format_for("x.txt", "JSONL", stdout_isatty=True) == "jsonl"  # explicit format wins
    with pytest.raises(ValueError, match="x.txt"):
        format_for("x.txt", None, stdout_isatty=False)
    with pytest.raises(ValueError, match="unknown report format"):
        format_for(None, "xml", stdout_isatty=False)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "table"])
def test_refuses_to_overwrite_without_resume_or_overwrite(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "report.out"
    path.write_text("precious\n")
    with pytest.raises(ReportExistsError, match="already exists") as info:
        open_writer(str(path), fmt, resume=False)
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, ReportError)
    assert path.read_text() == "precious\n"
    # --overwrite replaces reports only: a file that is not one is refused and left as it is
    with pytest.raises(ReportError, match="refusing to overwrite a file that is not an xclip"):
        open_writer(str(path), fmt, resume=False, overwrite=True)
    assert path.read_text() == "precious\n"
    report = tmp_path / "report2.out"
    with open_writer(str(report), fmt) as writer:
        writer.write(make_row("old.mp4"))
    with open_writer(str(report), fmt, resume=False, overwrite=True) as writer:
        writer.write(make_row("a.mp4"))
    assert "old.mp4" not in report.read_text() and "a.mp4" in report.read_text()


def test_empty_existing_file_is_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.touch()
    with open_writer(str(path), "jsonl") as writer:
        writer.write(make_row("a.mp4"))
    assert [r["path"] for r in read_report(path)] == ["a.mp4"]


def test_bad_writer_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs an output file"):
        open_writer(None, "jsonl", resume=True)
    with pytest.raises(ValueError, match="cannot be resumed"):
        open_writer(str(tmp_path / "t.txt"), "table", resume=True)
    with pytest.raises(ValueError):
        open_writer(str(tmp_path / "x.csv"), "csv", resume=True, overwrite=True)
    with pytest.raises(ReportError, match="directory"):
        open_writer(str(tmp_path), "csv")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_after_sigkill_repairs_torn_line_and_skips_done(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"report.{fmt}"
    with open_writer(str(path), fmt) as writer:
        writer.write(make_row("a.mp4"))
        writer.write(make_row("b.mp4", error="decode failed"))
        writer.write(make_row("c.mp4", start=0.0))
        writer.write(make_row("c.mp4", start=2.0))
    data = path.read_bytes()
    # SIGKILL in the middle of writing the last row: cut inside its quoted labels field.
    cut = data.rindex(b"dive, high") + 3
    path.write_bytes(data[:cut])
    assert [r["path"] for r in read_report(path)] == ["a.mp4", "b.mp4", "c.mp4"]  # reader tolerates it

    with open_writer(str(path), fmt, resume=True) as writer:
        assert writer.repaired and writer.resumed_rows == 2 and writer.retried_errors == 1
        assert writer.done_keys == {row_key(make_row("a.mp4")), row_key(make_row("c.mp4", start=0.0))}
        results = [
            writer.write(make_row("a.mp4")),  # already done: skipped
            writer.write(make_row("b.mp4")),  # failed before: retried
            writer.write(make_row("c.mp4", start=0.0)),
            writer.write(make_row("c.mp4", start=2.0)),  # torn before: redone
            writer.write(make_row("a.mp4", model="other-model")),  # another model is another row
        ]
    assert results == [False, True, False, True, True]
    rows = read_report(path)
    keys = [row_key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 5
    assert [(r["path"], r["start"], r["error"]) for r in rows] == [
        ("a.mp4", None, None), ("c.mp4", 0.0, None), ("b.mp4", None, None),
        ("c.mp4", 2.0, None), ("a.mp4", None, None),
    ]  # fmt: skip
    text = path.read_text()
    assert text.endswith("\n") and "decode failed" not in text
    if fmt == "csv":
        assert text.count("path,file,start,end") == 1


def test_resume_csv_torn_inside_header_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("path,file,st")
    with open_writer(str(path), "csv", resume=True) as writer:
        assert writer.repaired and writer.done_keys == set()
        writer.write(make_row("a.mp4"))
    assert path.read_text().count("path,file,start,end") == 1
    assert [r["path"] for r in read_report(path)] == ["a.mp4"]
    fresh = tmp_path / "new" / "r.jsonl"
    with open_writer(str(fresh), "jsonl", resume=True) as writer:
        writer.write(make_row("a.mp4"))
    assert len(read_report(fresh)) == 1


def test_resume_refuses_malformed_reports(tmp_path: Path) -> None:
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"path": "a.mp4"}\nnot json\n{"path": "b.mp4"}\n')
    with pytest.raises(ReportError, match=r"r\.jsonl:2:"):
        open_writer(str(bad), "jsonl", resume=True)
    with pytest.raises(ReportError, match=r"r\.jsonl:2:"):
        read_report(bad)
    foreign = tmp_path / "r.csv"
    foreign.write_text("path,score\na.mp4,0.5\n")
    with pytest.raises(ReportError, match="refusing to resume"):
        open_writer(str(foreign), "csv", resume=True)
    broken = tmp_path / "r.json"
    broken.write_text('[\n{"path": "a.mp4"},\n')
    with pytest.raises(ReportError, match=r"r\.json:3:"):
        open_writer(str(broken), "json", resume=True)


def test_json_rewritten_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.json"
    writer = open_writer(str(path), "json", resume=False)
    assert json.loads(path.read_text()) == []  # valid from the start
    writer.write(make_row("a.mp4"))
    assert [r["path"] for r in json.loads(path.read_text())] == ["a.mp4"]  # on disk after each row

    real_dump = json.dump

    def failing_dump(obj, fh, **kwargs):
        fh.write('[{"path": "half')  # what a crash mid-write would leave behind
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", failing_dump)
    with pytest.raises(ReportWriteError, match="No space.*1 rows written before are kept"):
        writer.write(make_row("b.mp4"))
    assert [r["path"] for r in json.loads(path.read_text())] == ["a.mp4"]  # old file intact
    # no temporary left behind (the lock's sidecar lives as long as the writer)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.json.lock", "report.json"]

    monkeypatch.setattr(json, "dump", real_dump)
    writer.close()  # the pending row is written at close
    assert [r["path"] for r in read_report(path)] == ["a.mp4", "b.mp4"]

    with open_writer(str(path), "json", resume=True) as writer:
        assert writer.resumed_rows == 2 and writer.write(make_row("a.mp4")) is False
        writer.write(make_row("c.mp4"))
    assert [r["path"] for r in read_report(path)] == ["a.mp4", "b.mp4", "c.mp4"]


def test_json_rewrite_keeps_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("[]")
    path.chmod(0o640)
    with open_writer(str(path), "json", resume=True) as writer:
        writer.write(make_row("a.mp4"))
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_stdout_streams(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    with open_writer(None, fmt) as writer:
        writer.write(make_row("a.mp4"))
        first = capsys.readouterr().out
        assert "a.mp4" in first  # flushed per row, not at close
        writer.write(make_row("b.mp4"))
    out = first + capsys.readouterr().out
    if fmt == "jsonl":
        assert [json.loads(line)["path"] for line in out.splitlines()] == ["a.mp4", "b.mp4"]
    elif fmt == "json":
        assert [r["path"] for r in json.loads(out)] == ["a.mp4", "b.mp4"]
    else:
        assert out.splitlines()[0] == ",".join(ROW_FIELDS) and len(out.splitlines()) == 3


def test_empty_json_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with open_writer("-", "json"):
        pass
    assert json.loads(capsys.readouterr().out) == []


def test_table_printed_only_at_close(capsys: pytest.CaptureFixture[str]) -> None:
    writer = open_writer(None, "table", resume=False)
    writer.write(make_row("clip [1].mp4"))
    writer.write(make_row("bad.mp4", error="cannot decode"))
    assert capsys.readouterr().out == ""
    writer.close()
    out = capsys.readouterr().out
    assert "clip [1].mp4" in out and "swim" in out and "0.812" in out
    assert "error: cannot decode" in out and "2 rows, 1 failed" in out


def test_table_to_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    with open_writer(str(path), "table") as writer:
        writer.write(make_row("a.mp4", start=2.0))
    text = path.read_text()
    assert "a.mp4" in text and "2.0–4.0" in text and "\x1b[" not in text


def test_stdout_broken_pipe_is_quiet() -> None:
    # `xclip tag ... | head -1`: the writer notices, stops writing, and the process exits 0 with no
    # "BrokenPipeError" noise on stderr, even from the interpreter's final flush of stdout.
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import xclip_cli.reports as reports  # the package imports torch lazily: this stays fast
        assert "torch" not in sys.modules
        with reports.open_writer(None, "jsonl") as writer:
            for i in range(100000):
                writer.write({"path": f"{i}.mp4", "file": f"/{i}.mp4", "model": "m"})
                if writer.broken_pipe:
                    break
        assert writer.broken_pipe
        print("stopped after", writer.rows_written, file=sys.stderr)
        """
    )
    command = [sys.executable, "-c", script, str(REPO)]
    proc = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + shlex.join(command) + " | head -n 1"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == "0.mp4"
    assert proc.stderr.startswith("stopped after") and "Error" not in proc.stderr
