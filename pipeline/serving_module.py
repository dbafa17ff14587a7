"""The tf.Module `pipeline.export` saves: raw string fields -> the token rules -> vocabulary ids
-> the Keras model's logit and probability, as the signatures `serving_default`,
`serving_tf_example` and `transform`.

The vocabularies are `tf.saved_model.Asset`s loaded into StaticHashTables tracked by the module,
so everything the preprocessing job does to a raw value runs inside the served graph.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from configs.features import OOV_ID
from pipeline.serving_client import EXAMPLES, IDS, LOGIT, PROBABILITY, SIGNATURES, TOKENS
from pipeline.token_ops import (
    MIN_EXACT_BUCKETS,
    UNSEEN_TOKEN,
    log_bucket_thresholds,
    tf_categorical_token,
    tf_numeric_token,
)


def _vocab_table(name: str, asset):
    """Token -> line number of the vocabulary file; -1 for an unseen token."""
    return tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            asset, tf.string, 0, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, delimiter="\t"),
        default_value=-1, name=f"vocab_{name}")


def _huge_table(name: str, huge: dict[int, str]):
    """Bit pattern of floor(v) for v < -2**63 -> its token (see token_ops.huge_negative_tokens)."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(huge), tf.int64), tf.constant(list(huge.values()))),
        default_value=UNSEEN_TOKEN, name=f"huge_{name}")


class ServingModule(tf.Module):
    """Raw string fields -> vocabulary ids -> the Keras model's logit and probability.

    `fields`: [(name, kind, vocab_file or None, huge-negative tokens dict)] in model order;
    `extra_assets`: more files to ship in assets/ (schema.json, model_spec.json)."""

    def __init__(self, model, fields, extra_assets: Sequence[str] = (),
                 max_bucket: int = MIN_EXACT_BUCKETS):
        super().__init__(name="autodim_serving")
        self._thresholds = tf.constant(log_bucket_thresholds(max_bucket), tf.float64)
        # The underlying tf.Variables are tracked explicitly; the Keras model object is kept
        # out of the SavedModel's object graph. Tracking the keras.Variable wrappers instead
        # breaks TF1-style loading (TF Serving, saved_model_cli run): their export makes a
        # second tf.Variable, which the checkpoint restores, while the signatures read the
        # original one ("Resource .../embedding/embeddings does not exist").
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self._call_model = lambda ids: model(ids, training=False)
        self.field_names = [f[0] for f in fields]
        self._kinds = [f[1] for f in fields]
        self.vocab_assets, self.tables, self.huge_tables = [], [], []
        for name, _, vocab_file, huge in fields:
            asset = tf.saved_model.Asset(vocab_file) if vocab_file else None
            self.vocab_assets.append(asset)
            self.tables.append(_vocab_table(name, asset) if asset is not None else None)
            self.huge_tables.append(_huge_table(name, huge) if huge else None)
        self.extra_assets = [tf.saved_model.Asset(p) for p in extra_assets]
        # The input signature names the model's fields, known only per instance, so the
        # endpoints are wrapped here rather than decorated at class level.
        spec = {n: tf.TensorSpec([None], tf.string, name=n) for n in self.field_names}
        self.serving_default = tf.function(self._predict, input_signature=[spec])
        self.transform = tf.function(self._transform, input_signature=[spec])
        self.serving_tf_example = tf.function(
            self._predict_examples,
            input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES)])

    def signature_functions(self) -> dict:
        """{signature name: tf.function}, for tf.saved_model.save(signatures=...)."""
        return {name: getattr(self, name) for name in SIGNATURES}

    def _check(self, fields):
        first = self.field_names[0]
        n = tf.shape(fields[first])[0]
        checks = [tf.debugging.assert_equal(
            tf.shape(fields[name])[0], n,
            message=f"field {name} has a different number of values than field {first}")
            for name in self.field_names[1:]]
        return checks

    def _tokens_ids(self, fields):
        with tf.control_dependencies(self._check(fields)):
            tokens, ids = [], []
            for i, name in enumerate(self.field_names):
                raw = tf.identity(fields[name])
                if self._kinds[i] == "numeric":
                    token = tf_numeric_token(raw, self.huge_tables[i], self._thresholds)
                else:
                    token = tf_categorical_token(raw)
                table = self.tables[i]
                if table is None:  # empty vocabulary: everything is OOV
                    field_ids = tf.fill(tf.shape(token), tf.constant(OOV_ID, tf.int64))
                else:
                    field_ids = table.lookup(token) + 1  # line i -> id i + 1; -1 -> 0
                tokens.append(token)
                ids.append(field_ids)
        return tf.stack(tokens, axis=1), tf.stack(ids, axis=1)

    def _transform(self, fields):
        tokens, ids = self._tokens_ids(fields)
        return {IDS: ids, TOKENS: tokens}

    def _score(self, ids):
        logit = tf.reshape(self._call_model(tf.cast(ids, tf.int32)), [-1])
        logit = tf.cast(logit, tf.float32)
        return {PROBABILITY: tf.sigmoid(logit), LOGIT: logit}

    def _predict(self, fields):
        return self._score(self._tokens_ids(fields)[1])

    def _predict_examples(self, examples):
        spec = {n: tf.io.RaggedFeature(tf.string) for n in self.field_names}
        parsed = tf.io.parse_example(examples, spec)
        fields, checks = {}, []
        for name in self.field_names:
            values = parsed[name]
            checks.append(tf.debugging.assert_less_equal(
                tf.reduce_max(tf.concat([tf.cast(values.row_lengths(), tf.int64), [0]], 0)),
                tf.constant(1, tf.int64),
                message=f"feature {name}: a tf.Example has more than one value"))
            fields[name] = values.to_tensor(default_value="", shape=[None, 1])[:, 0]
        with tf.control_dependencies(checks):
            fields = {k: tf.identity(v) for k, v in fields.items()}
        return self.serving_default(fields)  # one function body in the graph, not two


def make_serving_module(model, fields, extra_assets: Sequence[str] = (),
                        max_bucket: int = 0) -> ServingModule:
    """`max_bucket`: the largest "L<k>" bucket in the numeric vocabularies; thresholds are built
    up to max(max_bucket + 1, MIN_EXACT_BUCKETS)."""
    return ServingModule(model, fields, extra_assets, max(max_bucket + 1, MIN_EXACT_BUCKETS))
