"""`Examples`: the rows of one split, column by column, as every reader returns them
(`rome_jax.data.examples` for GLUE, `rome_jax.data.custom` for a task described in the
config) and `rome_jax.data.features` tokenizes them."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Examples:
    """The rows of one split, column by column (N rows).

    text_a / text_b: the texts, exactly as in the source (no stripping);
      text_b is None for single-sentence tasks.
    labels: [N] int32 label ids, or float32 scores for STS-B; -1 / NaN where the
      split has no labels (`has_labels` False).
    index: [N] int64, the source's index/id column where there is one, else the
      0-based row number.
    source_files: the files read (empty for the hub).
    """

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray
    index: np.ndarray
    has_labels: bool = True
    source_files: tuple[str, ...] = ()
    task: str = ""
    split: str = ""

    def __len__(self) -> int:
        return len(self.text_a)

    def head(self, n: int) -> Examples:
        """The first `n` rows."""
        return dataclasses.replace(
            self,
            text_a=self.text_a[:n],
            text_b=None if self.text_b is None else self.text_b[:n],
            labels=self.labels[:n],
            index=self.index[:n],
        )
