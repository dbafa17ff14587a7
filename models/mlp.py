"""The DLRS MLP block (paper Sec. 3.2): Dense -> BatchNorm -> ReLU -> Dropout per hidden layer."""
from __future__ import annotations

from typing import Sequence

import keras

from models._validation import check_rate, check_units


@keras.saving.register_keras_serializable(package="autodim")
class MLP(keras.layers.Layer):
    """[B, F] -> [B, hidden_units[-1]] (or [B, output_units] if `output_units` is set).

    Layer order follows pytorch-fm's MultiLayerPerceptron (the paper's code base). The hidden
    BatchNorm uses per-replica statistics (standard Keras behaviour under MirroredStrategy).
    """

    def __init__(
        self,
        hidden_units: Sequence[int] = (128, 128),
        dropout: float = 0.2,
        batchnorm: bool = True,
        output_units: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_units = check_units("MLP", "hidden_units", hidden_units)
        self.dropout = check_rate("MLP", "dropout", dropout)
        if not isinstance(batchnorm, bool):
            raise ValueError(f"MLP: batchnorm must be a bool, got {batchnorm!r}")
        self.batchnorm = batchnorm
        if output_units is not None and (
            isinstance(output_units, bool) or not isinstance(output_units, int) or output_units < 1
        ):
            raise ValueError(
                f"MLP: output_units must be a positive int or None, got {output_units!r}"
            )
        self.output_units = output_units
        self.dense_layers = [
            keras.layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(self.hidden_units)
        ]
        self.norm_layers = (
            [
                keras.layers.BatchNormalization(
                    momentum=0.9, epsilon=1e-5, synchronized=True, name=f"bn_{i}"
                )
                for i in range(len(self.hidden_units))
            ]
            if batchnorm
            else []
        )
        self.dropout_layers = [
            keras.layers.Dropout(self.dropout, name=f"dropout_{i}")
            for i in range(len(self.hidden_units))
        ]
        self.output_layer = (
            keras.layers.Dense(output_units, name="output") if output_units else None
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for i, dense in enumerate(self.dense_layers):
            dense.build(shape)
            shape = shape[:-1] + (self.hidden_units[i],)
            if self.norm_layers:
                self.norm_layers[i].build(shape)
        if self.output_layer is not None:
            self.output_layer.build(shape)

    @property
    def output_dim(self) -> int | None:
        return self.output_units or (self.hidden_units[-1] if self.hidden_units else None)

    def call(self, x, training=None):
        for i, dense in enumerate(self.dense_layers):
            x = dense(x)
            if self.norm_layers:
                x = self.norm_layers[i](x, training=training)
            x = keras.activations.relu(x)
            x = self.dropout_layers[i](x, training=training)
        if self.output_layer is not None:
            x = self.output_layer(x)
        return x

    def compute_output_shape(self, input_shape):
        last = self.output_units or (
            self.hidden_units[-1] if self.hidden_units else input_shape[-1]
        )
        return tuple(input_shape[:-1]) + (last,)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units), dropout=self.dropout, batchnorm=self.batchnorm,
            output_units=self.output_units,
        )
        return config
