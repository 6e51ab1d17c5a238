"""CSV files with a header row: numeric feature columns and one target column, read with the stdlib csv
module. Integer or text targets mean classification, float targets regression. Every problem raises
ValueError naming the file, the row (data rows count from 1; line numbers include the header) and the
column.

Reading takes time and memory in proportion to the file: lines are read at most ``MAX_ROW_CHARS``
characters at a time (a file with no line ends, such as /dev/zero, stops there), and columns are found by
name through a dict, so a header of 100,000 columns costs no more per column than one of ten."""

from __future__ import annotations

import csv
import functools
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from .dataset import Dataset
from .prepare import DEFAULT_TEST_FRACTION, SPLIT_SEED, encode_classes, make_dataset

INTEGER = re.compile(r"[+-]?\d+")
#: the most characters one row of a CSV file may have (one line, or several when a quoted cell holds line
#: ends): 16 Mi characters hold a million numeric columns, and reading a file without line ends stops there
MAX_ROW_CHARS = 16 * 2**20
#: integer class labels are int64
INT64 = np.iinfo(np.int64)
#: how much of a cell an error message quotes
SHOWN_CHARS = 40
#: how many column names an error message lists
SHOWN_NAMES = 20


def _shown(cell: str) -> str:
    """``cell`` quoted for a message, its middle left out when it is long."""
    if len(cell) <= SHOWN_CHARS:
        return repr(cell)
    half = SHOWN_CHARS // 2
    return f"{cell[:half]!r}…{cell[-half:]!r} ({len(cell):,} characters)"


def names_text(names: Sequence[str]) -> str:
    """Column names for a message: all of them comma-separated, or the first ``SHOWN_NAMES`` and how many."""
    if len(names) <= SHOWN_NAMES:
        return ", ".join(names)
    return f"{', '.join(names[:SHOWN_NAMES])}, … ({len(names):,} in all)"


@dataclass(frozen=True)
class Table:
    """The cells of a CSV file as text: ``header`` names the columns, ``rows[i]`` sits on ``lines[i]``."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    @functools.cached_property
    def positions(self) -> dict[str, int]:
        """The index of each column, by name."""
        return {name: j for j, name in enumerate(self.header)}

    def where(self, i: int, column: str) -> str:
        return f"{self.path}: row {i + 1} (line {self.lines[i]}), column {column!r}"

    def column(self, name: str) -> list[str]:
        j = self.positions[name]
        return [row[j] for row in self.rows]

    def numeric(self, names: Sequence[str]) -> np.ndarray:
        """The columns ``names`` as a float64 array (rows, len(names)); ValueError naming the row and column
        of a missing cell, a text cell, NaN or infinity."""
        index = [self.positions[name] for name in names]
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
                    raise ValueError(f"{self.where(i, name)}: {_shown(cell)} is not a number") from None
                if not np.isfinite(number):
                    raise ValueError(f"{self.where(i, name)}: {_shown(cell)} (features must be finite numbers)")
        raise AssertionError("unreachable: a cell failed to convert but none was found")


class _BoundedLines:
    """The lines of a text file for ``csv.reader``, read at most ``MAX_ROW_CHARS`` characters of a row (the
    lines of one record) at a time; ValueError naming the line when a row is longer."""

    def __init__(self, f: TextIO, path: Path) -> None:
        self.f, self.path = f, path
        self.line = 0       # lines read so far
        self.row_start = 1  # the line the current row starts on
        self.row_chars = 0  # characters of the current row read so far

    def __iter__(self) -> "_BoundedLines":
        return self

    def __next__(self) -> str:
        line = self.f.readline(MAX_ROW_CHARS + 1 - self.row_chars)
        if not line:
            raise StopIteration
        self.line += 1
        self.row_chars += len(line)
        if self.row_chars > MAX_ROW_CHARS:
            lines = f"line {self.line}" if self.row_start == self.line else f"lines {self.row_start}–{self.line}"
            raise ValueError(f"{self.path}: {lines}: a row longer than {MAX_ROW_CHARS:,} characters, the most "
                             "a CSV row may have (is this a CSV file?)")
        return line

    def next_row(self) -> None:
        """The reader has taken a whole row: count the next one from the next line."""
        self.row_start, self.row_chars = self.line + 1, 0


def read_table(path: str | os.PathLike) -> Table:
    """The CSV file at ``path``: a header row of distinct names, then rows of as many cells (blank lines
    skipped, cells stripped of surrounding spaces), each row at most ``MAX_ROW_CHARS`` characters."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = _BoundedLines(f, path)
            reader = csv.reader(lines)
            header: list[str] | None = None
            rows, row_lines = [], []
            for cells in reader:
                lines.next_row()
                if not cells or all(c.strip() == "" for c in cells):
                    continue
                cells = [c.strip() for c in cells]
                if header is None:
                    header = _checked_header(path, cells)
                    continue
                if len(cells) != len(header):
                    raise ValueError(f"{path}: row {len(rows) + 1} (line {reader.line_num}) has {len(cells)} "
                                     f"cells but the header has {len(header)} columns")
                rows.append(cells)
                row_lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV file ({exc})") from None
    if header is None:
        raise ValueError(f"{path}: empty file; a CSV needs a header row of column names")
    if not rows:
        raise ValueError(f"{path}: no data rows below the header")
    return Table(path, header, rows, row_lines)


def _checked_header(path: Path, header: list[str]) -> list[str]:
    """``header`` when every column has a name of its own (checked before the rows are read)."""
    unnamed = next((j for j, name in enumerate(header, 1) if name == ""), None)
    if unnamed is not None:
        raise ValueError(f"{path}: header column {unnamed} has no name")
    duplicates = sorted(name for name, count in Counter(header).items() if count > 1)
    if duplicates:
        raise ValueError(f"{path}: header names column {_shown(duplicates[0])} more than once")
    return header


def _fits_int64(cell: str) -> bool:
    """Whether an integer cell is within int64 (a cell of thousands of digits is never converted)."""
    digits = cell.lstrip("+-").lstrip("0")
    return len(digits) <= len(str(INT64.max)) and INT64.min <= int(cell) <= INT64.max


def _targets(table: Table, target: str) -> tuple[str, np.ndarray]:
    """(task, labels): integer cells are class labels, numbers with a point or exponent regression values,
    anything else text class names.

    Integer labels are int64. One beyond int64 is a ValueError naming its row, not a reason to read the
    column as text: the same column would then hold numbers in one file and text in another, where training
    and ``gpubp evaluate`` must agree on the classes, and so long a number is more likely an identifier in
    the wrong column than a class. Labels written with a letter are class names of any length."""
    cells = table.column(target)
    for i, cell in enumerate(cells):
        if cell == "":
            raise ValueError(f"{table.where(i, target)}: missing target value")
    if all(INTEGER.fullmatch(cell) for cell in cells):
        for i, cell in enumerate(cells):
            if not _fits_int64(cell):
                raise ValueError(f"{table.where(i, target)}: the integer label {_shown(cell)} is beyond the "
                                 f"64-bit range of class labels ({INT64.min:,} to {INT64.max:,}); to use "
                                 "such labels as class names, make them text (e.g. start them with a letter)")
        return "classification", np.array([int(cell) for cell in cells], dtype=np.int64)
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        return "classification", np.array(cells, dtype=str)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(f"{table.where(int(bad[0]), target)}: {_shown(cells[bad[0]])} (targets must be finite)")
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
    if target not in table.positions:
        raise ValueError(f"{table.path}: no column {target!r}; the columns are {names_text(table.header)}")
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
