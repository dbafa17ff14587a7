"""The serving API under its documented name (`from pipeline.serving import
build_predict_request`, as the README shows): re-exports the three modules that implement it.

- `pipeline.serving_client`: request building/checking and response parsing for TF Serving
  (imported at once; needs no TensorFlow for REST bodies);
- `pipeline.token_ops`: the preprocessing token rules as TF graph ops;
- `pipeline.serving_module`: the tf.Module `pipeline.export` saves.

The last two import TensorFlow, so their names are resolved on first use (PEP 562).
"""
from __future__ import annotations

import importlib

from pipeline.serving_client import (
    EXAMPLES,
    IDS,
    LOGIT,
    PROBABILITY,
    SIGNATURES,
    TOKENS,
    RequestError,
    build_example_request,
    build_predict_request,
    check_request,
    parse_predict_response,
    rest_payload,
    rows_to_columns,
)

_LAZY = {
    "pipeline.token_ops": ("INT64_MIN_FLOAT", "MIN_EXACT_BUCKETS", "UNSEEN_TOKEN", "WHITESPACE",
                           "huge_negative_tokens", "log_bucket_thresholds", "max_log_bucket",
                           "synthetic_numeric_raw", "tf_categorical_token", "tf_numeric_token",
                           "tf_strip"),
    "pipeline.serving_module": ("ServingModule", "make_serving_module"),
}
_LAZY_OWNER = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["EXAMPLES", "IDS", "LOGIT", "PROBABILITY", "SIGNATURES", "TOKENS", "RequestError",
           "build_example_request", "build_predict_request", "check_request",
           "parse_predict_response", "rest_payload", "rows_to_columns", *_LAZY_OWNER]


def __getattr__(name: str):
    if name not in _LAZY_OWNER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY_OWNER[name]), name)
