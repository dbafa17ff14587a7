"""What the backbones with an MLP head share: the MLP, its config and the [B] output shape."""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from models.mlp import MLP


class MLPBackbone(keras.layers.Layer):
    """Base of WideDeep, DeepFM, IPNN and NFM: [B, M, D] -> [B] logits, with an MLP head whose
    settings (`hidden_units`, `dropout`, `batchnorm`) round-trip through get_config."""

    def __init__(self, hidden_units: Sequence[int] = (128, 128), dropout: float = 0.2,
                 batchnorm: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.mlp = MLP(hidden_units, dropout, batchnorm, output_units=1, name="mlp")

    def mlp_logit(self, features, training=None):
        """The MLP's single output unit as a [B] tensor."""
        return tf.squeeze(self.mlp(features, training=training), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.mlp.hidden_units), dropout=self.mlp.dropout,
                      batchnorm=self.mlp.batchnorm)
        return config
