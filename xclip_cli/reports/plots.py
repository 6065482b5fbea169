"""The one plotting style: a local matplotlib ``Figure`` on the Agg canvas (no global pyplot state, safe in
threads and in a library), written atomically as PNG with the user's umask."""

from __future__ import annotations

import os
from typing import Any

from .. import files


def figure(width: float, height: float) -> Any:
    """A new ``Figure`` of `width` x `height` inches, drawn by the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Lay `fig` out and write it to `path` as PNG, all or nothing."""
    fig.tight_layout()
    files.atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi), binary=True)
