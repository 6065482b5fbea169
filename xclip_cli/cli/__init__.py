"""The `xclip` command: the Typer app, its global options, the one error→exit-code mapping, ``main()``.

One module per command (:mod:`.tag`, :mod:`.models`, :mod:`.eval`, :mod:`.finetune`), each a plain function
that parses, calls the library and renders; what they share lives in :mod:`.common`. The commands are
registered at the bottom of this module, so none of them imports it back.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from .. import __version__
from ..errors import (
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    XClipError,
)

__all__ = ["EXIT_INTERRUPTED", "EXIT_MODEL", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "app", "main"]


class XClipGroup(TyperGroup):
    """The one place where errors a user can cause become one line on stderr and their exit code.

    Every command raises :class:`~xclip_cli.errors.XClipError` subclasses and lets them travel here;
    anything else is a bug and keeps its traceback.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XClipError as err:
            typer.echo(f"xclip: error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    name="xclip",
    cls=XClipGroup,
    help="Tag, evaluate and fine-tune video libraries with X-CLIP (Ni et al., ECCV 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="xclip: %(message)s", stream=sys.stderr, force=True)
    # huggingface_hub gives its logger a handler of its own when first imported (every line would then
    # print twice, once through ours): import it now and keep only ours. open_clip logs a failed download
    # that our own error line already reports.
    import huggingface_hub.utils.logging  # noqa: F401 - light: the package imports lazily

    logging.getLogger("huggingface_hub").handlers.clear()
    for noisy in ("huggingface_hub", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    logging.getLogger("open_clip").setLevel(logging.DEBUG if verbose > 1 else logging.CRITICAL)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xclip-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log lines on stderr.")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    _setup_logging(verbose, quiet)


def main() -> None:
    """Console entry point (typed user errors are turned into one line and an exit code by XClipGroup)."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("xclip: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


# -- registration: the command modules know nothing of `app` (PySceneDetect's _cli does the same) -------------
from . import eval as _eval  # noqa: E402
from . import finetune as _finetune  # noqa: E402
from . import models as _models  # noqa: E402
from . import tag as _tag  # noqa: E402

app.command("tag")(_tag.tag_command)
app.command("models")(_models.models_command)
app.command("eval")(_eval.eval_command)
app.command("finetune")(_finetune.finetune_command)
