"""DeepFM (Guo et al. 2017): FM second-order term + MLP over the shared embeddings."""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from models.backbones._shape import check_embedding_shape
from models.backbones.fm import fm_interaction
from models.mlp import MLP


@keras.saving.register_keras_serializable(package="autodim")
class DeepFM(keras.layers.Layer):
    """[B, M, D] -> [B]: FM(e) + MLP(flatten(e))."""

    def __init__(self, hidden_units: Sequence[int] = (128, 128), dropout: float = 0.2, batchnorm: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.mlp = MLP(hidden_units, dropout, batchnorm, output_units=1, name="mlp")

    def build(self, input_shape):
        fields, dim = check_embedding_shape("DeepFM", input_shape)
        self.mlp.build((input_shape[0], fields * dim))

    def call(self, embeddings, training=None):
        fm = tf.reduce_sum(fm_interaction(embeddings), axis=-1)
        flat = tf.reshape(embeddings, [-1, embeddings.shape[1] * embeddings.shape[2]])
        return fm + tf.squeeze(self.mlp(flat, training=training), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.mlp.hidden_units), dropout=self.mlp.dropout, batchnorm=self.mlp.batchnorm)
        return config
