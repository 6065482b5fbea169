"""Every file xclip writes for a user, one module per kind, all atomic and with the user's umask.

* :mod:`~xclip_cli.reports.tag`       reports of ``xclip tag`` (table, CSV, JSON, JSONL): incremental,
  crash-safe, resumable, locked; re-exported here (``from xclip_cli.reports import open_writer``);
* :mod:`~xclip_cli.reports.eval`      ``xclip eval``: results JSON, predictions CSV, confusion and per-class plots;
* :mod:`~xclip_cli.reports.training`  the finetune run folder's ``metrics.jsonl`` and ``curves.png``;
* :mod:`~xclip_cli.reports.plots`     the one plotting style (a matplotlib Figure on Agg, an atomic PNG).

Importing this package loads neither torch nor numpy nor matplotlib: the writers import what they draw with.
"""

from .tag import (
    FORMATS,
    ROW_FIELDS,
    ReportError,
    ReportExistsError,
    ReportWriteError,
    ReportWriter,
    format_for,
    open_writer,
    read_report,
    row_key,
)
from .tag import (
    _atomic_write as _atomic_write,
)
from .tag import (
    _complete_length as _complete_length,
)
from .tag import (
    _JsonWriter as _JsonWriter,
)
from .tag import (
    _LineWriter as _LineWriter,
)
from .tag import (
    _TableWriter as _TableWriter,
)
from .tag import (
    check_output as check_output,
)
from .tag import (
    resolved_path as resolved_path,
)

__all__ = [
    "FORMATS",
    "ROW_FIELDS",
    "ReportError",
    "ReportExistsError",
    "ReportWriteError",
    "ReportWriter",
    "format_for",
    "open_writer",
    "read_report",
    "row_key",
]
