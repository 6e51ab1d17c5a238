"""CSV files with a header row: numeric feature columns and one target column, read with the stdlib csv
module. Integer or text targets mean classification, float targets regression. Every problem raises
ValueError naming the file, the row (data rows count from 1; line numbers include the header) and the
column."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import Dataset
from .prepare import DEFAULT_TEST_FRACTION, SPLIT_SEED, encode_classes, make_dataset

INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Table:
    """The cells of a CSV file as text: ``header`` names the columns, ``rows[i]`` sits on ``lines[i]``."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def where(self, i: int, column: str) -> str:
        return f"{self.path}: row {i + 1} (line {self.lines[i]}), column {column!r}"

    def column(self, name: str) -> list[str]:
        j = self.header.index(name)
        return [row[j] for row in self.rows]

    def numeric(self, names: Sequence[str]) -> np.ndarray:
        """The columns ``names`` as a float64 array (rows, len(names)); ValueError naming the row and column
        of a missing cell, a text cell, NaN or infinity."""
        index = [self.header.index(name) for name in names]
        cells = [[row[j] for j in index] for row in self.rows]
        try:
            values = np.array(cells, dtype=np.float64).reshape(len(cells), len(index))
        except ValueError:
            values = None
        if values is not None and np.isfinite(values).all():
            return values
        for i, row in enumerate(cells):  # find the first bad cell for the message
            for name, cell in zip(names, row):
                if cell == "":
                    raise ValueError(f"{self.where(i, name)}: missing value")
                try:
                    number = float(cell)
                except ValueError:
                    raise ValueError(f"{self.where(i, name)}: {cell!r} is not a number") from None
                if not np.isfinite(number):
                    raise ValueError(f"{self.where(i, name)}: {cell!r} (features must be finite numbers)")
        raise AssertionError("unreachable: a cell failed to convert but none was found")


def read_table(path: str | os.PathLike) -> Table:
    """The CSV file at ``path``: a header row of distinct names, then rows of as many cells (blank lines
    skipped, cells stripped of surrounding spaces)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            rows, lines = [], []
            for cells in reader:
                if not cells or all(c.strip() == "" for c in cells):
                    continue
                cells = [c.strip() for c in cells]
                if header is None:
                    header = cells
                    continue
                if len(cells) != len(header):
                    raise ValueError(f"{path}: row {len(rows) + 1} (line {reader.line_num}) has {len(cells)} "
                                     f"cells but the header has {len(header)} columns")
                rows.append(cells)
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    if header is None:
        raise ValueError(f"{path}: empty file; a CSV needs a header row of column names")
    unnamed = [j + 1 for j, name in enumerate(header) if name == ""]
    if unnamed:
        raise ValueError(f"{path}: header column {unnamed[0]} has no name")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: header names column {duplicates[0]!r} more than once")
    if not rows:
        raise ValueError(f"{path}: no data rows below the header")
    return Table(path, header, rows, lines)


def _targets(table: Table, target: str) -> tuple[str, np.ndarray]:
    """(task, labels): integer cells are class labels, numbers with a point or exponent regression values,
    anything else text class names."""
    cells = table.column(target)
    for i, cell in enumerate(cells):
        if cell == "":
            raise ValueError(f"{table.where(i, target)}: missing target value")
    if all(INTEGER.fullmatch(cell) for cell in cells):
        return "classification", np.array([int(cell) for cell in cells], dtype=np.int64)
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        return "classification", np.array(cells, dtype=str)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"{table.where(int(bad[0]), target)}: {cells[bad[0]]!r} (targets must be finite)")
    return "regression", values


def load_csv(path: str | os.PathLike, target: str | None = None, split: str = "book",
             test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = SPLIT_SEED, standardize: bool = False,
             dtype: str = "float32", device: str = "cpu") -> Dataset:
    """A CSV file with a header row: numeric feature columns and the ``target`` column (default: the last).

    Integer or text targets mean classification (``class_names``: the distinct values, sorted; codes index
    them), float targets (a decimal point or exponent) regression. A seeded ``test_fraction`` of the rows
    becomes the test set, then ``split="book"`` keeps 1/6 of the rest for validation (see
    ``gpubp.datasets.prepare``); ``standardize`` scales the features to mean 0, std 1 on the training split.
    ValueError names the row and column of a missing or non-numeric cell, and an unknown target column.
    """
    table = read_table(path)
    if target is None:
        target = table.header[-1]
    if target not in table.header:
        raise ValueError(f"{table.path}: no column {target!r}; the columns are {', '.join(table.header)}")
    features = [name for name in table.header if name != target]
    if not features:
        raise ValueError(f"{table.path}: only the target column {target!r}; no feature columns")
    task, labels = _targets(table, target)
    class_names = None
    if task == "classification":
        (labels,), class_names = encode_classes(labels)
    X = table.numeric(features)
    source = {"path": str(table.path.resolve()), "format": "csv", "target": target,
              "rows": len(table.rows)}
    return make_dataset(table.path.stem, table.path, (X, labels), None, task=task, class_names=class_names,
                        feature_names=features, target_name=target, source=source, split=split,
                        test_fraction=test_fraction, seed=seed, standardize_features=standardize,
                        dtype=dtype, device=device)
