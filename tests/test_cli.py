"""The command line's frame: version, help, the registry listing."""

from __future__ import annotations

import json
import subprocess
import sys

import xclip_cli


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xclip_cli", *args], capture_output=True, text=True, timeout=120
    )


def test_version_and_help():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"xclip-cli {xclip_cli.__version__}"
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("tag", "models"):
        assert command in proc.stdout
    assert run("tag", "--help").returncode == 0


def test_models_lists_registry_with_local_availability(tmp_path, monkeypatch):
    proc = run("models", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    names = {r["name"]: r for r in rows}
    assert len(rows) == 22 and not any(r["available"] for r in rows)
    assert names["xclip-b32-k400"]["source"] == "microsoft/xclip-base-patch32"
    # a copy of the official file in the weights folder makes the entry available
    (tmp_path / "k400_32_8.pth").write_bytes(b"placeholder: presence is what `models` checks")
    monkeypatch.setenv("XCLIP_WEIGHTS", str(tmp_path))
    rows = json.loads(run("models", "--format", "json").stdout)
    assert [r["name"] for r in rows if r["available"]] == ["xclip-b32-k400"]


def test_unknown_option_is_a_usage_error():
    proc = run("tag", "x.mp4", "--no-such-option")
    assert proc.returncode == 2 and "No such option" in proc.stderr


def test_progress_off_a_terminal_is_a_line_every_tenth(capsys):
    """The one reporter of tag, eval and finetune: in a log file, ~10 lines per run, none with -q."""
    import logging

    from xclip_cli.cli.common import Reporter

    logging.getLogger("xclip_cli").setLevel(logging.WARNING)
    try:
        with Reporter("tagging", done_verb="tagged", unit="videos") as bar:
            bar.start(25)
            for _ in range(25):
                bar.update(advance=1, item="clip.mp4")
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 10 and lines[-1].startswith("xclip: tagged 25/25 videos (")
        assert all(line.startswith("xclip: tagged ") for line in lines)
        # the library's progress(done, total, path) callback (eval) and a resumed start (finetune)
        with Reporter("evaluating", done_verb="evaluated", unit="videos") as bar:
            for done in range(1, 4):
                bar(done, 3, f"/videos/{done}.mp4")
        assert capsys.readouterr().err.splitlines()[-1].startswith("xclip: evaluated 3/3 videos")
        with Reporter("training", done_verb="trained", unit="steps", fields={"loss": "loss {:.4f}"}) as bar:
            bar.start(10, 5)
            bar.update(6, loss=0.5)
            bar.echo("epoch 1/2: done")
        assert capsys.readouterr().err.splitlines() == [
            "xclip: trained 6/10 steps (0 s)",
            "xclip: epoch 1/2: done",
        ]
        with Reporter("tagging", done_verb="tagged", unit="videos", enabled=False) as bar:
            bar.start(2)
            bar.update(advance=2)
            bar.echo("not shown")
        logging.getLogger("xclip_cli").setLevel(logging.ERROR)  # -q
        with Reporter("tagging", done_verb="tagged", unit="videos") as bar:
            bar.start(2)
            bar.update(advance=2)
        assert capsys.readouterr().err == ""
    finally:
        logging.getLogger("xclip_cli").setLevel(logging.NOTSET)
