"""AutoInt (Song et al. 2019), as pytorch-fm's AutoIntModel: multi-head self-attention over fields
(+ a residual projection), a 1-unit output over the flattened attention output, plus an MLP over the
flattened embeddings (AutoInt+; `hidden_units=()` disables it)."""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from models._validation import check_positive_int, check_rate
from models.backbones._shape import check_embedding_shape
from models.mlp import MLP


@keras.saving.register_keras_serializable(package="autodim")
class AutoInt(keras.layers.Layer):
    """[B, M, D] -> [B]."""

    def __init__(
        self,
        attention_dim: int = 32,
        num_heads: int = 2,
        num_layers: int = 3,
        residual: bool = True,
        attention_dropout: float = 0.0,
        hidden_units: Sequence[int] = (128, 128),
        dropout: float = 0.2,
        batchnorm: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.attention_dim = check_positive_int("AutoInt", "attention_dim", attention_dim)
        self.num_heads = check_positive_int("AutoInt", "num_heads", num_heads)
        if self.attention_dim % self.num_heads:
            raise ValueError(
                f"AutoInt: attention_dim ({attention_dim}) must be divisible by num_heads "
                f"({num_heads})"
            )
        self.num_layers = check_positive_int("AutoInt", "num_layers", num_layers)
        self.residual = bool(residual)
        self.attention_dropout = check_rate("AutoInt", "attention_dropout", attention_dropout)
        self.input_projection = keras.layers.Dense(self.attention_dim, name="input_projection")
        self.attention_layers = [
            keras.layers.MultiHeadAttention(
                self.num_heads,
                self.attention_dim // self.num_heads,
                dropout=self.attention_dropout,
                name=f"attention_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.residual_projection = (
            keras.layers.Dense(self.attention_dim, name="residual_projection")
            if self.residual
            else None
        )
        self.attention_output = keras.layers.Dense(1, name="attention_output")
        self.mlp = (
            MLP(hidden_units, dropout, batchnorm, output_units=1, name="mlp")
            if len(hidden_units)
            else None
        )
        self._mlp_args = (list(hidden_units), dropout, batchnorm)

    def build(self, input_shape):
        fields, dim = check_embedding_shape("AutoInt", input_shape)
        batch = input_shape[0]
        self.input_projection.build((batch, fields, dim))
        for layer in self.attention_layers:
            layer.build((batch, fields, self.attention_dim), (batch, fields, self.attention_dim))
        if self.residual_projection is not None:
            self.residual_projection.build((batch, fields, dim))
        self.attention_output.build((batch, fields * self.attention_dim))
        if self.mlp is not None:
            self.mlp.build((batch, fields * dim))

    def call(self, embeddings, training=None):
        fields, dim = embeddings.shape[1], embeddings.shape[2]
        cross = self.input_projection(embeddings)
        for layer in self.attention_layers:
            cross = layer(cross, cross, training=training)
        if self.residual_projection is not None:
            cross = cross + self.residual_projection(embeddings)
        cross = tf.nn.relu(cross)
        logit = tf.squeeze(
            self.attention_output(tf.reshape(cross, [-1, fields * self.attention_dim])), axis=-1
        )
        if self.mlp is not None:
            flat = tf.reshape(embeddings, [-1, fields * dim])
            logit = logit + tf.squeeze(self.mlp(flat, training=training), axis=-1)
        return logit

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        hidden_units, dropout, batchnorm = self._mlp_args
        config.update(
            attention_dim=self.attention_dim, num_heads=self.num_heads, num_layers=self.num_layers,
            residual=self.residual, attention_dropout=self.attention_dropout,
            hidden_units=hidden_units, dropout=dropout, batchnorm=batchnorm,
        )
        return config
