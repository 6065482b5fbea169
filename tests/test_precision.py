"""`--precision auto` and start-up: what auto picks where, and nothing heavy before the checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xclip_cli import precision
from xclip_cli.errors import UsageError


@pytest.fixture
def example_clip() -> str:
    return str(Path(__file__).resolve().parents[1] / "examples" / "RATRACE_wave_f_nm_np1_fr_goo_37.avi")


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given flags."""

    def use(*flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_features", lambda: frozenset(flags))

    return use


def test_auto_picks_bf16_on_cpus_with_bf16_units_and_fp32_elsewhere(cpu_flags):
    cpu_flags("avx512f", "amx_bf16", "amx_tile")
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    cpu_flags("avx512f", "avx512_bf16")
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    cpu_flags("avx2", "fma")
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("auto", "mps") == "fp32"
    assert precision.resolve_precision("auto", "cuda") == "fp16"


def test_an_explicit_precision_is_kept_whatever_the_hardware(cpu_flags):
    cpu_flags("avx2")
    for name in ("fp32", "bf16", "fp16"):
        assert precision.resolve_precision(name, "cpu") == name
        assert precision.resolve_precision(name, "cuda") == name


@pytest.mark.parametrize("bad", ["fp8", "FP32", "", "float32"])
def test_an_unknown_precision_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="unknown precision"):
        precision.check_precision(bad)


def test_cpu_features_reads_this_machine():
    flags = precision.cpu_features()
    assert flags <= {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma"}
    assert precision.cpu_description()  # a model name at least


def test_the_model_and_the_report_record_the_precision_auto_chose(tiny_dir, example_clip, cpu_flags):
    from xclip_cli import load_model, tag

    cpu_flags("avx2")
    assert load_model(tiny_dir, precision="auto").precision == "fp32"
    cpu_flags("avx512_bf16")
    assert load_model(tiny_dir, precision="auto").precision == "bf16"
    (row,) = tag([example_clip], labels=["a", "b"], model=str(tiny_dir), workers=0, precision="auto")
    assert row["precision"] == "bf16"
    (row,) = tag([example_clip], labels=["a", "b"], model=str(tiny_dir), workers=0, precision="fp32")
    assert row["precision"] == "fp32"


def test_left_out_the_precision_is_xclip_precision_else_auto(monkeypatch, cpu_flags, tiny_dir):
    from xclip_cli import load_model

    cpu_flags("amx_bf16")
    monkeypatch.setenv("XCLIP_PRECISION", "fp32")  # what conftest sets for every test
    assert precision.check_precision(None) == "fp32"
    assert load_model(tiny_dir).precision == "fp32"
    monkeypatch.delenv("XCLIP_PRECISION")
    assert precision.check_precision(None) == "auto"
    assert load_model(tiny_dir).precision == "bf16"
    monkeypatch.setenv("XCLIP_PRECISION", "fp64")
    with pytest.raises(UsageError, match="XCLIP_PRECISION"):
        precision.check_precision(None)


def test_finetune_autocasts_to_what_auto_picks(cpu_flags, monkeypatch):
    import torch

    from xclip_cli.training import FinetuneConfig

    monkeypatch.delenv("XCLIP_PRECISION")
    cpu_flags("amx_bf16")
    assert FinetuneConfig(data="x.csv").autocast_dtype("cpu") is torch.bfloat16
    assert FinetuneConfig(data="x.csv").autocast_dtype("cuda") is torch.float16
    assert FinetuneConfig(data="x.csv", precision="fp32").autocast_dtype("cuda") is None
    cpu_flags("avx2")
    assert FinetuneConfig(data="x.csv").autocast_dtype("cpu") is None


def test_default_workers_leave_the_cores_to_the_encoder_on_the_cpu(monkeypatch):
    from xclip_cli.tagging import default_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers("cuda") == 8
    assert 1 <= default_workers("cpu") <= 16
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_workers("cuda") == 1
    assert default_workers("cpu") == 1


HEAVY = ("torch", "open_clip", "torchvision", "numpy")


def _modules_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; which of HEAVY it imported, and what it printed last."""
    probe = f"import sys, json\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_missing_input_is_reported_before_torch_is_imported(tmp_path):
    code = (
        "from xclip_cli import tag\n"
        "from xclip_cli.errors import UsageError\n"
        "try:\n"
        f"    list(tag([{str(tmp_path / 'missing.mp4')!r}], labels=['a'], model='xclip-b32-k400'))\n"
        "except UsageError as err:\n"
        "    print('usage:', err)\n"
    )
    loaded = _modules_after(code)
    assert not any(loaded.values()), loaded


def test_bad_options_and_a_report_that_is_not_ours_are_reported_before_torch(tmp_path, example_clip):
    foreign = tmp_path / "notes.csv"
    foreign.write_text("my,own\nnotes,here\n")
    for settings in ("frames=0", "views='2x2'", "device='tpu'", "precision='fp8'", "window=float('nan')"):
        code = (
            "from xclip_cli import tag\n"
            "from xclip_cli.errors import UsageError\n"
            "try:\n"
            f"    list(tag([{example_clip!r}], labels=['a'], {settings}))\n"
            "except UsageError as err:\n"
            "    print('usage:', err)\n"
        )
        assert not any(_modules_after(code).values()), settings
    code = (
        "from xclip_cli import tag\n"
        "from xclip_cli.errors import XClipError\n"
        "try:\n"
        f"    list(tag([{example_clip!r}], labels=['a'], output={str(foreign)!r}, resume=True))\n"
        "except XClipError as err:\n"
        "    print('refused:', err)\n"
    )
    assert not any(_modules_after(code).values())
    assert foreign.read_text() == "my,own\nnotes,here\n"


def test_the_cli_says_no_input_without_importing_torch(tmp_path):
    code = (
        "from xclip_cli.cli import app\n"
        "try:\n"
        f"    app(['tag', {str(tmp_path / 'none.mp4')!r}, '--label', 'a'], standalone_mode=False)\n"
        "except Exception as err:\n"
        "    print(type(err).__name__)\n"
    )
    loaded = _modules_after(code)
    assert not loaded["torch"], loaded
