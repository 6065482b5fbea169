"""`xclip eval` on miniature datasets in the real layouts, built from real clips and real split lines.

The metric code is checked against truth twice: pure functions on hand-made probabilities, and the whole
protocol with a scorer whose scores are known. The Kinetics-600 novel-class list is checked against the
official label lists.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED, VIDEOS

from xclip_cli.data.datasets import (
    K400_TO_K600_RENAMES,
    DatasetError,
    Split,
    csv_dataset,
    hmdb51,
    k600_novel,
    k600_novel_classes,
    kinetics,
    label_list,
    load_splits,
    novel_subsets,
    ucf101,
)
from xclip_cli.data.records import VideoRecord
from xclip_cli.evaluation import (
    accuracy,
    confusion_matrix,
    evaluate,
    mean_class_accuracy,
    mean_std,
    per_class_accuracy,
    topk_hits,
)

SPLITS = SHARED / "data" / "splits"
LABELS = SHARED / "data" / "labels"
UCF_LISTS = SPLITS / "harvitronix_five-video-classification-methods" / "ucfTrainTestlist"
K400_VAL = SPLITS / "activitynet_ActivityNet" / "Crawler" / "Kinetics" / "data" / "kinetics-400_val.csv"
TV = VIDEOS / "torchvision"
needs_data = pytest.mark.skipif(not (VIDEOS.is_dir() and SPLITS.is_dir()), reason="no ../shared/data")


def xclip(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xclip_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def invoke(*args):
    """The CLI in this process (saves the torch import of a subprocess); exit code, stdout and stderr."""
    from typer.testing import CliRunner

    from xclip_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def real_lines(path: Path, *needles: str) -> bytes:
    """The lines of a real list file that contain one of `needles`, bytes as they are (CRLF kept)."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines = [line for line in lines if any(n.encode() in line for n in needles)]
    assert len(lines) == len(needles), (path, needles)
    return b"".join(lines)


def link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- miniature datasets --------------------------------------------------------------------------------------
#: HMDB-51 tags (1 train, 2 test, 0 unused) per split of each listed clip: (class folder, clip, tags).
HMDB = [
    ("wave", "RATRACE_wave_f_nm_np1_fr_goo_37.avi", "221"),
    ("wave", "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi", "212"),
    ("wave", "Gone_wave_f_nm_np1_fr_goo_1.avi", "202"),  # listed, not on disk
    ("cartwheel", "Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi", "122"),
    ("fall_floor", "Broken_fall_floor_f_nm_np1_ba_bad_0.avi", "220"),  # on disk, undecodable
]


@pytest.fixture(scope="module")
def hmdb_root(tmp_path_factory) -> Path:
    """HMDB-51 layout: class folders of .avi and testTrainMulti_7030_splits/<class>_test_split<k>.txt."""
    if not VIDEOS.is_dir():
        pytest.skip("../shared/data/videos not present")
    root = tmp_path_factory.mktemp("hmdb51")
    link(TV / "RATRACE_wave_f_nm_np1_fr_goo_37.avi", root / "wave" / "RATRACE_wave_f_nm_np1_fr_goo_37.avi")
    link(
        TV / "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
        root / "wave" / "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
    )
    # torchvision added an "hmdb51_" prefix to this clip; the dataset's own name is without it.
    link(
        TV / "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
        root / "cartwheel" / "Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
    )
    link(VIDEOS / "decord" / "corrupted.mp4", root / "fall_floor" / "Broken_fall_floor_f_nm_np1_ba_bad_0.avi")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for k in (1, 2, 3):
        for cls in ("wave", "cartwheel", "fall_floor"):
            # the documented format, with a trailing space and CRLF
            lines = [f"{clip} {tags[k - 1]} \r\n" for c, clip, tags in HMDB if c == cls]
            (splits / f"{cls}_test_split{k}.txt").write_text("".join(lines), newline="")
    return root


def hmdb_listed(k: int) -> list[str]:
    """The test videos of split k in list order: split files by name (class), then line order."""
    return [f"{c}/{clip}" for c, clip, tags in sorted(HMDB, key=lambda entry: entry[0]) if tags[k - 1] == "2"]


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    """UCF-101 layout with the real classInd and real lines of testlist01 / trainlist01."""
    if not (VIDEOS.is_dir() and UCF_LISTS.is_dir()):
        pytest.skip("../shared/data not present")
    root = tmp_path_factory.mktemp("ucf101")
    gif = root / "CricketShot" / "v_CricketShot_g04_c01.avi"  # the Kinetics-i3d GIF of this UCF clip
    gif.parent.mkdir()
    shutil.copyfile(VIDEOS / "kinetics_i3d" / "v_CricketShot_g04_c01_rgb.gif", gif)
    link(TV / "v_SoccerJuggling_g23_c01.avi", root / "SoccerJuggling" / "v_SoccerJuggling_g23_c01.avi")
    # The dataset's own quirk: folder HandstandPushups, files v_HandStandPushups_* (any real clip will do).
    link(
        TV / "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
        root / "HandstandPushups" / "v_HandStandPushups_g01_c01.avi",
    )
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    shutil.copyfile(UCF_LISTS / "classInd.txt", lists / "classInd.txt")
    (lists / "testlist01.txt").write_bytes(
        real_lines(
            UCF_LISTS / "testlist01.txt",
            "v_ApplyEyeMakeup_g01_c01.",
            "v_CricketShot_g04_c01.",
            "v_HandStandPushups_g01_c01.",
        )
    )
    (lists / "trainlist01.txt").write_bytes(
        real_lines(UCF_LISTS / "trainlist01.txt", "v_CricketShot_g08_c01.", "v_SoccerJuggling_g23_c01.")
    )
    return root


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory) -> Path:
    """Kinetics-400: the real val CSV rows of the two segway clips (+ one clip not downloaded)."""
    if not (VIDEOS.is_dir() and K400_VAL.is_file()):
        pytest.skip("../shared/data not present")
    root = tmp_path_factory.mktemp("kinetics400")
    # one clip in a class folder, one flat
    link(TV / "R6llTwEh07w.mp4", root / "val" / "using segway" / "R6llTwEh07w_000000_000010.mp4")
    link(TV / "SOX5yA1l24A.mp4", root / "SOX5yA1l24A_000299_000309.mp4")
    lines = K400_VAL.read_bytes().splitlines(keepends=True)
    rows = [lines[0], lines[1]] + [line for line in lines if b"R6llTwEh07w" in line or b"SOX5yA1l24A" in line]
    (root / "kinetics-400_val.csv").write_bytes(b"".join(rows))
    return root


# -- metrics against hand-made truth -------------------------------------------------------------------------
def known_probs() -> tuple[np.ndarray, np.ndarray]:
    """5 videos, 7 classes: top-1 right for videos 0-2, label 3rd for video 3, last for video 4."""
    probs = np.full((5, 7), 0.01)
    for v, best in enumerate([0, 1, 2, 0, 0]):
        probs[v, best] = 0.5
    probs[3, 3], probs[3, 1] = 0.2, 0.3  # video 3 (label 3): ranked 0.5 (class 0), 0.3, 0.2 -> third
    probs[4, 3] = 0.001  # video 4 (label 3): last
    return probs / probs.sum(axis=1, keepdims=True), np.array([0, 1, 2, 3, 3])


def test_metrics_against_truth():
    probs, labels = known_probs()
    assert topk_hits(probs, labels, 1).tolist() == [True, True, True, False, False]
    assert topk_hits(probs, labels, 5).tolist() == [True, True, True, True, False]
    assert accuracy(probs, labels, 1) == pytest.approx(60.0)
    assert accuracy(probs, labels, 5) == pytest.approx(80.0)
    # classes 0, 1, 2: 100 %; class 3: 0 of 2; classes 4-6 have no videos and do not count
    assert per_class_accuracy(probs, labels, 7)[:4].tolist() == [100.0, 100.0, 100.0, 0.0]
    assert np.isnan(per_class_accuracy(probs, labels, 7)[4:]).all()
    assert mean_class_accuracy(probs, labels, 7) == pytest.approx(75.0)
    matrix = confusion_matrix(probs, labels, 7)
    assert matrix[3, 0] == 2 and matrix.trace() == 3 and matrix.sum() == 5
    # ties go to the class listed first; top-5 of 3 classes is top-3
    assert topk_hits(np.array([[0.5, 0.5]]), np.array([1]), 1).tolist() == [False]
    assert accuracy(np.array([[0.2, 0.3, 0.5]]), np.array([0]), 5) == 100.0
    assert math.isnan(accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))
    # sample standard deviation over splits
    assert mean_std([44.0, 46.0, 48.0]) == (46.0, 2.0)
    assert mean_std([50.0]) == (50.0, None)


class KnownScores:
    """A scorer at the TagRun level whose probabilities are given: the protocol is checked, not the model."""

    def __init__(self, labels, scores, errors=()):
        self.vocabulary = type("V", (), {"labels": list(labels), "templates": ["{}"]})()
        self.scores, self.errors, self.seen = scores, set(errors), []

    def results(self, tasks):
        import torch

        from xclip_cli.results import VideoResult

        for task in tasks:
            name = Path(task.path).name
            self.seen.append(name)
            labels = self.vocabulary.labels
            if name in self.errors:
                yield [VideoResult(task.path, None, None, None, None, labels, error="cannot decode video")]
            else:
                probs = torch.tensor(self.scores[name], dtype=torch.float64)
                yield [VideoResult(task.path, None, None, 1.0, probs, labels)]


def test_protocol_with_known_scores(tmp_path):
    probs, labels = known_probs()
    classes = [f"class {i}" for i in range(7)]
    for name in ["v0", "v1", "v2", "v3", "v4", "broken"]:
        (tmp_path / f"{name}.mp4").write_bytes(b"")
    records = [VideoRecord(f"v{i}.mp4", classes[label]) for i, label in enumerate(labels)]
    records.append(VideoRecord("broken.mp4", classes[1]))
    listed = [r.path for r in records] + ["gone.mp4"]
    split = Split("split1", records, ["gone.mp4"], classes, {}, str(tmp_path), "csv", "test", listed)
    scorer = KnownScores(classes, {f"v{i}.mp4": p for i, p in enumerate(probs)}, errors={"broken.mp4"})
    result = evaluate([split], scorer)
    metrics = result.splits[0].metrics
    assert (metrics["top1"], metrics["top5"], metrics["mean_class"]) == (60.0, 80.0, 75.0)
    assert metrics["videos"] == 5
    assert result.splits[0].counts() == {"listed": 7, "found": 6, "missing": 1, "failed": 1, "scored": 5}
    assert [p.error for p in result.splits[0].predictions][-2:] == ["cannot decode video", "missing"]
    assert not result.complete and result.summary["top1"] == {"mean": 60.0, "std": None, "splits": [60.0]}


def test_subsets_with_other_vocabularies_are_renormalised(tmp_path):
    """Splits scored against different class subsets: one scoring pass over the union, then renormalised."""
    (tmp_path / "a.mp4").write_bytes(b"")
    union = ["x", "y", "z"]
    first = Split(
        "subset1", [VideoRecord("a.mp4", "y")], [], ["x", "y"], root=str(tmp_path), listed=["a.mp4"]
    )
    second = Split(
        "subset2", [VideoRecord("a.mp4", "y")], [], ["y", "z"], root=str(tmp_path), listed=["a.mp4"]
    )
    scorer = KnownScores(union, {"a.mp4": [0.2, 0.3, 0.5]})
    result = evaluate([first, second], scorer)
    assert scorer.seen == ["a.mp4"]  # scored once for both splits
    assert result.splits[0].predictions[0].probs == pytest.approx([0.4, 0.6])
    assert result.splits[1].predictions[0].probs == pytest.approx([0.375, 0.625])
    assert [r.metrics["top1"] for r in result.splits] == [100.0, 0.0]
    assert result.summary["top1"]["mean"] == 50.0
    assert result.summary["top1"]["std"] == pytest.approx(math.sqrt(5000))  # sample std of [100, 0]


# -- Kinetics-600 novel classes ------------------------------------------------------------------------------
def official(name: str) -> list[str]:
    with open(LABELS / name, newline="") as f:
        return [row["name"] for row in csv.DictReader(f)]


@pytest.mark.skipif(not LABELS.is_dir(), reason="../shared/data/labels not present")
def test_k600_novel_classes_against_the_official_lists():
    k400, k600 = official("kinetics_400_labels.csv"), official("kinetics_600_labels.csv")
    novel = k600_novel_classes()
    assert len(novel) == 220 == len(set(novel))
    assert len(set(k600) - set(k400)) == 232  # the plain string difference the protocol must not use
    assert set(K400_TO_K600_RENAMES) <= set(k400) and set(K400_TO_K600_RENAMES.values()) <= set(k600)
    assert set(novel) == set(k600) - set(k400) - set(K400_TO_K600_RENAMES.values())
    assert novel == [c for c in k600 if c in set(novel)]  # Kinetics-600 order
    for member in [
        "acting in play",
        "alligator wrestling",
        "hugging baby",
        "opening wine bottle",
        "yarn spinning",
    ]:
        assert member in novel
    for renamed in [
        "dyeing hair",
        "waking up",
        "tying necktie",
        "passing american football (not in game)",
        "hugging (not baby)",
        "person collecting garbage",
    ]:
        assert renamed not in novel  # Kinetics-400 classes under their Kinetics-600 names
    shipped = {
        "hmdb51": "hmdb_51_labels.csv",
        "ucf101": "ucf_101_labels.csv",
        "kinetics400": "kinetics_400_labels.csv",
        "kinetics600": "kinetics_600_labels.csv",
    }
    for dataset, name in shipped.items():  # the lists we ship are the official files, byte for byte
        assert label_list(dataset)[1].read_bytes() == (LABELS / name).read_bytes()


def test_novel_subsets_are_seeded():
    subsets = novel_subsets(seed=0)
    assert [len(s) for s in subsets] == [160, 160, 160]
    assert len({tuple(s) for s in subsets}) == 3 and all(set(s) <= set(k600_novel_classes()) for s in subsets)
    assert subsets == novel_subsets(seed=0) and subsets != novel_subsets(seed=1)


def test_k600_novel_splits(tmp_path):
    subsets = novel_subsets()
    only_first = next(c for c in subsets[0] if c not in subsets[1] and c not in subsets[2])
    everywhere = next(c for c in subsets[0] if c in subsets[1] and c in subsets[2])
    rows = [
        "label,youtube_id,time_start,time_end,split",
        f"{only_first},aaaaaaaaaaa,0,10,val",
        f'"{everywhere}",bbbbbbbbbbb,5,15,val',
        "abseiling,ccccccccccc,0,10,val",
    ]  # a Kinetics-400 class: not part of the protocol
    (tmp_path / "k600_val.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "aaaaaaaaaaa_000000_000010.mp4").write_bytes(b"")
    splits = k600_novel(tmp_path)
    assert [s.name for s in splits] == ["subset1", "subset2", "subset3"]
    assert [len(s.class_names) for s in splits] == [160, 160, 160]
    absent = f"{everywhere}/bbbbbbbbbbb_000005_000015.mp4"
    assert splits[0].listed == ["aaaaaaaaaaa_000000_000010.mp4", absent]
    assert splits[1].records == [] and splits[1].missing == [absent]


# -- layouts -------------------------------------------------------------------------------------------------
@needs_data
def test_hmdb_layout(hmdb_root):
    for k in (1, 2, 3):
        split = hmdb51(hmdb_root, k)
        assert split.listed == hmdb_listed(k)
        assert split.missing == [p for p in hmdb_listed(k) if "Gone" in p]
    test = hmdb51(hmdb_root, 1)
    assert {r.path: r.label for r in test.records} == {
        "wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi": "wave",
        "wave/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi": "wave",
        "fall_floor/Broken_fall_floor_f_nm_np1_ba_bad_0.avi": "fall floor",
    }
    train = hmdb51(hmdb_root, 1, subset="train")
    assert [r.path for r in train.records] == [f"cartwheel/{HMDB[3][1]}"]
    assert len(test.files) == 1 + 3  # the label list and the three classes' split files, with hashes
    for path, digest in test.files.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest


@needs_data
def test_ucf_layout(ucf_root):
    test = ucf101(ucf_root, 1)
    names = test.class_names
    assert len(names) == 101 and names[:3] == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert names == label_list("ucf101")[0]  # classInd order is X-CLIP's label order
    assert {r.path: r.label for r in test.records} == {
        "CricketShot/v_CricketShot_g04_c01.avi": "CricketShot",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi": "HandstandPushups",
    }
    assert test.missing == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"]
    train = ucf101(ucf_root, 1, subset="train")
    assert [(r.path, r.label) for r in train.records] == [
        ("SoccerJuggling/v_SoccerJuggling_g23_c01.avi", names[83])
    ]
    assert train.missing == ["CricketShot/v_CricketShot_g08_c01.avi"]
    with pytest.raises(DatasetError, match="testlist02.txt"):
        ucf101(ucf_root, 2)


@needs_data
def test_kinetics_layout(kinetics_root):
    split = kinetics(kinetics_root)
    names = split.class_names
    assert len(names) == 400
    assert [(r.path, r.label) for r in split.records] == [
        ("val/using segway/R6llTwEh07w_000000_000010.mp4", "using segway"),
        ("SOX5yA1l24A_000299_000309.mp4", "using segway"),
    ]
    assert len(split.missing) == 1 and split.missing[0].startswith("abseiling/")


def test_kinetics_clip_names(tmp_path):
    """<id>_<start>_<end>.<ext>, or <id>.<ext> when the list has a single clip of that id."""
    rows = [
        "label,youtube_id,time_start,time_end,split",
        "abseiling,aaaaaaaaaaa,0,10,val",
        "abseiling,aaaaaaaaaaa,20,30,val",
        "archery,bbbbbbbbbbb,5,15,val",
        "archery,ccccccccccc,1,11,val",
    ]
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    for name in ["aaaaaaaaaaa.mp4", "bbbbbbbbbbb.mkv", "archery/ccccccccccc_000001_000011.webm"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    split = kinetics(tmp_path)
    assert [r.path for r in split.records] == ["bbbbbbbbbbb.mkv", "archery/ccccccccccc_000001_000011.webm"]
    spans = ("000000_000010", "000020_000030")
    assert split.missing == [f"abseiling/aaaaaaaaaaa_{span}.mp4" for span in spans]
    (tmp_path / "val.csv").write_text("youtube_id,time_start,time_end,split\naaaaaaaaaaa,0,10,test\n")
    with pytest.raises(DatasetError, match="no 'label' column"):
        kinetics(tmp_path)


def test_csv_layout(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "labels.txt").write_text("swim\nride a bike\n")
    (tmp_path / "list.csv").write_text("path,label\na.mp4,ride a bike\nb.mp4,0\n")
    split = csv_dataset(tmp_path / "list.csv", labels=tmp_path / "labels.txt")
    assert split.class_names == ["swim", "ride a bike"]
    assert split.records == [VideoRecord("a.mp4", "ride a bike")] and split.missing == ["b.mp4"]
    (tmp_path / "bad.csv").write_text("a.mp4,swim\nb.mp4\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: expected 'path,label'"):
        csv_dataset(tmp_path / "bad.csv")
    # without a vocabulary file: the labels present
    assert csv_dataset(tmp_path / "list.csv").class_names == ["0", "ride a bike"]


# -- end to end with a tiny random model ---------------------------------------------------------------------
def by_hand(rows: list[dict], classes: list[str]) -> tuple[float, float, int]:
    """Top-1 and top-5 accuracy recomputed from the predictions CSV (ties: first class wins)."""
    top1 = top5 = 0
    for row in rows:
        scores = [(-float(row[c]), i) for i, c in enumerate(classes) if row[c] != ""]
        order = [classes[i] for _, i in sorted(scores)]
        top1 += order[0] == row["label"]
        top5 += row["label"] in order[:5]
    return 100.0 * top1 / len(rows), 100.0 * top5 / len(rows), len(rows)


@needs_data
def test_hmdb_all_splits_end_to_end(tiny_dir, hmdb_root, tmp_path):
    out, preds, plots = tmp_path / "results.json", tmp_path / "preds.csv", tmp_path / "plots"
    proc = xclip(
        "eval",
        "--dataset",
        "hmdb51",
        "--root",
        hmdb_root,
        "--split",
        "all",
        "-m",
        tiny_dir,
        "--workers",
        "0",
        "-o",
        out,
        "--predictions",
        preds,
        "--plots",
        plots,
    )
    assert proc.returncode == 1, proc.stderr  # some listed videos are missing or undecodable
    assert "Traceback" not in proc.stderr and "evaluated 4/4 videos" in proc.stderr
    assert "split1" in proc.stdout and "mean ± std" in proc.stdout
    results = json.loads(out.read_text())
    rows = read_predictions(preds)
    names = label_list("hmdb51")[0]
    assert results["dataset"] == "hmdb51" and results["unique_videos_scored"] == 4
    for k, split in enumerate(results["splits"], start=1):
        listed = hmdb_listed(k)
        mine = [r for r in rows if r["split"] == f"split{k}"]
        # every listed video is accounted for: scored, missing or failed, nothing else
        assert [r["path"] for r in mine] == listed
        scored = [r for r in mine if not r["error"]]
        assert sorted(split["missing"]) == sorted(r["path"] for r in mine if r["error"] == "missing")
        assert sorted(f["path"] for f in split["failed"]) == sorted(
            r["path"] for r in mine if r["error"] and r["error"] != "missing"
        )
        assert all("Broken" in f["path"] and f["error"] for f in split["failed"])
        counts = split["counts"]
        assert counts["listed"] == len(listed) == counts["scored"] + counts["missing"] + counts["failed"]
        assert counts["scored"] == 2 == split["metrics"]["videos"]
        # the accuracies are what the written predictions give by hand
        top1, top5, n = by_hand(scored, names)
        assert (split["metrics"]["top1"], split["metrics"]["top5"], split["metrics"]["videos"]) == (
            pytest.approx(top1),
            pytest.approx(top5),
            n,
        )
        assert split["class_names"] == names and len(split["files"]) == 4
    # --split all: mean and sample standard deviation of the three splits
    for metric in ("top1", "top5", "mean_class"):
        values = [s["metrics"][metric] for s in results["splits"]]
        assert results["summary"][metric]["mean"] == pytest.approx(statistics.mean(values))
        assert results["summary"][metric]["std"] == pytest.approx(statistics.stdev(values))
    assert "ddof=1" in results["metrics"]["std"]
    # what defines the number
    assert results["frames"] == 8 and results["views"] == "1x1" and results["sampling"]["crops"] == 1
    assert results["model"]["source"] == str(tiny_dir) and results["model"]["precision"] == "fp32"
    assert results["versions"]["torch"] and results["versions"]["xclip-cli"]
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        f"split{k}_{kind}.png" for k in (1, 2, 3) for kind in ("confusion", "per_class_accuracy")
    )
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.iterdir())


@needs_data
def test_overlapping_splits_decode_each_video_once(tiny_dir, hmdb_root, monkeypatch):
    from xclip_cli import pipeline

    calls = []
    real = pipeline.load_clips

    def counting(task, spec):
        calls.append(Path(task.path).name)
        return real(task, spec)

    monkeypatch.setattr(pipeline, "load_clips", counting)
    result = evaluate(load_splits("hmdb51", hmdb_root, "all"), model=str(tiny_dir), workers=0)
    on_disk = {Path(p).name for k in (1, 2, 3) for p in hmdb_listed(k) if "Gone" not in p}
    assert sorted(calls) == sorted(on_disk)  # each once, though splits share them
    assert [r.counts()["listed"] for r in result.splits] == [len(hmdb_listed(k)) for k in (1, 2, 3)]


@needs_data
def test_ucf_split_end_to_end(tiny_dir, ucf_root, tmp_path):
    preds = tmp_path / "p.csv"
    code, out, err = invoke(
        "eval", "-d", "ucf101", "--root", ucf_root, "-m", tiny_dir, "--workers", "0", "--predictions", preds
    )
    assert code == 1, err
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi" in err and "split1" in out
    rows = read_predictions(preds)
    assert [(r["path"], r["label"], r["error"]) for r in rows] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "", "missing"),
        ("CricketShot/v_CricketShot_g04_c01.avi", "CricketShot", ""),
        ("HandstandPushups/v_HandStandPushups_g01_c01.avi", "HandstandPushups", ""),
    ]
    assert [r["label_index"] for r in rows[1:]] == ["23", "36"]
    assert all(abs(sum(float(r[c]) for c in label_list("ucf101")[0]) - 1) < 1e-4 for r in rows[1:])


@needs_data
def test_kinetics_end_to_end_and_4x3_views_deterministic(tiny_dir, kinetics_root, tmp_path):
    out = tmp_path / "k.json"
    code, _, err = invoke(
        "eval", "-d", "kinetics400", "--root", kinetics_root, "-m", tiny_dir, "--workers", "0", "-o", out
    )
    assert code == 1, err
    results = json.loads(out.read_text())
    assert results["splits"][0]["counts"] == {"listed": 3, "found": 2, "missing": 1, "failed": 0, "scored": 2}
    assert str(kinetics_root / "kinetics-400_val.csv") in results["splits"][0]["files"]

    splits = load_splits("kinetics400", kinetics_root)
    a = evaluate(splits, model=str(tiny_dir), views="4x3", workers=0)
    b = evaluate(splits, model=str(tiny_dir), views="4x3", workers=1)
    one = evaluate(splits, model=str(tiny_dir), workers=0)
    assert a.settings["views"] == "4x3"
    for pa, pb, po in zip(a.splits[0].scored, b.splits[0].scored, one.splits[0].scored):
        assert np.array_equal(pa.probs, pb.probs)
        assert not np.array_equal(pa.probs, po.probs)


# -- usage errors --------------------------------------------------------------------------------------------
def test_usage_errors(tiny_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.mp4,swim\nb.mp4\n")
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    for args, needle in [
        (["-d", "hmdb51", "--root", empty], "HMDB-51 split files"),
        (["-d", "ucf101", "--root", tmp_path / "nowhere"], "not a folder"),
        (["-d", "csv", "--root", bad], "bad.csv:3: expected 'path,label'"),
        (["-d", "kinetics400", "--root", empty, "--split", "2"], "has one split"),
        (["-d", "hmdb51", "--root", empty, "--split", "4"], "1, 2, 3 or all"),
        (["-d", "csv", "--root", bad, "-o", existing], "--overwrite"),
    ]:
        code, _, err = invoke("eval", *args, "-m", tiny_dir)
        assert code == 2, (args, err)
        assert needle in err and len(err.strip().splitlines()) == 1, err


@needs_data
def test_model_that_cannot_load_exits_3(tmp_path):
    (tmp_path / "list.csv").write_text(f"{VIDEOS / 'decord' / 'video_0.mov'},waving\n")
    code, _, err = invoke("eval", "-d", "csv", "--root", tmp_path / "list.csv", "-m", tmp_path / "no-model")
    assert code == 3 and "not found" in err
