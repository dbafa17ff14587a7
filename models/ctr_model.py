"""CTR model = embedding + backbone (+ first-order term); outputs logits.

Variable groups for the trainer (selected by object identity, never by name):
- `arch_variables`: the embedding's architecture weights alpha (empty for re-training models);
- `model_variables`: every other trainable variable (the DLRS parameters W);
- `embedding_variables`: the row-sparse tables (embedding tables and the first-order table);
- `dense_variables`: `model_variables` minus `embedding_variables`.

`mlp_input="raw"` (re-training models with DeepFM or WideDeep): the backbone's MLP reads the
per-field embeddings at their own dims, concatenated ([B, sum d_m]), instead of the flattened
unified [B, M, E] embeddings; the unified ones feed only the interaction (DeepFM's FM term), and
W&D needs no unification at all. The same function class (see `MLPBackbone`), a smaller and faster
first MLP layer: a mixed-dimension model then serves faster than FDE instead of slower.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from configs.experiment import MLP_INPUTS
from models.linear import FirstOrder


def _exclude(variables, excluded) -> list:
    ids = {id(v) for v in excluded}
    return [v for v in variables if id(v) not in ids]


@keras.saving.register_keras_serializable(package="autodim")
class CTRModel(keras.Model):
    """int ids [B, M] -> logits [B] (no sigmoid; use `predict_proba` for probabilities)."""

    def __init__(self, embedding: keras.layers.Layer, backbone: keras.layers.Layer, vocab_sizes,
                 first_order: bool = True, mlp_input: str = "unified", **kwargs):
        super().__init__(**kwargs)
        if (not isinstance(embedding, keras.layers.Layer)
                or not hasattr(embedding, "embedding_variables")):
            raise ValueError(f"CTRModel: embedding must be an embedding layer with "
                             f"embedding_variables, got {embedding!r}")
        if not isinstance(backbone, keras.layers.Layer):
            raise ValueError(f"CTRModel: backbone must be a keras Layer, got {backbone!r}")
        if not isinstance(first_order, bool):
            raise ValueError(f"CTRModel: first_order must be a bool, got {first_order!r}")
        self.vocab_sizes = tuple(int(v) for v in vocab_sizes)
        if tuple(getattr(embedding, "vocab_sizes", self.vocab_sizes)) != self.vocab_sizes:
            raise ValueError(
                f"CTRModel: vocab_sizes {list(self.vocab_sizes)} differ from the embedding's "
                f"{list(embedding.vocab_sizes)}"
            )
        if mlp_input not in MLP_INPUTS:
            raise ValueError(f"CTRModel: mlp_input must be one of {MLP_INPUTS}, got {mlp_input!r}")
        if mlp_input == "raw":
            if not hasattr(embedding, "flat_and_unified"):
                raise ValueError(f"CTRModel: mlp_input='raw' needs a mixed-dimension "
                                 f"(re-training) embedding, got {type(embedding).__name__}")
            want = sum(embedding.dims)
            if (not getattr(backbone, "raw_mlp_input", False)
                    or getattr(backbone, "mlp_input_dim", None) != want):
                raise ValueError(
                    f"CTRModel: mlp_input='raw' needs a backbone whose MLP reads the flattened "
                    f"embeddings, built with mlp_input_dim=sum(dims)={want}; got "
                    f"{type(backbone).__name__} with "
                    f"mlp_input_dim={getattr(backbone, 'mlp_input_dim', None)!r}"
                )
        self.mlp_input = mlp_input
        self.embedding = embedding
        self.backbone = backbone
        self.first_order = FirstOrder(self.vocab_sizes, name="first_order") if first_order else None

    def build(self, input_shape):
        # Sublayers deserialised from a config arrive already built.
        if not self.embedding.built:
            self.embedding.build(input_shape)
        if not self.backbone.built:
            if self.mlp_input == "raw" and not self.backbone.uses_field_embeddings:
                self.backbone.build((input_shape[0], self.backbone.mlp_input_dim))
            else:
                self.backbone.build(self.embedding.compute_output_shape(input_shape))
        if self.first_order is not None and not self.first_order.built:
            self.first_order.build(input_shape)

    def call(self, ids, training=None):
        if self.mlp_input == "raw":
            # [B, sum d_m], and [B, M, E] if the backbone also reads the unified embeddings
            flat, unified = self.embedding.flat_and_unified(
                ids, unified=self.backbone.uses_field_embeddings)
            if unified is not None:
                logits = self.backbone(unified, training=training, mlp_features=flat)
            else:
                logits = self.backbone(flat, training=training)
        else:
            logits = self.backbone(self.embedding(ids, training=training), training=training)
        if self.first_order is not None:
            logits = logits + self.first_order(ids)
        return logits

    def predict_proba(self, ids) -> tf.Tensor:
        """Click probabilities (inference mode)."""
        return tf.sigmoid(self(ids, training=False))

    @property
    def arch_variables(self) -> list:
        return list(getattr(self.embedding, "arch_variables", []))

    @property
    def model_variables(self) -> list:
        return _exclude(self.trainable_variables, self.arch_variables)

    @property
    def embedding_variables(self) -> list:
        tables = list(self.embedding.embedding_variables)
        if self.first_order is not None:
            tables += self.first_order.embedding_variables
        return tables

    @property
    def dense_variables(self) -> list:
        return _exclude(self.model_variables, self.embedding_variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            embedding=keras.saving.serialize_keras_object(self.embedding),
            backbone=keras.saving.serialize_keras_object(self.backbone),
            vocab_sizes=list(self.vocab_sizes),
            first_order=self.first_order is not None,
            mlp_input=self.mlp_input,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedding"] = keras.saving.deserialize_keras_object(config["embedding"])
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
