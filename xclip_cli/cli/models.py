"""``xclip models``: the registry of published X-CLIP checkpoints and CLIP backbones, and which are local."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import Format


def models_command(
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, csv, json or jsonl.")] = Format.table,
) -> None:
    """List the registry: the published X-CLIP checkpoints and CLIP backbones, and which are local."""
    from .. import weights

    rows = [weights.describe(entry) for entry in weights.registry().values()]
    if fmt == Format.table:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        # Names are what users type: never cut or wrapped, however narrow the terminal or pipe.
        table.add_column("name", no_wrap=True, min_width=max(len(r["name"]) for r in rows))
        for column in ("backbone", "frames", "trained on", "top-1", "source", "local"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r["name"],
                r["backbone"],
                str(r["frames"] or "any"),
                r["trained_on"],
                f"{r['top1']:.1f}" if r["top1"] else "",
                r["source"],
                "yes" if r["available"] else "no",
            )
        console = Console()
        (console if console.is_terminal else Console(width=160)).print(table)
        typer.echo(f"local weights folder: {weights.weights_dir()}", err=True)
        return
    import csv
    import json

    if fmt == Format.csv:
        out = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    elif fmt == Format.json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(json.dumps(r))
