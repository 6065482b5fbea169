"""`xclip finetune` when things go wrong: a locked run folder, bad option values, an unusable --output, a
full disk, Ctrl-C during validation, and the modes of what it writes (CPU, tiny model, a dozen clips).

No assertion depends on timing: the processes are stopped at handshakes (a line on a pipe, a hook in
the validation), never after a sleep.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_finetune import CLASSES, init_model, metrics, render, write_clips, write_list

#: 8 training clips (4 per class) and 4 validation clips: 2 epochs of 4 optimizer steps.
RECIPE = dict(
    epochs=2,
    batch_size=2,
    accum_steps=1,
    lr=5e-5,
    new_lr_mult=100.0,
    warmup_epochs=1,
    seed=5,
    threads=1,
    workers=0,
)
#: What an interrupted and resumed run must record exactly as an uninterrupted one.
SAME = ("epoch", "step", "lr", "lr_new_modules", "val_top1", "val_top5", "val_clips", "val_failed", "best")


def cli_args(options: dict) -> list[str]:
    return [a for key, value in options.items() for a in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("safety_clips")
    (folder / "videos").mkdir()
    rng = np.random.default_rng(4)
    frames = [render(1 if i % 2 else -1, rng) for i in range(12)]
    paths = write_clips(folder / "videos", frames)
    rows = [(p.relative_to(folder).as_posix(), CLASSES[i % 2]) for i, p in enumerate(paths)]
    write_list(folder / "train.csv", rows[:8])
    write_list(folder / "val.csv", rows[8:])
    return folder


@pytest.fixture(scope="module")
def reference(clips, tmp_path_factory):
    """An uninterrupted run (in this process, umask 022) and its initial model."""
    from xclip_cli.training import finetune

    base = tmp_path_factory.mktemp("safety_reference")
    init = init_model(base / "init", seed=3)
    previous = os.umask(0o022)
    try:
        result = finetune(
            base / "run", data=str(clips / "train.csv"), val=str(clips / "val.csv"), model=str(init), **RECIPE
        )
    finally:
        os.umask(previous)
    return result, init


def start_args(clips: Path, init: Path, run: Path, **extra) -> list[str]:
    return [
        "finetune",
        "--data",
        clips / "train.csv",
        "--val",
        clips / "val.csv",
        "--model",
        init,
        "--output",
        run,
        *cli_args({**RECIPE, **extra}),
    ]


def invoke(*args, env: dict | None = None):
    from typer.testing import CliRunner

    from xclip_cli.cli import app

    return CliRunner().invoke(app, list(map(str, args)), env=env)


def one_error_line(result, code: int) -> str:
    """The one `xclip: error:` line of a CliRunner result that ended with `code`, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xclip: error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder`: (mode, size, mtime, sha256 of a file's bytes)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def assert_same_metrics(run: Path, want: list[dict]) -> None:
    got = metrics(run)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert {k: a[k] for k in SAME} == {k: b[k] for k in SAME}
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


# -- 1. the run folder is locked for the whole run --------------------------------------------------------------
def test_a_locked_run_folder_is_refused_and_left_untouched(clips, reference, tmp_path):
    from xclip_cli.files import FileLock

    result, init = reference
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with FileLock(run, what="run folder"), FileLock(empty, what="run folder"):
        before = snapshot(run)
        # a new run in another process: the real entry point, one line on stderr
        proc = subprocess.run(
            [sys.executable, "-m", "xclip_cli", *map(str, start_args(clips, init, empty))],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("xclip: error: ") and str(empty) in lines[0], (
            proc.stderr
        )
        assert "in use by another xclip process" in lines[0]
        assert [p.name for p in empty.iterdir()] == [".lock"]
        # --resume, --overwrite and a fresh start on a run folder in use
        for args in (
            ["finetune", "--output", run, "--resume"],
            [*start_args(clips, init, run), "--overwrite"],
            start_args(clips, init, run),
        ):
            line = one_error_line(invoke(*args), 2)
            assert str(run) in line and "in use by another xclip process" in line
        assert snapshot(run) == before
    assert not (run / ".lock").exists()  # released by its holder


def test_a_sigkilled_run_leaves_a_folder_that_resume_takes(clips, reference, tmp_path):
    """The kernel drops the lock of a killed process: its sidecar stays, and --resume takes it at once,
    though the run's DataLoader worker (forked: it shares the lock's open file) outlives it for seconds."""
    from xclip_cli.files import FileLock

    result, init = reference
    run = tmp_path / "run"
    # Stop the run right after its first mid-epoch checkpoint: it says so on stdout and waits on stdin.
    script = textwrap.dedent("""
        import sys
        from xclip_cli.training import checkpoints
        real = checkpoints.save_checkpoint
        def save(run_dir, name, *args, **kwargs):
            out = real(run_dir, name, *args, **kwargs)
            if name == "last":
                print("saved", flush=True)
                sys.stdin.read()
            return out
        checkpoints.save_checkpoint = save
        from xclip_cli.cli import main
        sys.argv = ["xclip", *sys.argv[1:]]
        main()
    """)
    args = start_args(clips, init, run, save_every_steps=1, workers=1)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "saved", proc.stderr.read()
        with pytest.raises(Exception, match="in use by another xclip process"):
            FileLock(run, what="run folder").acquire()  # held while it runs
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert (run / ".lock").exists()  # left behind by the killed process, but not locked
    FileLock(run, what="run folder").acquire().release()
    (run / ".last.k1ll3d.tmp").mkdir()  # what a kill in the middle of a save leaves
    (run / ".last.k1ll3d.tmp" / "model.safetensors").write_bytes(b"\0" * 100)
    (run / ".metrics.jsonl.k1ll3d.tmp").write_text("{")
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 1)

    resumed = invoke("finetune", "--output", run, "--resume", "--workers", "0", "--threads", "1")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at epoch 1 step 1" in resumed.output
    assert_same_metrics(run, result.metrics)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no lock, no temporaries left


# -- 2. option values are checked before anything loads ----------------------------------------------------------
BAD_OPTIONS = [
    (["--device", "tpu"], None, "--device"),
    (["--device", "cuda:abc"], None, "--device"),
    (["--device", ""], None, "--device"),
    ([], {"XCLIP_DEVICE": "gpu"}, "--device"),
    (["--lr", "nan"], None, "--lr"),
    (["--lr", "inf"], None, "--lr"),
    (["--lr", "0"], None, "--lr"),
    (["--lr", "-1e-5"], None, "--lr"),
    (["--epochs", "0"], None, "--epochs"),
    (["--batch-size", "0"], None, "--batch-size"),
    (["--accum-steps", "0"], None, "--accum-steps"),
    (["--frames", "0"], None, "--frames"),
    (["--frames", "65"], None, "--frames"),
    (["--warmup-epochs", "-1"], None, "--warmup-epochs"),
    (["--warmup-epochs", "nan"], None, "--warmup-epochs"),
    (["--label-smoothing", "1"], None, "--label-smoothing"),
    (["--label-smoothing", "-0.1"], None, "--label-smoothing"),
    (["--mixup", "-1"], None, "--mixup"),
    (["--cutmix", "nan"], None, "--cutmix"),
    (["--mixup-switch-prob", "1.5"], None, "--mixup-switch-prob"),
    (["--val-fraction", "1"], None, "--val-fraction"),
    (["--val-fraction", "-0.5"], None, "--val-fraction"),
    (["--weight-decay", "-1"], None, "--weight-decay"),
    (["--weight-decay", "inf"], None, "--weight-decay"),
    (["--min-lr", "-1"], None, "--min-lr"),
    (["--min-lr", "nan"], None, "--min-lr"),
    (["--new-lr-mult", "0"], None, "--new-lr-mult"),
    (["--new-lr-mult", "inf"], None, "--new-lr-mult"),
    (["--save-every-steps", "-1"], None, "--save-every-steps"),
    (["--shots", "0"], None, "--shots"),
    (["--split", "4"], None, "--split"),
    (["--seed", "-1"], None, "--seed"),
    (["--workers", "-1"], None, "--workers"),
    (["--threads", "0"], None, "--threads"),
    (["--freeze", ""], None, "--freeze"),
    (["--batch-size", "3"], {"WORLD_SIZE": "2"}, "not divisible by the 2 processes"),
]
if not torch.cuda.is_available():
    BAD_OPTIONS.append((["--device", "cuda"], None, "CUDA is not available"))


@pytest.mark.parametrize(
    ("args", "env", "named"), BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_bad_option_values_are_one_usage_line_before_the_model_loads(clips, tmp_path, args, env, named):
    run = tmp_path / "run"
    # --model names nothing: loading it would be exit 3; the option's usage error comes first (exit 2)
    result = invoke(
        "finetune",
        "--data",
        clips / "train.csv",
        "--model",
        tmp_path / "no-such-model",
        "--output",
        run,
        *args,
        env=env,
    )
    assert named in one_error_line(result, 2)
    assert not run.exists()


def test_the_python_api_refuses_the_same_values(clips, tmp_path):
    from xclip_cli.errors import UsageError
    from xclip_cli.training import FinetuneConfig, finetune

    with pytest.raises(
        UsageError, match=r"--frames must be from 1 to 64, got 100; --lr must be a finite number, got nan"
    ):
        finetune(
            tmp_path / "run",
            data=str(clips / "train.csv"),
            model=str(tmp_path / "none"),
            lr=float("nan"),
            frames=100,
        )
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="--epochs must be a whole number"):
        FinetuneConfig(epochs=2.5).validate()
    FinetuneConfig().validate()  # the defaults are fine


# -- 3. --output problems and a full disk -------------------------------------------------------------------------
def test_an_output_that_is_a_file_or_under_one_is_one_usage_line(clips, reference, tmp_path):
    _, init = reference
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    for output, words in ((file, "is a file, not a run folder"), (file / "run", "is a file, not a folder")):
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert words in one_error_line(invoke(*start_args(clips, init, output), *extra), 2)
    assert file.read_text() == "keep me"


def test_an_output_that_cannot_be_written_is_one_usage_line(clips, reference, tmp_path, monkeypatch):
    _, init = reference
    if os.geteuid() != 0:  # root writes into read-only folders: simulated below instead
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            line = one_error_line(invoke(*start_args(clips, init, locked / "run")), 2)
            assert "cannot write in" in line and str(locked) in line
        finally:
            locked.chmod(0o755)
    # a read-only file system (or a folder root may not write either): mkdir fails with EROFS
    run = tmp_path / "ro-mount" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == run.parent or self == run:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = one_error_line(invoke(*start_args(clips, init, run)), 2)
    assert "Read-only file system" in line and str(run) in line


def test_a_full_disk_while_saving_is_one_line_and_loses_nothing(clips, reference, tmp_path, monkeypatch):
    import xclip_cli.model

    result, init = reference
    run = tmp_path / "run"
    real_save = xclip_cli.model.save_model
    saved: dict[str, dict] = {}

    def save_model(model, path, metadata=None):
        if metadata["finetune"]["epoch"] < 2:  # epoch 1's best/ and last/ are written
            return real_save(model, path, metadata)
        saved.update(last=snapshot(run / "last"), best=snapshot(run / "best"), metrics=snapshot_file(run))
        Path(path, "model.safetensors").write_bytes(b"\0" * 1000)  # half written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(xclip_cli.model, "save_model", save_model)
    line = one_error_line(invoke("-q", *start_args(clips, init, run)), 1)  # -q: no progress lines
    assert "No space left on device" in line and str(run) in line and "--resume" in line
    assert saved, "the failing save was never reached"
    assert snapshot(run / "last") == saved["last"] and snapshot(run / "best") == saved["best"]
    assert snapshot_file(run) == saved["metrics"] and len(metrics(run)) == 1
    assert sorted(p.name for p in run.iterdir() if p.name != "curves.png") == [
        "best",
        "config.json",
        "labels.csv",
        "last",
        "metrics.jsonl",
        "train.csv",
        "val.csv",
    ]  # no temporary left

    monkeypatch.setattr(xclip_cli.model, "save_model", real_save)  # space again: the run continues
    resumed = invoke("finetune", "--output", run, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_same_metrics(run, result.metrics)


def snapshot_file(run: Path) -> str:
    return (run / "metrics.jsonl").read_text()


# -- 4. Ctrl-C / SIGTERM during validation is never recorded ------------------------------------------------------
@pytest.mark.parametrize("how", ["keyboard-interrupt-epoch-1", "signal-epoch-2"])
def test_an_interrupted_validation_is_not_recorded_and_resume_matches(
    clips, reference, tmp_path, monkeypatch, how
):
    """Half-way through a validation: a KeyboardInterrupt raised in it (second Ctrl-C, no handler), or a
    SIGINT that sets the stop flag while the next clip fails (the signal killed its decoder)."""
    import xclip_cli.pipeline
    from xclip_cli.training import TrainingInterrupted, finetune

    result, init = reference
    run = tmp_path / "run"
    interrupted_epoch = 1 if how.endswith("1") else 2
    real_results = xclip_cli.pipeline.TagRun.results
    calls = []

    def tag_results(self, tasks):
        calls.append(len(tasks))
        stream = real_results(self, tasks)
        if len(calls) != interrupted_epoch:  # not the validation to interrupt
            yield from stream
            return
        for i, results in enumerate(stream):
            if i == 2:
                if how.startswith("keyboard"):
                    raise KeyboardInterrupt
                signal.raise_signal(signal.SIGINT)  # the handler has run when this returns
                results = [dataclasses.replace(results[0], probs=None, error="ffmpeg: killed by signal 2")]
            yield results

    monkeypatch.setattr(xclip_cli.pipeline.TagRun, "results", tag_results)
    try:
        finetune(
            run,
            data=str(clips / "train.csv"),
            val=str(clips / "val.csv"),
            model=str(init),
            handle_signals=how.startswith("signal"),
            **RECIPE,
        )
    except TrainingInterrupted:
        pass
    except KeyboardInterrupt:  # not left to pytest: it would end the whole session
        pytest.fail("the KeyboardInterrupt escaped finetune() without saving last/")
    else:
        pytest.fail("finetune() ran to the end through an interrupted validation")
    assert calls == [4] * interrupted_epoch
    recorded = metrics(run) if (run / "metrics.jsonl").exists() else []
    assert len(recorded) == interrupted_epoch - 1  # nothing of the interrupted validation
    assert [{k: r[k] for k in SAME} for r in recorded] == [
        {k: r[k] for k in SAME} for r in result.metrics[: len(recorded)]
    ]
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (interrupted_epoch - 1, 4)  # the epoch's training is done
    assert len(state["metrics"]) == interrupted_epoch - 1

    monkeypatch.setattr(xclip_cli.pipeline.TagRun, "results", real_results)
    finetune(run, resume=True)
    assert_same_metrics(run, result.metrics)


# -- 5. the user's umask ---------------------------------------------------------------------------------------
def test_run_folder_files_get_the_users_umask(reference):
    """The reference run was written under umask 022: files 0644, folders 0755 (not 0600 / 0700)."""
    result, _ = reference
    run = result.run_dir
    found = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in [run, *run.rglob("*")]}
    assert {"last/model.safetensors", "best/state.pt", "metrics.jsonl", "curves.png", "config.json"} <= set(
        found
    )
    wrong = {
        name: oct(mode) for name, mode in found.items() if mode != (0o755 if (run / name).is_dir() else 0o644)
    }
    assert not wrong
    assert not any(name.startswith(".") for name in os.listdir(run))  # no lock, no temporary left
