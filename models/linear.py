"""First-order (linear / "wide") term: one scalar weight per id of every field, plus a bias."""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from models._tables import FieldTables
from models._validation import check_vocab_sizes


@keras.saving.register_keras_serializable(package="autodim")
class FirstOrder(keras.layers.Layer):
    """int ids [B, M] -> [B] logit contribution sum_m w[field m, id] + b.

    The weights are one concatenated [sum(vocab_sizes), 1] table (a row-sparse variable, see
    `embedding_variables`) initialised to ZERO, which was measured to help pytorch-fm's DeepFM.
    """

    def __init__(self, vocab_sizes: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = check_vocab_sizes("FirstOrder", vocab_sizes)
        self._tables = FieldTables(self.vocab_sizes, [1] * len(self.vocab_sizes), "FirstOrder")

    def build(self, input_shape):
        self._tables.create(self, "zeros", name="weights")
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros")

    @property
    def embedding_variables(self) -> list:
        return self._tables.variables

    def call(self, ids):
        ids = self._tables.check_ids(ids)
        (weights,) = self._tables.lookup(ids)  # [B, M, 1]
        return tf.reduce_sum(weights, axis=[1, 2]) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config["vocab_sizes"] = list(self.vocab_sizes)
        return config
