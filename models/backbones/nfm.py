"""Neural Factorization Machine (He & Chua 2017): Bi-Interaction pooling -> BN -> dropout -> MLP."""
from __future__ import annotations

from typing import Sequence

import keras

from models.backbones._base import MLPBackbone
from models.backbones._shape import check_embedding_shape
from models.backbones.fm import fm_interaction


@keras.saving.register_keras_serializable(package="autodim")
class NFM(MLPBackbone):
    """[B, M, D] -> [B]. As pytorch-fm's NFM: the pooled [B, D] vector is batch-normalised and
    dropped out."""

    def __init__(
        self,
        hidden_units: Sequence[int] = (128, 128),
        dropout: float = 0.2,
        batchnorm: bool = True,
        **kwargs,
    ):
        super().__init__(hidden_units, dropout, batchnorm, **kwargs)
        self.pool_norm = (
            keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, synchronized=True, name="pool_bn"
            )
            if batchnorm
            else None
        )
        self.pool_dropout = keras.layers.Dropout(self.mlp.dropout, name="pool_dropout")

    def build(self, input_shape):
        _, dim = check_embedding_shape("NFM", input_shape)
        if self.pool_norm is not None:
            self.pool_norm.build((input_shape[0], dim))
        self.mlp.build((input_shape[0], dim))

    def call(self, embeddings, training=None):
        pooled = fm_interaction(embeddings)
        if self.pool_norm is not None:
            pooled = self.pool_norm(pooled, training=training)
        pooled = self.pool_dropout(pooled, training=training)
        return self.mlp_logit(pooled, training=training)
