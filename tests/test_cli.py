"""The command line's frame: version, help, the registry listing."""

from __future__ import annotations

import json
import subprocess
import sys

import xclip_cli


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xclip_cli", *args], capture_output=True, text=True, timeout=120)


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
