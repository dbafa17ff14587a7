"""Argument checks shared by the model layers.

Every check raises `ValueError` naming the owner (layer class), the argument and what it received,
so a bad config fails at construction time instead of deep inside a traced step.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import keras

DEFAULT_EMBEDDING_STDDEV = 0.01


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_vocab_sizes(owner: str, vocab_sizes: Any) -> tuple[int, ...]:
    """A non-empty sequence of positive ints (one vocabulary size per field)."""
    if isinstance(vocab_sizes, (str, bytes)) or not isinstance(vocab_sizes, Sequence):
        raise ValueError(
            f"{owner}: vocab_sizes must be a sequence of positive ints, got {vocab_sizes!r}"
        )
    if len(vocab_sizes) == 0:
        raise ValueError(f"{owner}: vocab_sizes must not be empty, got {list(vocab_sizes)!r}")
    for i, v in enumerate(vocab_sizes):
        if not _is_int(v) or v < 1:
            raise ValueError(
                f"{owner}: vocab_sizes[{i}] must be a positive int, got {v!r} "
                f"(vocab_sizes={list(vocab_sizes)!r})"
            )
    return tuple(int(v) for v in vocab_sizes)


def check_positive_int(owner: str, name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


def check_dim_list(owner: str, name: str, dims: Any, *, increasing: bool) -> tuple[int, ...]:
    """A non-empty sequence of positive ints, strictly increasing if `increasing`."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise ValueError(f"{owner}: {name} must be a sequence of positive ints, got {dims!r}")
    if len(dims) == 0:
        raise ValueError(f"{owner}: {name} must not be empty, got {list(dims)!r}")
    for i, d in enumerate(dims):
        if not _is_int(d) or d < 1:
            raise ValueError(
                f"{owner}: {name}[{i}] must be a positive int, got {d!r} ({name}={list(dims)!r})"
            )
    if increasing and any(a >= b for a, b in zip(dims, dims[1:])):
        raise ValueError(f"{owner}: {name} must be strictly increasing, got {list(dims)!r}")
    return tuple(int(d) for d in dims)


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def check_rate(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be a float in [0, 1), got {value!r}")
    return float(value)


def check_units(owner: str, name: str, units: Any) -> tuple[int, ...]:
    """A possibly empty sequence of positive ints (hidden layer sizes)."""
    if isinstance(units, (str, bytes)) or not isinstance(units, Sequence):
        raise ValueError(f"{owner}: {name} must be a sequence of positive ints, got {units!r}")
    for i, u in enumerate(units):
        if not _is_int(u) or u < 1:
            raise ValueError(
                f"{owner}: {name}[{i}] must be a positive int, got {u!r} ({name}={list(units)!r})"
            )
    return tuple(int(u) for u in units)


def get_embeddings_initializer(initializer: Any) -> keras.initializers.Initializer:
    """`None` means N(0, 0.01^2), the pytorch-fm / paper default for embedding tables."""
    if initializer is None:
        return keras.initializers.RandomNormal(mean=0.0, stddev=DEFAULT_EMBEDDING_STDDEV)
    try:
        return keras.initializers.get(initializer)
    except (ValueError, TypeError) as err:
        raise ValueError(f"embeddings_initializer: cannot resolve {initializer!r}: {err}") from err


def initializer_stddev(initializer: keras.initializers.Initializer) -> float:
    """The stddev of a normal/uniform initializer, else the default embedding stddev."""
    stddev = getattr(initializer, "stddev", None)
    if isinstance(stddev, numbers.Real) and stddev > 0:
        return float(stddev)
    minval, maxval = getattr(initializer, "minval", None), getattr(initializer, "maxval", None)
    if isinstance(minval, numbers.Real) and isinstance(maxval, numbers.Real) and maxval > minval:
        return float(maxval - minval) / (12.0 ** 0.5)
    return DEFAULT_EMBEDDING_STDDEV
