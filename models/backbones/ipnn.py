"""Inner-product Neural Network (Qu et al. 2016): [embeddings, pairwise inner products] -> MLP."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.backbones._base import MLPBackbone
from models.backbones._shape import check_embedding_shape


@keras.saving.register_keras_serializable(package="autodim")
class IPNN(MLPBackbone):
    """[B, M, D] -> [B]: MLP(concat(flatten(e), <e_i, e_j> for i < j))."""

    def build(self, input_shape):
        fields, dim = check_embedding_shape("IPNN", input_shape)
        rows, cols = np.triu_indices(fields, k=1)
        self._pair_index = (rows * fields + cols).astype(
            np.int32
        )  # into the flattened [M*M] Gram matrix
        self.mlp.build((input_shape[0], fields * dim + len(self._pair_index)))

    def call(self, embeddings, training=None):
        fields, dim = embeddings.shape[1], embeddings.shape[2]
        gram = tf.matmul(embeddings, embeddings, transpose_b=True)  # [B, M, M]
        inner = tf.gather(tf.reshape(gram, [-1, fields * fields]), self._pair_index, axis=1)
        features = tf.concat([tf.reshape(embeddings, [-1, fields * dim]), inner], axis=1)
        return self.mlp_logit(features, training=training)
