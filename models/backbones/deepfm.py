"""DeepFM (Guo et al. 2017): FM second-order term + MLP over the shared embeddings."""
from __future__ import annotations

import keras
import tensorflow as tf

from models.backbones._base import MLPBackbone
from models.backbones._shape import check_embedding_shape
from models.backbones.fm import fm_interaction


@keras.saving.register_keras_serializable(package="autodim")
class DeepFM(MLPBackbone):
    """[B, M, D] -> [B]: FM(e) + MLP(flatten(e))."""

    def build(self, input_shape):
        fields, dim = check_embedding_shape("DeepFM", input_shape)
        self.mlp.build((input_shape[0], fields * dim))

    def call(self, embeddings, training=None):
        fm = tf.reduce_sum(fm_interaction(embeddings), axis=-1)
        flat = tf.reshape(embeddings, [-1, embeddings.shape[1] * embeddings.shape[2]])
        return fm + self.mlp_logit(flat, training=training)
