"""DCN-V2 (Wang et al. 2021), parallel structure: cross network and MLP side by side on the
flattened embeddings, concatenated into a 1-unit output layer.

Cross layer: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, with W_l full rank [F, F] or, if
`low_rank` is set, U_l V_l^T with U_l, V_l of shape [F, low_rank].
"""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from models._validation import check_positive_int
from models.backbones._shape import check_embedding_shape
from models.mlp import MLP


@keras.saving.register_keras_serializable(package="autodim")
class DCNv2(keras.layers.Layer):
    """[B, M, D] -> [B]."""

    def __init__(
        self,
        num_cross_layers: int = 3,
        low_rank: int | None = None,
        hidden_units: Sequence[int] = (128, 128),
        dropout: float = 0.2,
        batchnorm: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_cross_layers = check_positive_int("DCNv2", "num_cross_layers", num_cross_layers)
        self.low_rank = (
            None if low_rank is None else check_positive_int("DCNv2", "low_rank", low_rank)
        )
        self.mlp = MLP(hidden_units, dropout, batchnorm, name="mlp") if len(hidden_units) else None
        self._mlp_args = (list(hidden_units), dropout, batchnorm)
        self.output_layer = keras.layers.Dense(1, name="output")

    def build(self, input_shape):
        fields, dim = check_embedding_shape("DCNv2", input_shape)
        width = fields * dim
        self.cross_weights = []
        for i in range(self.num_cross_layers):
            if self.low_rank is None:
                mats = [
                    self.add_weight(
                        name=f"cross_kernel_{i}", shape=(width, width), initializer="glorot_uniform"
                    )
                ]
            else:
                mats = [
                    self.add_weight(
                        name=f"cross_u_{i}",
                        shape=(width, self.low_rank),
                        initializer="glorot_uniform",
                    ),
                    self.add_weight(
                        name=f"cross_v_{i}",
                        shape=(self.low_rank, width),
                        initializer="glorot_uniform",
                    ),
                ]
            bias = self.add_weight(name=f"cross_bias_{i}", shape=(width,), initializer="zeros")
            self.cross_weights.append((mats, bias))
        out_width = width
        if self.mlp is not None:
            self.mlp.build((input_shape[0], width))
            out_width += self.mlp.output_dim
        self.output_layer.build((input_shape[0], out_width))

    def call(self, embeddings, training=None):
        x0 = tf.reshape(embeddings, [-1, embeddings.shape[1] * embeddings.shape[2]])
        x = x0
        for mats, bias in self.cross_weights:
            h = x
            for mat in mats:
                h = tf.matmul(h, mat)
            x = x0 * (h + bias) + x
        parts = [x] if self.mlp is None else [x, self.mlp(x0, training=training)]
        return tf.squeeze(self.output_layer(tf.concat(parts, axis=1)), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        hidden_units, dropout, batchnorm = self._mlp_args
        config.update(
            num_cross_layers=self.num_cross_layers, low_rank=self.low_rank,
            hidden_units=hidden_units, dropout=dropout, batchnorm=batchnorm,
        )
        return config
