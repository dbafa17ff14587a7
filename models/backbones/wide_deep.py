"""Wide & Deep (Cheng et al. 2016): the deep part; the wide part is the model's `FirstOrder`."""
from __future__ import annotations

import keras
import tensorflow as tf

from models.backbones._base import MLPBackbone
from models.backbones._shape import check_embedding_shape


@keras.saving.register_keras_serializable(package="autodim")
class WideDeep(MLPBackbone):
    """[B, M, D] -> [B]: MLP over the concatenated embeddings, then a 1-unit output layer."""

    def build(self, input_shape):
        fields, dim = check_embedding_shape("WideDeep", input_shape)
        self.mlp.build((input_shape[0], fields * dim))

    def call(self, embeddings, training=None):
        flat = tf.reshape(embeddings, [-1, embeddings.shape[1] * embeddings.shape[2]])
        return self.mlp_logit(flat, training=training)
