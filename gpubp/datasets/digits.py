"""scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download), the default demo data."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, finish

#: sizes of the fixed split (the rest, 1,197 images, train)
N_VALIDATION = 300
N_TEST = 300
#: seed of the permutation that defines the fixed split
SPLIT_SEED = 0
SPLITS = ("book", "full")


def load_digits(split: str = "book", dtype: str = "float32", device: str = "cpu") -> Dataset:
    """The 8×8 digits as 64-pixel rows scaled to [0, 1] (values 0–16 divided by 16) and int64 labels.

    A fixed permutation (seed 0) splits them into 1,197 train / 300 validation / 300 test
    (``split="book"``), or 1,497 train / 300 test with ``validation`` None (``split="full"``).
    Needs the optional extra: ``pip install gpubp[digits]`` (scikit-learn).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ImportError("the digits data set comes with scikit-learn, which is not installed; "
                          "run: pip install gpubp[digits]") from exc
    bunch = sklearn_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(bunch.target))
    pixels, labels = bunch.data[order], bunch.target[order]
    n_train = len(labels) - N_VALIDATION - N_TEST
    test = (pixels[-N_TEST:], labels[-N_TEST:])
    if split == "book":
        train, validation = (pixels[:n_train], labels[:n_train]), \
            (pixels[n_train:-N_TEST], labels[n_train:-N_TEST])
    else:
        train, validation = (pixels[:-N_TEST], labels[:-N_TEST]), None
    return finish("digits", {"train": train, "validation": validation, "test": test}, 10,
                  dtype, device, 16.0)
