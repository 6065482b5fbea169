"""Every file xclip writes for a user, one module per kind, all atomic and with the user's umask.

* :mod:`~xclip_cli.reports.tag`       reports of ``xclip tag`` (table, CSV, JSON, JSONL): incremental,
  crash-safe, resumable, locked; re-exported here (``from xclip_cli.reports import open_writer``);
* :mod:`~xclip_cli.reports.eval`      ``xclip eval``: results JSON, predictions CSV, confusion and per-class plots;
* :mod:`~xclip_cli.reports.training`  the finetune run folder's ``metrics.jsonl`` and ``curves.png``;
* :mod:`~xclip_cli.reports.plots`     the one plotting style (a matplotlib Figure on Agg, an atomic PNG).

Importing this package loads neither torch nor numpy nor matplotlib: the writers import what they draw with.
"""

# The tag report's public names, listed once (in reports.tag's __all__), and resolved_path for the pipeline.
from .tag import *  # noqa: F403
from .tag import __all__ as __all__
from .tag import resolved_path as resolved_path
