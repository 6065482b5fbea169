import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.manual_seed(0)
# The same numbers on every CPU: left out, the precision is fp32 for the whole session (module and session
# fixtures too, and every `xclip` subprocess); the tests of `auto` ask for it by name or unset this.
os.environ["XCLIP_PRECISION"] = "fp32"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test may reach the network or the user's caches: an empty hub cache, offline mode."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("XCLIP_WEIGHTS", str(tmp_path_factory.mktemp("weights")))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random X-CLIP saved in our checkpoint format (what `--model PATH` takes)."""
    from helpers import tiny_model

    from xclip_cli import save_model

    return save_model(tiny_model(seed=0), tmp_path_factory.mktemp("models") / "tiny")


def pytest_sessionstart(session):
    """In CI (CI=true) the shared data must be there: a test that needs it fails rather than skips silently.

    Elsewhere (a clone without ../shared) those tests skip, and the rest use the clips in examples/.
    """
    from helpers import SHARED

    if os.environ.get("CI", "").lower() == "true":
        missing = [
            str(SHARED / "data" / name)
            for name in ("videos", "labels", "splits")
            if not (SHARED / "data" / name).is_dir()
        ]
        if missing:
            raise pytest.UsageError(f"CI=true but the shared test data is missing: {', '.join(missing)}")
