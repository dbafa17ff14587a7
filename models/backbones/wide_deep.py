"""Wide & Deep (Cheng et al. 2016): the deep part; the wide part is the model's `FirstOrder`."""
from __future__ import annotations

import keras
import tensorflow as tf

from models.backbones._base import MLPBackbone
from models.backbones._shape import check_embedding_shape


@keras.saving.register_keras_serializable(package="autodim")
class WideDeep(MLPBackbone):
    """[B, M, D] -> [B]: MLP over the concatenated embeddings, then a 1-unit output layer. With
    `mlp_input_dim` the input is already flat: [B, mlp_input_dim] raw mixed-dimension embeddings
    (MLPBackbone), so no unification is needed at all."""

    raw_mlp_input = True
    needs_unified_with_raw_mlp_input = False

    def build(self, input_shape):
        if self.mlp_input_dim is not None:
            if len(input_shape) != 2 or input_shape[-1] != self.mlp_input_dim:
                raise ValueError(
                    f"WideDeep: built with mlp_input_dim={self.mlp_input_dim}, expected inputs "
                    f"[batch, {self.mlp_input_dim}], got {tuple(input_shape)}"
                )
            self.build_mlp(0, 0, input_shape[0])
            return
        fields, dim = check_embedding_shape("WideDeep", input_shape)
        self.build_mlp(fields, dim, input_shape[0])

    def call(self, embeddings, training=None):
        if self.mlp_input_dim is not None:
            return self.mlp_logit(embeddings, training=training)
        flat = tf.reshape(embeddings, [-1, embeddings.shape[1] * embeddings.shape[2]])
        return self.mlp_logit(flat, training=training)

