"""Cross-validation folds: ``num_folds`` disjoint validation sets that together cover every labelled case once.

The folds cut a fixed permutation of the cases (sorted by case id) into consecutive chunks, the first ``n % k``
one case longer (``numpy.array_split``), as nnU-Net's 5-fold scheme does with its own permutation. Each data set
passes the permutation its single train/validation split already uses, so that fold 0 of 5 *is* that split (the
208 Task04 cases: 42 validation cases; DRIVE's 20 training images: 4) and results recorded on it stay comparable.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["fold_indices", "fold_split"]


def fold_indices(order: Sequence[int], num_folds: int) -> list[list[int]]:
    """``order`` (a permutation of ``range(n)``) cut into ``num_folds`` consecutive chunks of item indices."""
    n = len(order)
    if not 2 <= int(num_folds) <= n:
        raise ValueError(f"num_folds must be between 2 and the number of cases ({n}), got {num_folds}.")
    if sorted(int(i) for i in order) != list(range(n)):
        raise ValueError("order must be a permutation of range(n).")
    return [[int(i) for i in chunk] for chunk in np.array_split(np.asarray(order, dtype=np.int64), int(num_folds))]


def fold_split(
    items: Sequence[dict[str, Any]], order: Sequence[int], fold: int, num_folds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(training, validation)`` of fold ``fold`` (0-based): validation = that fold's items, training = the rest;
    both in the order of ``items``."""
    folds = fold_indices(order, num_folds)
    if not 0 <= int(fold) < len(folds):
        raise ValueError(f"fold must be between 0 and {len(folds) - 1} for num_folds={num_folds}, got {fold}.")
    val = set(folds[int(fold)])
    return [d for i, d in enumerate(items) if i not in val], [d for i, d in enumerate(items) if i in val]
