"""Client side of the exported signatures: checks raw rows and builds TF Serving gRPC/REST
requests from them, and parses the responses (protos only; no graph code).

Also the signatures' contract (names of the signatures, their inputs and outputs), which
`pipeline.serving_module` implements.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

# The signatures pipeline.export saves, and the names of their inputs and outputs.
SIGNATURES = ("serving_default", "serving_tf_example", "transform")
PROBABILITY = "probability"
LOGIT = "logit"
IDS = "ids"
TOKENS = "tokens"
EXAMPLES = "examples"


class RequestError(ValueError):
    """A request that does not match the model's inputs; the message names the field."""


def _check_column(name: str, values: Any) -> None:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise RequestError(f"field {name}: expected a list of strings (one per row), got "
                           f"{type(values).__name__}")
    shape = getattr(values, "shape", None)
    if shape is not None and len(shape) != 1:
        raise RequestError(f"field {name}: expected a 1-D list, got shape {tuple(shape)}")
    for i, v in enumerate(values):
        if not isinstance(v, (str, bytes)):
            raise RequestError(f"field {name}: row {i} is a {type(v).__name__} ({v!r}); "
                               f"every value must be a string (numbers as their raw text)")


def check_request(fields: Mapping[str, Any], field_names: Sequence[str]) -> int:
    """Checks a columnar request {field: [raw strings]} against the model's fields; returns the
    batch size. Raises RequestError naming the offending field."""
    if not isinstance(fields, Mapping):
        raise RequestError(f"request must be a mapping of field name -> list of strings, got "
                           f"{type(fields).__name__}")
    expected = list(field_names)
    unknown = sorted(set(fields) - set(expected))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; the model's fields are {expected}")
    missing = [n for n in expected if n not in fields]
    if missing:
        raise RequestError(f"missing field(s) {missing} (send an empty string for a missing "
                           f"value)")
    size = None
    for name in expected:
        values = fields[name]
        _check_column(name, values)
        if size is None:
            size = len(values)
        elif len(values) != size:
            raise RequestError(f"field {name} has {len(values)} values but field {expected[0]} "
                               f"has {size}")
    return int(size or 0)


def rows_to_columns(rows: Sequence[Mapping[str, Any]], field_names: Sequence[str]
                    ) -> dict[str, list[str]]:
    """Row dicts {field: raw} -> columns; an absent key or None is a missing value ("")."""
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - set(field_names))
        if unknown:
            raise RequestError(f"row {i}: unknown field(s) {unknown}")
    return {n: ["" if row.get(n) is None else row[n] for row in rows] for n in field_names}


def _tensor_proto(values: Sequence[str | bytes]):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]))
    proto.string_val.extend(v if isinstance(v, bytes) else v.encode("utf-8") for v in values)
    return proto


def build_predict_request(model_name: str, rows: Sequence[Mapping[str, Any]],
                          field_names: Sequence[str], signature_name: str = "serving_default",
                          version: int | None = None):
    """A tensorflow_serving PredictRequest for raw rows (dicts field -> raw string)."""
    from tensorflow_serving.apis import predict_pb2

    columns = rows_to_columns(rows, field_names)
    check_request(columns, field_names)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name in field_names:
        request.inputs[name].CopyFrom(_tensor_proto(columns[name]))
    return request


def build_example_request(model_name: str, rows: Sequence[Mapping[str, Any]],
                          field_names: Sequence[str]):
    """A PredictRequest for the `serving_tf_example` signature (absent/None values are left out
    of the tf.Example, which the model reads as missing)."""
    from tensorflow.core.example import example_pb2, feature_pb2
    from tensorflow_serving.apis import predict_pb2

    rows_to_columns(rows, field_names)  # field name check
    serialized = []
    for row in rows:
        feats = {n: feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
                     value=[v if isinstance(v, bytes) else str(v).encode("utf-8")]))
                 for n, v in row.items() if v is not None}
        serialized.append(example_pb2.Example(
            features=feature_pb2.Features(feature=feats)).SerializeToString())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_tf_example"
    request.inputs[EXAMPLES].CopyFrom(_tensor_proto(serialized))
    return request


def rest_payload(rows: Sequence[Mapping[str, Any]], field_names: Sequence[str],
                 signature_name: str = "serving_default") -> dict:
    """The JSON body of a TF Serving REST `:predict` call (columnar "inputs" format)."""
    columns = rows_to_columns(rows, field_names)
    check_request(columns, field_names)
    return {"signature_name": signature_name, "inputs": columns}


def parse_predict_response(response) -> dict[str, list[float]]:
    """A PredictResponse -> {"probability": [...], "logit": [...]} (float32 outputs, either in
    `float_val` as TF Serving writes them or packed in `tensor_content`)."""
    import numpy as np

    out = {}
    for key in (PROBABILITY, LOGIT):
        if key not in response.outputs:
            raise RequestError(f"response has no output {key!r} "
                               f"(outputs: {sorted(response.outputs)})")
        tensor = response.outputs[key]
        if tensor.tensor_content:
            out[key] = np.frombuffer(tensor.tensor_content, dtype="<f4").astype(float).tolist()
        else:
            out[key] = [float(v) for v in tensor.float_val]
    return out
