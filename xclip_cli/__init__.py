"""xclip-cli: tag, evaluate and fine-tune video libraries with X-CLIP.

The Python API and the command line are the same functions::

    from xclip_cli import load_model
    model = load_model("xclip-b32-k400")
"""

__version__ = "0.1.0"

from .model import XCLIP, VideoFeatures, XCLIPConfig, load_model, save_model  # noqa: E402

__all__ = ["XCLIP", "VideoFeatures", "XCLIPConfig", "load_model", "save_model", "__version__"]
