"""The one record type and the one clip-list grammar (``eval -d csv`` and ``finetune --data``)."""

from __future__ import annotations

import numpy as np
import pytest

from xclip_cli.data.datasets import DatasetError, csv_dataset
from xclip_cli.data.records import VideoRecord, format_clip_list, read_clip_list
from xclip_cli.video.clips import ClipSpec
from xclip_cli.video.sampling import segment_indices, view_indices


def test_header_is_optional_and_columns_follow_it(tmp_path):
    (tmp_path / "a.csv").write_text("a.mp4,swim\nb.mp4,ride a bike,1.5,4\n")
    (tmp_path / "b.csv").write_text("\ufeffLabel,End,Path,Start\nswim,,a.mp4,\nride a bike,4,b.mp4,1.5\n")
    want = [VideoRecord("a.mp4", "swim"), VideoRecord("b.mp4", "ride a bike", 1.5, 4.0)]
    for name in ("a.csv", "b.csv"):
        records, problems = read_clip_list(tmp_path / name)
        assert (records, problems) == (want, [])
    assert records[1].where == f"{tmp_path / 'b.csv'}:3"


def test_every_problem_is_listed_with_file_and_line(tmp_path):
    (tmp_path / "bad.csv").write_text(
        "path,label,start,end\n,swim,,\na.mp4,,,\na.mp4,swim,x,\na.mp4,swim,3,2\na.mp4,swim,-1,\n"
    )
    records, problems = read_clip_list(tmp_path / "bad.csv")
    f = tmp_path / "bad.csv"
    assert records == [] and problems == [
        f"{f}:2: empty path",
        f"{f}:3: empty label",
        f"{f}:4: start must be a number of seconds, got 'x'",
        f"{f}:5: end (2 s) must be after start (3 s)",
        f"{f}:6: start must be a non-negative number of seconds, got '-1'",
    ]
    (tmp_path / "short.csv").write_text("a.mp4\na.mp4,swim,1,2,3\n")
    assert read_clip_list(tmp_path / "short.csv")[1] == [
        f"{tmp_path / 'short.csv'}:1: expected 'path,label' (then optionally start,end); got 1 field(s)",
        f"{tmp_path / 'short.csv'}:2: expected 'path,label' (then optionally start,end); got 5 field(s)",
    ]
    assert read_clip_list(tmp_path / "nope.csv")[1] == [f"{tmp_path / 'nope.csv'}: clip list not found"]
    assert read_clip_list(tmp_path)[1] == [f"{tmp_path}: is a folder, not a CSV clip list"]
    (tmp_path / "empty.csv").write_text("path,label\n")
    assert read_clip_list(tmp_path / "empty.csv")[1] == [f"{tmp_path / 'empty.csv'}: no clips listed"]
    # labels may be left out where none is needed
    (tmp_path / "paths.csv").write_text("a.mp4\n")
    assert read_clip_list(tmp_path / "paths.csv", require_label=False) == ([VideoRecord("a.mp4")], [])


def test_written_lists_read_back_exactly(tmp_path):
    records = [VideoRecord("/x/a, b.mp4", "swim"), VideoRecord("/x/c.mp4", "ride", 0.1 + 0.2, 7.0)]
    (tmp_path / "out.csv").write_text(format_clip_list(records))
    assert read_clip_list(tmp_path / "out.csv") == (records, [])


def test_eval_csv_reads_the_same_grammar(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "list.csv").write_text("a.mp4,swim,2,5\nb.mp4,run\n")
    split = csv_dataset(tmp_path / "list.csv")
    assert split.records == [VideoRecord("a.mp4", "swim", 2.0, 5.0)] and split.missing == ["b.mp4"]
    assert split.videos() == [VideoRecord(str(tmp_path / "a.mp4"), "swim", 2.0, 5.0)]
    (tmp_path / "bad.csv").write_text("a.mp4,swim,x\n,run\n")
    with pytest.raises(
        DatasetError, match=r"(?s)2 problems in .*bad.csv:1: start must be a number.*bad.csv:2: empty path"
    ):
        csv_dataset(tmp_path / "bad.csv")


def test_one_formula_for_test_frame_indices():
    for num, frames in ((1, 8), (7, 8), (8, 8), (100, 8), (301, 16), (33, 32)):
        np.testing.assert_array_equal(segment_indices(num, frames), view_indices(num, frames, 1)[0])


def test_training_mode_is_one_view_of_the_whole_range():
    ClipSpec(frames=8, image_size=32, train=True)
    for bad in ({"clips": 2}, {"crops": 3}, {"window": 2.0}):
        with pytest.raises(ValueError, match="training mode"):
            ClipSpec(frames=8, image_size=32, train=True, **bad)
