"""The FDE baseline: every field embedded in the same `dim`.

With the default `unify="zero_pad"` this is a plain (concatenated, single-gather) embedding with no
projection; `unify="linear"` adds the per-field projection of the re-training stage.
"""
from __future__ import annotations

from typing import Any, Sequence

import keras

from models._validation import check_positive_int, check_vocab_sizes
from models.mixed_embedding import MixedDimEmbedding


@keras.saving.register_keras_serializable(package="autodim")
class FixedEmbedding(MixedDimEmbedding):
    """MixedDimEmbedding with dims = [dim] * num_fields and output_dim = dim."""

    _owner = "FixedEmbedding"

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        dim: int = 32,
        unify: str = "zero_pad",
        embeddings_initializer: Any = None,
        **kwargs,
    ):
        vocab_sizes = check_vocab_sizes(self._owner, vocab_sizes)
        dim = check_positive_int(self._owner, "dim", dim)
        super().__init__(
            vocab_sizes, [dim] * len(vocab_sizes), output_dim=dim, unify=unify,
            embeddings_initializer=embeddings_initializer, **kwargs,
        )
        self.dim = dim

    def get_config(self):
        config = super().get_config()
        for key in ("dims", "output_dim"):
            config.pop(key)
        config["dim"] = self.dim
        return config
