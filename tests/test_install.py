"""Installing and first runs: a wheel install away from the source tree has everything `xclip` needs (the
registry is package data), and a first run without network fails at once with one useful message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A scratch venv with the wheel installed, its dependencies borrowed from this venv; its python."""
    pytest.importorskip(
        "setuptools", reason="building the wheel offline needs setuptools (the test extra has it)"
    )
    tmp = tmp_path_factory.mktemp("install")
    # Build from a copy, so the build writes nothing (build/, egg-info) into the checkout.
    source = tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "xclip_cli", source / "xclip_cli", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ]
    )
    (wheel,) = wheels.glob("xclip_cli-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    # Install first, then expose this venv's packages: pip must not see (or touch) this venv's own
    # editable xclip-cli.
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)])
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_deps_from_test_venv.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return python


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XCLIP_WEIGHTS", "PYTHONPATH")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env


@pytest.mark.install
def test_wheel_install_lists_the_registry_from_outside_the_checkout(installed, tmp_path):
    env, cwd = _env(tmp_path), tmp_path
    where = _run(
        [str(installed), "-c", "import xclip_cli; print(xclip_cli.__file__)"], env=env, cwd=cwd
    ).stdout
    assert Path(where.strip()).is_relative_to(installed.parents[1]), (
        where
    )  # the wheel's copy, not the checkout

    xclip = str(installed.parent / "xclip")
    rows = json.loads(_run([xclip, "models", "--format", "json"], env=env, cwd=cwd).stdout)
    assert len(rows) == 22 and rows[0]["name"] == "xclip-b32-k400"

    # Outside a checkout the default weights folder is the user's cache, not site-packages.
    table = _run([xclip, "models"], env=env, cwd=cwd)
    assert f"local weights folder: {tmp_path / 'cache' / 'xclip' / 'weights'}" in table.stderr


def test_quick_start_without_network_fails_fast_with_one_message(tmp_path):
    # No HF_HUB_OFFLINE: the hub endpoint is a closed local port, as on a machine without network.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        HF_ENDPOINT="http://127.0.0.1:9", XCLIP_WEIGHTS=str(tmp_path / "w"), HF_HOME=str(tmp_path / "hf")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "xclip_cli", "tag", "examples/", "--labels", "examples/labels.txt"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("xclip: error:")]
    assert len(errors) == 1, proc.stderr
    assert (
        f"{tmp_path / 'w' / 'xclip-b32-k400'}/" in errors[0] and "microsoft/xclip-base-patch32" in errors[0]
    )
    assert "cannot reach http://127.0.0.1:9" in errors[0]
    assert "<name>" not in proc.stderr and "Retry" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # nothing else: no retries, no repeats
