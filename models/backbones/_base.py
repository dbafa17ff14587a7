"""What the backbones with an MLP head share: the MLP, its config and the [B] output shape."""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from models.mlp import MLP


class MLPBackbone(keras.layers.Layer):
    """Base of WideDeep, DeepFM, IPNN and NFM: [B, M, D] -> [B] logits, with an MLP head whose
    settings (`hidden_units`, `dropout`, `batchnorm`) round-trip through get_config.

    Backbones whose MLP reads the flattened embeddings (`raw_mlp_input = True`: DeepFM, WideDeep)
    can instead take the mixed-dimension embeddings before their unification, concatenated to
    [B, sum d_m] (`mlp_input_dim = sum d_m`, see `CTRModel(mlp_input="raw")`). The MLP's first
    layer is linear, so Dense(concat(x_m W_m + b_m)) is Dense'(concat(x_m)) with kernel rows
    W_m K_m: the same function class, with a first layer of sum d_m rather than M * E inputs.
    """

    raw_mlp_input = False  # whether the MLP may read the raw (un-unified) embeddings
    needs_unified_with_raw_mlp_input = True  # whether the rest of call still needs [B, M, D]

    def __init__(self, hidden_units: Sequence[int] = (128, 128), dropout: float = 0.2,
                 batchnorm: bool = True, mlp_input_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        if mlp_input_dim is not None:
            if not self.raw_mlp_input:
                raise ValueError(
                    f"{owner}: mlp_input_dim is only for backbones whose MLP reads the "
                    f"flattened embeddings (DeepFM, WideDeep), got {mlp_input_dim!r}"
                )
            if (
                isinstance(mlp_input_dim, bool)
                or not isinstance(mlp_input_dim, int)
                or mlp_input_dim < 1
            ):
                raise ValueError(
                    f"{owner}: mlp_input_dim must be a positive int or None, got {mlp_input_dim!r}"
                )
        self.mlp_input_dim = mlp_input_dim
        self.mlp = MLP(hidden_units, dropout, batchnorm, output_units=1, name="mlp")

    @property
    def uses_field_embeddings(self) -> bool:
        """Whether call takes the unified [B, M, D] embeddings (else the flat raw ones)."""
        return self.mlp_input_dim is None or self.needs_unified_with_raw_mlp_input

    def build_mlp(self, fields: int, dim: int, batch=None) -> None:
        """Builds the MLP for flattened [B, fields * dim] embeddings, or [B, mlp_input_dim]."""
        self.mlp.build((batch, self.mlp_input_dim or fields * dim))

    def mlp_logit(self, features, training=None):
        """The MLP's single output unit as a [B] tensor."""
        return tf.squeeze(self.mlp(features, training=training), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.mlp.hidden_units), dropout=self.mlp.dropout,
                      batchnorm=self.mlp.batchnorm)
        if self.mlp_input_dim is not None:
            config["mlp_input_dim"] = self.mlp_input_dim
        return config
