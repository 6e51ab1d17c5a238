"""Any data set in MNIST's file layout: a folder of IDX files (train images and labels, and optionally the
t10k test pair), of any image size and any number of classes. No checksum: that is MNIST's own check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dataset import Dataset, MissingDataError
from .idx import read_idx
from .mnist import FILES, _find
from .prepare import DEFAULT_TEST_FRACTION, SPLIT_SEED, encode_classes, make_dataset


def _pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) from ``<prefix>-images-idx3-ubyte[.gz]`` and its labels file; None when neither
    exists; ValueError for images without labels (or the reverse) and for counts that disagree."""
    images_path = _find(folder, FILES[f"{prefix}_images"])
    labels_path = _find(folder, FILES[f"{prefix}_labels"])
    if images_path is None and labels_path is None:
        return None
    if labels_path is None or images_path is None:
        have, lack = (images_path, FILES[f"{prefix}_labels"]) if labels_path is None else \
            (labels_path, FILES[f"{prefix}_images"])
        raise MissingDataError(f"{have}: {lack}[.gz] is missing from {folder}; IDX images and labels come "
                               "in pairs")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim < 2:
        raise ValueError(f"{images_path}: expected images (n, height, width) or rows (n, features); "
                         f"got shape {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path}: expected one integer label per image; got {labels.dtype} of shape "
                         f"{labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of "
                         f"{images_path.name}")
    return images, labels


def load_idx(folder: str | os.PathLike, split: str = "book", test_fraction: float = DEFAULT_TEST_FRACTION,
             seed: int = SPLIT_SEED, standardize: bool = False, dtype: str = "float32",
             device: str = "cpu") -> Dataset:
    """The IDX files in ``folder``: ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``.gz`` or
    not), and the ``t10k-…`` test pair if present (else a seeded ``test_fraction`` of the training images
    becomes the test set). Images of any shape become rows, uint8 pixels scaled to [0, 1]; the class names
    are the distinct labels, sorted. ``split``, ``seed`` and ``standardize`` as in ``load_csv``.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingDataError(f"{folder}: no such folder (expected one holding IDX files such as "
                               f"{FILES['train_images']}.gz)")
    train = _pair(folder, "train")
    if train is None:
        raise MissingDataError(f"{folder}: holds no {FILES['train_images']}[.gz] and "
                               f"{FILES['train_labels']}[.gz]")
    test = _pair(folder, "test")
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise ValueError(f"{folder}: test images are {test[0].shape[1:]}, training images "
                         f"{train[0].shape[1:]}")
    labels, class_names = encode_classes(train[1], *(() if test is None else (test[1],)))
    source = {"path": str(folder.resolve()), "format": "idx", "rows": len(train[0]),
              "input_shape": list(train[0].shape[1:])}
    return make_dataset(folder.name, folder, (train[0], labels[0]),
                        None if test is None else (test[0], labels[1]), task="classification",
                        class_names=class_names, source=source, split=split, test_fraction=test_fraction,
                        seed=seed, standardize_features=standardize, dtype=dtype, device=device)
