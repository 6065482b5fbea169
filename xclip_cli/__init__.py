"""xclip-cli: tag, evaluate and fine-tune video libraries with X-CLIP."""

__version__ = "0.1.0"
