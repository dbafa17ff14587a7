"""DeepFM (Guo et al. 2017): FM second-order term + MLP over the shared embeddings."""
from __future__ import annotations

import keras
import tensorflow as tf

from models.backbones._base import MLPBackbone
from models.backbones._shape import check_embedding_shape
from models.backbones.fm import fm_interaction


@keras.saving.register_keras_serializable(package="autodim")
class DeepFM(MLPBackbone):
    """[B, M, D] -> [B]: FM(e) + MLP(flatten(e)); with `mlp_input_dim`, MLP(mlp_features) where
    `mlp_features` [B, mlp_input_dim] are the raw mixed-dimension embeddings (MLPBackbone)."""

    raw_mlp_input = True

    def build(self, input_shape):
        fields, dim = check_embedding_shape("DeepFM", input_shape)
        self.build_mlp(fields, dim, input_shape[0])

    def call(self, embeddings, training=None, mlp_features=None):
        fm = tf.reduce_sum(fm_interaction(embeddings), axis=-1)
        if self.mlp_input_dim is None:
            flat = tf.reshape(embeddings, [-1, embeddings.shape[1] * embeddings.shape[2]])
        elif mlp_features is None:
            raise ValueError(
                f"DeepFM: built with mlp_input_dim={self.mlp_input_dim}, so call needs "
                f"mlp_features [batch, {self.mlp_input_dim}]"
            )
        else:
            flat = mlp_features
        return fm + self.mlp_logit(flat, training=training)
