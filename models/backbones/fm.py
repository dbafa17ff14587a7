"""Factorization Machine second-order term (Rendle 2010)."""
from __future__ import annotations

import keras
import tensorflow as tf

from models.backbones._shape import check_embedding_shape


def fm_interaction(embeddings: tf.Tensor) -> tf.Tensor:
    """[B, M, D] -> [B, D]: 0.5 * ((sum_m e_m)^2 - sum_m e_m^2), i.e. sum_{i<j} e_i * e_j."""
    square_of_sum = tf.square(tf.reduce_sum(embeddings, axis=1))
    sum_of_square = tf.reduce_sum(tf.square(embeddings), axis=1)
    return 0.5 * (square_of_sum - sum_of_square)


@keras.saving.register_keras_serializable(package="autodim")
class FM(keras.layers.Layer):
    """[B, M, D] -> [B]: sum over field pairs i < j of <e_i, e_j>. No weights."""

    def build(self, input_shape):
        check_embedding_shape("FM", input_shape)

    def call(self, embeddings, training=None):
        return tf.reduce_sum(fm_interaction(embeddings), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)
