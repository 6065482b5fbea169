"""Checkpoints (``last/``, ``best/``: a model folder + ``state.pt``, replaced atomically) and the run folder
(lock, refusal to replace what is not ours, the files of a run; its metrics and curves are written by
xclip_cli.reports.training)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__, files
from ..reports.training import (  # noqa: F401 - the run's metrics and curves live in reports.training
    plot_curves,
    try_plot,
    write_metrics,
)
from .config import (
    LOCK_NAME,
    RUN_CONFIG,
    RUNTIME_OPTIONS,
    STATE_FILE,
    STATE_FORMAT,
    FinetuneConfig,
    RunFolderError,
    SaveError,
)
from .data import TrainData, write_clip_list

log = logging.getLogger(__name__)


def write_text(path: Path, text: str) -> None:
    """Replace `path` all or nothing, with the user's umask (OSError leaves it as it was)."""
    files.atomic_write(path, lambda fh: fh.write(text))


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the folder `tmp` at `target` (a rename for the new one; the old one is removed afterwards)."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(target: Path) -> None:
    """A kill between the two renames of :func:`replace_dir` leaves only ``.NAME.old``: take it back."""
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.exists():
        os.replace(old, target)


def _folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 less the umask."""
    return 0o777 & ~files.umask()


def save_checkpoint(
    run_dir: Path, name: str, model: nn.Module, state: dict[str, Any], metadata: dict[str, Any]
) -> Path:
    """Write ``run_dir/name`` (model folder + state.pt) atomically: a temporary folder, then a rename.

    Files and folder get the user's umask. On any error (disk full...) the temporary folder is removed
    and ``run_dir/name`` is left as it was.
    """
    from ..model import save_model

    target = run_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=run_dir))
    try:
        save_model(model, tmp, metadata)
        torch.save(state, tmp / STATE_FILE)
        for path in tmp.iterdir():  # on disk before the rename makes them the checkpoint
            os.chmod(path, files.default_mode())  # safetensors writes 0600, mkdtemp makes 0700
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _folder_mode())
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.fsync_folder(run_dir)
    return target


@contextlib.contextmanager
def writing(run_dir: Path, what: str) -> Iterator[None]:
    """An OSError while writing `what` (disk full, I/O error) becomes one :class:`SaveError` line."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise SaveError(
            f"cannot write {what} in run folder {run_dir}: {reason}; what was saved before is intact"
            + (" (--resume continues from last/)" if (run_dir / "last" / STATE_FILE).is_file() else "")
        ) from err


def load_state(folder: Path) -> dict[str, Any]:
    """``state.pt`` of a checkpoint folder (tensors, numbers, strings and containers only)."""
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RunFolderError(f"{folder / STATE_FILE}: not an xclip-cli training state")
    return state


# -- the run folder -----------------------------------------------------------------------------------------
def _entries(folder: Path) -> list[Path]:
    """What `folder` holds besides our lock file."""
    return [p for p in folder.iterdir() if p.name != LOCK_NAME]


def _check_output(output: Path) -> None:
    """Refuse, in one line, an --output that is a file, lies under a file or cannot be written."""
    if output.exists() and not output.is_dir():
        raise RunFolderError(f"--output {output} is a file, not a run folder")
    for ancestor in (output, *output.parents):
        if os.path.lexists(ancestor):
            break
    if not ancestor.is_dir():
        raise RunFolderError(f"--output {output}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunFolderError(f"--output {output}: cannot write in {ancestor} (permission denied)")


class RunLock:
    """The run folder's lock (``files.FileLock`` on ``RUN/.lock``), held from before the first write to the
    end of the run (the kernel drops it when the process dies, even by SIGKILL; forked workers do not
    inherit it); folders it had to create are removed again if the run wrote nothing into them."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.created: list[Path] = []
        self.lock: files.FileLock | None = None

    def __enter__(self) -> RunLock:
        _check_output(self.output)
        missing = [p for p in (self.output, *self.output.parents) if not os.path.lexists(p)]
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self.created.append(folder)
            self.lock = files.FileLock(self.output, what="run folder").acquire()
        except OSError as err:
            self._remove_created()
            raise RunFolderError(
                f"--output {self.output}: cannot create or lock the run folder ({err.strerror or err})"
            ) from None
        except BaseException:
            self._remove_created()
            raise
        return self

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing of a run is ever removed here

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()
        self._remove_created()


#: What a killed run may leave half-written: checkpoint folders and files in the making (ours only).
_TEMPORARY = re.compile(
    r"^\.(?:(?:last|best)(?:\..+)?\.tmp"
    r"|(?:metrics\.jsonl|config\.json|labels\.csv|train\.csv|val\.csv)\..+\.tmp"
    r"|curves\.png\.tmp\d+\.png)$"
)


def remove_temporaries(output: Path) -> None:
    """Remove what a run killed while writing left behind (the lock is held: nobody else writes here)."""
    if not output.is_dir():
        return
    for entry in output.iterdir():
        if _TEMPORARY.match(entry.name):
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


def _is_run_folder(path: Path) -> bool:
    try:
        doc = json.loads((path / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == "xclip-cli-finetune"


def open_run_folder(
    output: Path, config: FinetuneConfig | None, *, resume: bool, overwrite: bool
) -> tuple[FinetuneConfig, bool]:
    """Decide what to do with `output`: (the config to run, whether a run is being resumed).

    A run folder is never replaced silently: an existing, non-empty folder needs ``resume`` (continue
    it, with its own stored configuration) or ``overwrite`` (only for a folder that holds a run).
    Checks only; nothing is written.
    """
    if output.exists() and not output.is_dir():
        raise RunFolderError(f"--output {output} is a file, not a run folder")
    exists = output.exists() and bool(_entries(output))
    if resume and _is_run_folder(output):
        stored = FinetuneConfig.from_dict(json.loads((output / RUN_CONFIG).read_text())["config"])
        if config is not None:
            ignored = [
                f.name
                for f in fields(FinetuneConfig)
                if f.name not in RUNTIME_OPTIONS
                and getattr(config, f.name) != getattr(stored, f.name)
                and getattr(config, f.name) != f.default
                and f.name not in ("freeze",)
            ]
            if ignored:
                log.warning(
                    "--resume continues with the run's stored configuration; ignoring %s", ", ".join(ignored)
                )
            for name in RUNTIME_OPTIONS:
                if getattr(config, name) is not None:
                    setattr(stored, name, getattr(config, name))
        return stored, True
    if config is None or (resume and not (config.data or config.dataset)):
        raise RunFolderError(
            f"--resume: {output} holds no run to resume (no {RUN_CONFIG}); give the data to start one"
        )
    if exists and not resume:
        if not overwrite:
            raise RunFolderError(
                f"run folder {output} already exists: --resume to continue it, --overwrite to replace it, "
                "or choose another --output"
            )
        if not _is_run_folder(output):
            raise RunFolderError(
                f"--overwrite: {output} is not an xclip finetune run folder; refusing to delete it"
            )
    elif exists and resume:
        raise RunFolderError(f"--resume: {output} is not an xclip finetune run folder")
    return config, False


def write_run_files(
    output: Path, config: FinetuneConfig, data: TrainData, derived: dict[str, Any], overwrite: bool
) -> None:
    """The files of a new run; config.json last, so that a folder is a run (resumable) only once all are
    there. On an error the files written here are removed again."""
    if overwrite and output.exists():
        for entry in _entries(output):  # the lock file stays: we hold it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    output.mkdir(parents=True, exist_ok=True)
    written = [output / name for name in ("labels.csv", "train.csv", "val.csv", RUN_CONFIG)]
    try:
        _write_new_run_files(output, config, data, derived)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def _write_new_run_files(
    output: Path, config: FinetuneConfig, data: TrainData, derived: dict[str, Any]
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "name"])
    writer.writerows(enumerate(data.class_names))
    write_text(output / "labels.csv", buffer.getvalue())
    write_clip_list(output / "train.csv", data.train)
    write_clip_list(output / "val.csv", data.val)
    doc = {
        "format": "xclip-cli-finetune",
        "format_version": 1,
        "config": asdict(config),
        "derived": derived,
        "versions": {"xclip_cli": __version__, "torch": torch.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text(output / RUN_CONFIG, json.dumps(doc, indent=2) + "\n")
