"""Typed results of the one pipeline: what `tag`, `eval` and `finetune`'s validation are computed from.

The pipeline (:meth:`xclip_cli.pipeline.TagRun.results`) yields, per input, a list of
:class:`VideoResult` (one per video, or per window of it); report rows, eval predictions and validation
accuracies are all made from these, never from report rows read back. :func:`ranking` is the one
ordering of labels everywhere: best first, ties to the label listed first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def ranking(probs: Any) -> np.ndarray:
    """Label indices best first, for ``[K]`` or ``[N, K]`` scores (numpy or torch); ties keep the order
    the labels are listed in (a stable sort)."""
    if hasattr(probs, "detach"):
        probs = probs.detach().cpu().double().numpy()
    return np.argsort(-np.asarray(probs, dtype=np.float64), axis=-1, kind="stable")


@dataclass
class VideoResult:
    """One scored video, or one window of it, in the spirit of transformers' ``XCLIPOutput``.

    Attributes:
        path: the input as given (the report's ``path``).
        start, end: the window in seconds (None: the whole video or the task's own range).
        duration: the video's length in seconds (None when unknown, e.g. for a file that failed).
        probs: float32 ``[K]``: the softmax over the vocabulary, averaged over the views; None on error.
        labels: the vocabulary, in the order of ``probs``.
        features: the video's ``VideoFeatures`` (``[views, D]`` embedding and ``[views, N, D]`` prompt
            tokens) when the pipeline was asked to keep them, else None.
        error: why the input could not be scored, else None.
    """

    path: str
    start: float | None
    end: float | None
    duration: float | None
    probs: Any
    labels: Sequence[str]
    features: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def ranked(self) -> list[int]:
        """Label indices best first (see :func:`ranking`); empty for a failed input."""
        return [] if self.probs is None else ranking(self.probs).tolist()

    def scores(self) -> dict[str, float]:
        """Every label's probability, by label."""
        if self.probs is None:
            return {}
        values = self.probs.tolist()
        return {label: float(value) for label, value in zip(self.labels, values)}
