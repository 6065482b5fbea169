"""Dataset layouts -> records: HMDB-51, UCF-101, Kinetics-400/600, Kinetics-600 zero-shot classes, CSV lists.

Each loader returns a :class:`Split`: the videos a split lists, as
:class:`~xclip_cli.data.records.VideoRecord` (path relative to the split's ``root``, the class name as
``label``: one of ``class_names``), the listed videos that are not on disk (``missing``:
never dropped silently), the label texts in vocabulary order, and the sha256 of every file that defined it::

    from xclip_cli.data.datasets import hmdb51, ucf101
    test = hmdb51("/data/hmdb51", split=1)                 # the official test list of split 1
    train = ucf101("/data/ucf101", split=1, subset="train")  # trainlist01, for fine-tuning
    for r in train.records:
        print(train.path_of(r), r.label)

Layouts (see ``../shared/data/splits/FORMATS.md`` of the project for the evidence):

* HMDB-51: ``ROOT/<class>/<clip>.avi`` and the official ``<class>_test_split<k>.txt`` files (lines
  ``<clip>.avi <tag>``; 1 = train, 2 = test, 0 = unused). The class comes from the split file name,
  never from the clip name (class names contain underscores).
* UCF-101: ``ROOT/<Class>/v_<Class>_gXX_cYY.avi``, ``classInd.txt`` (1-based, case-insensitive order),
  ``testlist0k.txt`` (paths) and ``trainlist0k.txt`` (paths and 1-based labels). The class is the folder
  part of the listed path: the folder ``HandstandPushups`` holds ``v_HandStandPushups_*`` files.
* Kinetics: the official annotation CSV (``label,youtube_id,time_start,time_end,...``) and clips named
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under ROOT (flat or one folder per class), or
  ``<youtube_id>.<ext>``.
* CSV: ``path,label[,start,end]`` rows (a header is optional), the clip-list grammar of
  :func:`xclip_cli.data.records.read_clip_list` that ``xclip finetune --data`` reads too.

Vocabularies are the official X-CLIP label lists shipped in ``label_lists/`` (row order = class index).
Layout problems raise :class:`DatasetError` naming the file (and line).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UsageError
from ..files import READ_TIMEOUT_S, TextError, decode_text, read_bytes
from .discover import DEFAULT_EXTENSIONS
from .labels import read_labels
from .records import VideoRecord, read_clip_list

__all__ = [
    "DATASETS",
    "K400_TO_K600_RENAMES",
    "DatasetError",
    "Split",
    "csv_dataset",
    "hmdb51",
    "k600_novel",
    "k600_novel_classes",
    "kinetics",
    "label_list",
    "load_splits",
    "novel_subsets",
    "sha256_of",
    "ucf101",
]

PathLike = str | os.PathLike[str]
log = logging.getLogger(__name__)

#: The dataset names `load_splits` (and ``xclip eval --dataset``) understands.
DATASETS: tuple[str, ...] = ("hmdb51", "ucf101", "kinetics400", "kinetics600", "k600-novel", "csv")

_LIST_DIR = Path(__file__).parent / "label_lists"
_LABEL_FILES = {
    "hmdb51": "hmdb_51_labels.csv",
    "ucf101": "ucf_101_labels.csv",
    "kinetics400": "kinetics_400_labels.csv",
    "kinetics600": "kinetics_600_labels.csv",
}

#: Kinetics-400 classes that Kinetics-600 kept under a new name (the same clips carry the new label).
#: Source: the labels each clip carries in both releases, counted clip by clip in
#: prijatelj/human-activity-recognition-in-an-open-world @ b9ea3bcf50d7ae700a7acb0f7888f5e5c442f4fb,
#: arn/scripts/data_management/kinetics_data_analysis.yaml, ``Kinetics600.same_sample_label_changes
#: .from_kinetics400`` (223 to 863 clips per pair; no other Kinetics-400 label moved). With these twelve,
#: 600 - 368 unchanged - 12 renamed = 220 Kinetics-600 classes are new: the count of the ER-ZSAR protocol
#: (Chen & Huang, ICCV 2021; its class indices 400..619 in DeLightCMU/ElaborativeRehearsal
#: datasets/Kinetics/zsl220/*_class_idxs.json) that X-CLIP follows. A plain string difference of the two
#: label lists gives 232. The other 20 Kinetics-400 names are absent from Kinetics-600.
K400_TO_K600_RENAMES: dict[str, str] = {
    "baby waking up": "waking up",
    "balloon blowing": "inflating balloons",
    "changing wheel": "changing wheel (not on bike)",
    "cooking sausages": "cooking sausages (not on barbeque)",
    "dying hair": "dyeing hair",
    "garbage collecting": "person collecting garbage",
    "hugging": "hugging (not baby)",
    "making bed": "making the bed",
    "opening bottle": "opening bottle (not wine)",
    "passing American football (not in game)": "passing american football (not in game)",
    "throwing ball": "throwing ball (not baseball or American football)",
    "tying tie": "tying necktie",
}


class DatasetError(UsageError):
    """A dataset layout, split file or list that cannot be used; the message names the file (and line)."""


@dataclass
class Split:
    """The videos of one split of a dataset and everything that defines it.

    ``records`` are the listed videos found on disk and ``missing`` the listed ones that are not (paths
    as listed, relative to ``root``); ``listed`` is every listed path in list order. ``class_names`` are
    the label texts in vocabulary order (each record's ``label`` is one of them). ``files`` maps every file that
    defined the split (split lists, annotations, label list) to its sha256.
    """

    name: str
    records: list[VideoRecord]
    missing: list[str]
    class_names: list[str]
    files: dict[str, str] = field(default_factory=dict)
    root: str = "."
    dataset: str = ""
    subset: str = "test"
    listed: list[str] = field(default_factory=list)

    def path_of(self, record: VideoRecord) -> Path:
        """The file of `record` (its path joined to ``root``; absolute paths stay as they are)."""
        return Path(self.root) / record.path

    def videos(self, where: str = "") -> list[VideoRecord]:
        """The records found on disk as :class:`VideoRecord`: absolute path, class name, time range;
        ``where`` (for messages) is ``"{where}: {listed path}"``."""
        return [
            VideoRecord(
                os.path.abspath(self.path_of(r)),
                r.label,
                r.start,
                r.end,
                f"{where}: {r.path}" if where else r.path,
            )
            for r in self.records
        ]

    def head(self, n: int) -> Split:
        """The same split cut to its first `n` listed videos (``--limit``)."""
        keep = set(self.listed[:n])
        return replace(
            self,
            records=[r for r in self.records if r.path in keep],
            missing=[m for m in self.missing if m in keep],
            listed=self.listed[:n],
        )


# -- helpers ---------------------------------------------------------------------------------------------
def sha256_of(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def label_list(dataset: str) -> tuple[list[str], Path]:
    """The official X-CLIP label texts of `dataset` (hmdb51, ucf101, kinetics400, kinetics600) and file."""
    path = _LIST_DIR / _LABEL_FILES[dataset]
    return read_labels(path), path


def _read_text(path: Path, what: str) -> str:
    try:
        data = read_bytes(path, timeout=READ_TIMEOUT_S)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except OSError as err:
        raise DatasetError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        return decode_text(data, path)
    except TextError as err:
        raise DatasetError(str(err)) from None


def _lines(path: Path, what: str) -> Iterable[tuple[int, str]]:
    """(line number, stripped line) of the non-blank lines; CRLF and a trailing space are fine."""
    for number, line in enumerate(_read_text(path, what).splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _check_root(root: PathLike) -> Path:
    path = Path(root).expanduser().absolute()  # results name their files unambiguously
    if not path.is_dir():
        raise DatasetError(f"dataset root is not a folder: {path}")
    return path


def _find_dir(root: Path, given: PathLike | None, pattern: str, what: str) -> Path:
    """`given`, or the one folder among ROOT and its direct subfolders that holds files matching `pattern`."""
    if given is not None:
        path = Path(given).expanduser().absolute()
        if not path.is_dir():
            raise DatasetError(f"{what} folder not found: {path}")
        return path
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    found = [d for d in candidates if any(d.glob(pattern))]
    if not found:
        raise DatasetError(f"no {what} ({pattern}) in {root} or its subfolders; pass --splits-dir")
    if len(found) > 1:
        folders = ", ".join(map(str, found))
        raise DatasetError(f"{what} found in several folders ({folders}); pass --splits-dir")
    return found[0]


def _split_record(
    root: Path,
    rel: str,
    label: str,
    records: list[VideoRecord],
    missing: list[str],
    listed: list[str],
    seen: set[str],
    start: float | None = None,
    end: float | None = None,
) -> None:
    if rel in seen:
        return
    seen.add(rel)
    listed.append(rel)
    if (root / rel).is_file():
        records.append(VideoRecord(rel, label, start, end))
    else:
        missing.append(rel)


def _check_subset(subset: str, allowed: Sequence[str]) -> None:
    if subset not in allowed:
        raise DatasetError(f"subset must be one of {', '.join(allowed)}; got {subset!r}")


# -- HMDB-51 ---------------------------------------------------------------------------------------------
def hmdb51(root: PathLike, split: int = 1, subset: str = "test", splits_dir: PathLike | None = None) -> Split:
    """HMDB-51 split `split` (1-3): the clips tagged 2 (test) or 1 (train) in ``<class>_test_split<k>.txt``.

    `splits_dir` defaults to the folder under ROOT (ROOT itself or a direct subfolder such as
    ``testTrainMulti_7030_splits``) holding the split files. The vocabulary is the official
    ``hmdb_51_labels.csv`` (folder ``brush_hair`` is the label text ``brush hair``).
    """
    _check_subset(subset, ("test", "train"))
    if split not in (1, 2, 3):
        raise DatasetError(f"HMDB-51 has splits 1, 2 and 3; got {split}")
    base = _check_root(root)
    folder = _find_dir(base, splits_dir, "*_test_split1.txt", "HMDB-51 split files")
    suffix = f"_test_split{split}.txt"
    split_files = sorted(folder.glob(f"*{suffix}"))
    if not split_files:
        raise DatasetError(f"no HMDB-51 split files *{suffix} in {folder}")
    names, label_file = label_list("hmdb51")
    if len(split_files) != len(names):
        log.warning("%s: split files of %d of the %d HMDB-51 classes", folder, len(split_files), len(names))
    index = {name: i for i, name in enumerate(names)}
    target = "2" if subset == "test" else "1"
    records: list[VideoRecord] = []
    missing: list[str] = []
    listed: list[str] = []
    seen: set[str] = set()
    files = {str(label_file): sha256_of(label_file)}
    for path in split_files:
        cls = path.name[: -len(suffix)]
        label = index.get(cls.replace("_", " "))
        if label is None:
            raise DatasetError(f"{path}: {cls!r} is not an HMDB-51 class")
        files[str(path)] = sha256_of(path)
        for number, line in _lines(path, "HMDB-51 split file"):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DatasetError(f"{path}:{number}: expected '<clip>.avi <0|1|2>', got {line!r}")
            if fields[1] == target:
                _split_record(base, f"{cls}/{fields[0]}", names[label], records, missing, listed, seen)
    return Split(f"split{split}", records, missing, names, files, str(base), "hmdb51", subset, listed)


# -- UCF-101 ---------------------------------------------------------------------------------------------
def _class_ind(path: Path) -> list[str]:
    names: list[str] = []
    for number, line in _lines(path, "UCF-101 classInd.txt"):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) != len(names) + 1:
            raise DatasetError(f"{path}:{number}: expected '{len(names) + 1} <ClassName>', got {line!r}")
        names.append(fields[1])
    if not names:
        raise DatasetError(f"{path}: no classes")
    return names


def ucf101(root: PathLike, split: int = 1, subset: str = "test", splits_dir: PathLike | None = None) -> Split:
    """UCF-101 split `split` (1-3): ``testlist0k.txt`` or ``trainlist0k.txt`` with ``classInd.txt``.

    `splits_dir` defaults to the folder under ROOT (ROOT itself or a direct subfolder such as
    ``ucfTrainTestlist``) holding ``classInd.txt``. Class order and label texts are classInd's (the
    official, case-insensitive order, identical to X-CLIP's ``ucf_101_labels.csv``); each video's
    class is the folder of its listed path. A trainlist label that disagrees with it is an error.
    """
    _check_subset(subset, ("test", "train"))
    if split not in (1, 2, 3):
        raise DatasetError(f"UCF-101 has splits 1, 2 and 3; got {split}")
    base = _check_root(root)
    folder = _find_dir(base, splits_dir, "classInd.txt", "UCF-101 classInd.txt")
    class_file = folder / "classInd.txt"
    names = _class_ind(class_file)
    index = {name: i for i, name in enumerate(names)}
    folded = {name.lower(): i for i, name in enumerate(names)}
    list_file = folder / f"{subset}list{split:02d}.txt"
    records: list[VideoRecord] = []
    missing: list[str] = []
    listed: list[str] = []
    seen: set[str] = set()
    for number, line in _lines(list_file, "UCF-101 split file"):
        fields = line.split()
        rel = fields[0].replace("\\", "/")
        cls = rel.split("/")[0] if "/" in rel else ""
        label = index.get(cls, folded.get(cls.lower()))
        if label is None:
            raise DatasetError(
                f"{list_file}:{number}: folder {cls!r} of {rel!r} is not a class of {class_file}"
            )
        if subset == "train":
            if len(fields) != 2 or not fields[1].isdigit():
                raise DatasetError(
                    f"{list_file}:{number}: expected '<Class>/<clip>.avi <label>', got {line!r}"
                )
            if int(fields[1]) != label + 1:
                raise DatasetError(
                    f"{list_file}:{number}: label {fields[1]} disagrees with classInd ({cls} is {label + 1})"
                )
        elif len(fields) != 1:
            raise DatasetError(f"{list_file}:{number}: expected '<Class>/<clip>.avi', got {line!r}")
        _split_record(base, rel, names[label], records, missing, listed, seen)
    files = {str(class_file): sha256_of(class_file), str(list_file): sha256_of(list_file)}
    return Split(f"split{split}", records, missing, names, files, str(base), "ucf101", subset, listed)


# -- Kinetics --------------------------------------------------------------------------------------------
@dataclass
class _KineticsRow:
    line: int
    label: str
    youtube_id: str
    start: int
    end: int


def _find_annotations(root: Path) -> Path:
    found = sorted(
        p
        for d in (root, root / "annotations")
        if d.is_dir()
        for p in d.glob("*.csv")
        if "val" in p.stem.lower()
    )
    if len(found) != 1:
        what = "no" if not found else f"several ({', '.join(p.name for p in found)})"
        raise DatasetError(
            f"{what} validation annotation CSV in {root} or {root / 'annotations'}; pass --annotations"
        )
    return found[0]


def _kinetics_rows(path: Path) -> list[_KineticsRow]:
    text = _read_text(path, "Kinetics annotation CSV")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[_KineticsRow] = []
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        required = ("label", "youtube_id", "time_start", "time_end")
        if "youtube_id" in header and "label" not in header:
            raise DatasetError(f"{path}: no 'label' column (a test list without labels cannot be evaluated)")
        if not all(c in header for c in required):
            raise DatasetError(
                f"{path}:1: expected a header with {', '.join(required)}; got {','.join(header)}"
            )
        col = {c: header.index(c) for c in required}
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) < len(header):
                raise DatasetError(
                    f"{path}:{reader.line_num}: {len(cells)} fields, the header has {len(header)}"
                )
            try:
                start, end = (int(float(cells[col[c]])) for c in ("time_start", "time_end"))
            except ValueError:
                raise DatasetError(f"{path}:{reader.line_num}: time_start/time_end must be numbers") from None
            label, youtube_id = cells[col["label"]].strip(), cells[col["youtube_id"]].strip()
            rows.append(_KineticsRow(reader.line_num, label, youtube_id, start, end))
    except csv.Error as err:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None
    return rows


def _video_index(root: Path) -> dict[str, list[str]]:
    """File stem -> relative paths of the video files under `root` (symlinked folders followed once)."""
    index: dict[str, list[str]] = {}
    visited: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext[1:].lower() in DEFAULT_EXTENSIONS:
                index.setdefault(stem, []).append(os.path.relpath(os.path.join(folder, name), root))
    return index


def _kinetics_file(index: dict[str, list[str]], row: _KineticsRow, bare_id: bool) -> str | None:
    """The clip of `row`: ``<id>_<start>_<end>.*``, else (`bare_id`: the id has one row) ``<id>.*``."""
    stems = [f"{row.youtube_id}_{row.start:06d}_{row.end:06d}"] + ([row.youtube_id] if bare_id else [])
    for stem in stems:
        paths = index.get(stem)
        if paths:
            # Several files of that name: prefer the one in the class's folder (spaces or underscores).
            folders = {row.label, row.label.replace(" ", "_")}
            return next((p for p in paths if Path(p).parent.name in folders), paths[0])
    return None


def _kinetics_split(
    base: Path,
    rows: Sequence[_KineticsRow],
    index: dict[str, list[str]],
    names: list[str],
    name: str,
    dataset: str,
    files: dict[str, str],
    annotations: Path,
    subset: str,
) -> Split:
    label_of = {n: i for i, n in enumerate(names)}
    records: list[VideoRecord] = []
    missing: list[str] = []
    listed: list[str] = []
    seen: set[str] = set()
    # A file named by the bare id can only stand for an id's clip when the list has one clip of that id.
    segments: dict[str, set[tuple[int, int]]] = {}
    for row in rows:
        segments.setdefault(row.youtube_id, set()).add((row.start, row.end))
    for row in rows:
        found = _kinetics_file(index, row, bare_id=len(segments[row.youtube_id]) == 1)
        rel = found or f"{row.label}/{row.youtube_id}_{row.start:06d}_{row.end:06d}.mp4"
        key = found or rel
        if key in seen:
            continue
        seen.add(key)
        listed.append(key)
        if found:
            records.append(VideoRecord(found, names[label_of[row.label]]))
        else:
            missing.append(rel)
    return Split(name, records, missing, names, dict(files), str(base), dataset, subset, listed)


def kinetics(root: PathLike, annotations: PathLike | None = None, version: int = 400) -> Split:
    """Kinetics-400 or -600: every row of the annotation CSV, against the official 400/600 label list.

    `annotations` defaults to the one CSV with ``val`` in its name in ROOT or ROOT/annotations. Clips are
    found by file name anywhere under ROOT; a row whose clip is absent is listed in ``missing`` as
    ``<label>/<youtube_id>_<start>_<end>.mp4``.
    """
    if version not in (400, 600):
        raise DatasetError(f"Kinetics version must be 400 or 600; got {version}")
    base = _check_root(root)
    ann = Path(annotations).expanduser().absolute() if annotations is not None else _find_annotations(base)
    rows = _kinetics_rows(ann)
    names, label_file = label_list(f"kinetics{version}")
    known = set(names)
    for row in rows:
        if row.label not in known:
            renamed = version == 600 and row.label in K400_TO_K600_RENAMES
            hint = " (a Kinetics-400 name; Kinetics-600 renamed it)" if renamed else ""
            raise DatasetError(f"{ann}:{row.line}: {row.label!r} is not a Kinetics-{version} class{hint}")
    files = {str(ann): sha256_of(ann), str(label_file): sha256_of(label_file)}
    return _kinetics_split(
        base,
        rows,
        _video_index(base),
        names,
        ann.stem,
        f"kinetics{version}",
        files,
        ann,
        "val" if "val" in ann.stem.lower() else ann.stem,
    )


def k600_novel_classes() -> list[str]:
    """The 220 Kinetics-600 classes absent from Kinetics-400 (renames excluded), in Kinetics-600 order."""
    k400, _ = label_list("kinetics400")
    k600, _ = label_list("kinetics600")
    old = set(k400) | {K400_TO_K600_RENAMES.get(name, name) for name in k400}
    return [name for name in k600 if name not in old]


def novel_subsets(seed: int = 0, n: int = 160, count: int = 3) -> list[list[str]]:
    """`count` subsets of `n` Kinetics-600 novel classes each, in Kinetics-600 order.

    Subset ``i`` is the `n` classes whose ``sha256("k600-novel:<seed>:<i>:<name>")`` are smallest: the
    same on every machine and Python version, independent of any random-number library.
    """
    classes = k600_novel_classes()
    if not 0 < n <= len(classes):
        raise DatasetError(f"a subset needs 1 to {len(classes)} classes; got {n}")
    subsets = []
    for i in range(count):

        def rank(name: str, i: int = i) -> str:
            return hashlib.sha256(f"k600-novel:{seed}:{i}:{name}".encode()).hexdigest()

        ranked = sorted(classes, key=rank)
        chosen = set(ranked[:n])
        subsets.append([c for c in classes if c in chosen])
    return subsets


def k600_novel(
    root: PathLike, annotations: PathLike | None = None, seed: int = 0, n: int = 160, count: int = 3
) -> list[Split]:
    """The Kinetics-600 zero-shot protocol: one split per subset of :func:`novel_subsets`.

    Each split lists the annotation rows of its classes and is scored against those classes only. Rows
    of the classes Kinetics-600 shares with Kinetics-400 are not part of the protocol.
    """
    base = _check_root(root)
    ann = Path(annotations).expanduser().absolute() if annotations is not None else _find_annotations(base)
    rows = _kinetics_rows(ann)
    k600, label_file = label_list("kinetics600")
    known = set(k600)
    for row in rows:
        if row.label not in known:
            raise DatasetError(f"{ann}:{row.line}: {row.label!r} is not a Kinetics-600 class")
    files = {str(ann): sha256_of(ann), str(label_file): sha256_of(label_file)}
    index = _video_index(base)
    splits = []
    for i, subset in enumerate(novel_subsets(seed, n, count), start=1):
        chosen = set(subset)
        split = _kinetics_split(
            base,
            [r for r in rows if r.label in chosen],
            index,
            subset,
            f"subset{i}",
            "k600-novel",
            files,
            ann,
            "val" if "val" in ann.stem.lower() else ann.stem,
        )
        splits.append(split)
    return splits


# -- CSV -------------------------------------------------------------------------------------------------
def csv_dataset(path: PathLike, labels: PathLike | None = None, root: PathLike | None = None) -> Split:
    """Any ``path,label[,start,end]`` list (:func:`~xclip_cli.data.records.read_clip_list`). Paths are relative to `root` (default: the CSV's folder) or absolute.

    The vocabulary is the `labels` file (one label per line, or a CSV with a ``name`` column; a row's
    label may then also be a 0-based index into it), else the labels present, sorted.
    """
    file = Path(path).expanduser().absolute()
    rows, problems = read_clip_list(file)
    if problems:
        shown = "".join(f"\n  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(
            problems[0] if len(problems) == 1 else f"{len(problems)} problems in {file}:{shown}{more}"
        )
    entries = [(r, r.path, r.label) for r in rows]

    files = {str(file): sha256_of(file)}
    if labels is not None:
        names = read_labels(labels)
        files[str(Path(labels).absolute())] = sha256_of(labels)
    else:
        names = sorted({label for _, _, label in entries})
    label_of = {name: i for i, name in enumerate(names)}
    base = Path(root).expanduser().absolute() if root is not None else file.parent
    records: list[VideoRecord] = []
    missing: list[str] = []
    listed: list[str] = []
    seen: set[str] = set()
    for row, video, label in entries:
        index = label_of.get(label)
        if index is None and labels is not None and label.isdigit() and int(label) < len(names):
            index = int(label)
        if index is None:
            raise DatasetError(f"{row.where}: label {label!r} is not in {labels}")
        _split_record(base, video, names[index], records, missing, listed, seen, row.start, row.end)
    return Split(file.stem, records, missing, names, files, str(base), "csv", "test", listed)


# -- one entry point -------------------------------------------------------------------------------------
def load_splits(
    dataset: str,
    root: PathLike,
    split: str | int | None = None,
    *,
    subset: str = "test",
    splits_dir: PathLike | None = None,
    annotations: PathLike | None = None,
    labels: PathLike | None = None,
    seed: int = 0,
) -> list[Split]:
    """The splits ``xclip eval --dataset D --split S`` evaluates (what `split` means depends on D).

    hmdb51 / ucf101: split 1, 2, 3 or ``all`` (default 1). k600-novel: subset 1, 2, 3 or ``all``
    (default all: the protocol reports mean and std over the three). kinetics400 / kinetics600 / csv: one
    split, the annotation file or list (`split` must be None or 1). For csv, `root` is the CSV file, or
    the folder paths are relative to when `annotations` names the CSV.
    """
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    text = None if split is None else str(split).strip().lower()
    if dataset in ("hmdb51", "ucf101", "k600-novel"):
        text = text or ("all" if dataset == "k600-novel" else "1")
        if text not in ("1", "2", "3", "all"):
            raise DatasetError(f"--split must be 1, 2, 3 or all; got {split!r}")
        numbers = [1, 2, 3] if text == "all" else [int(text)]
        if dataset == "k600-novel":
            every = k600_novel(root, annotations, seed=seed)
            return [every[k - 1] for k in numbers]
        load = hmdb51 if dataset == "hmdb51" else ucf101
        return [load(root, k, subset=subset, splits_dir=splits_dir) for k in numbers]
    if text not in (None, "1"):
        raise DatasetError(f"{dataset} has one split (its annotation file); --split {split} is not available")
    if dataset == "csv":
        base = Path(root).expanduser()
        if annotations is None:
            if not base.is_file():
                raise DatasetError("--dataset csv needs the list: --root LIST.csv, or --annotations LIST.csv")
            return [csv_dataset(base, labels)]
        return [csv_dataset(annotations, labels, root=base)]
    return [kinetics(root, annotations, version=int(dataset.removeprefix("kinetics")))]
