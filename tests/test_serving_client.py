"""The TF Serving client helpers of pipeline.serving_client, run against the loaded SavedModel (TF
Serving itself cannot run here: the request objects are executed with tf.make_ndarray)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline import serving_client
from tests.serving_fixtures import field_names, test_split_rows


@pytest.fixture(scope="module")
def setup(served):
    raw, _, _, version = served
    rows = [dict(zip(field_names(), r[1], strict=True)) for r in test_split_rows(raw)[:6]]
    rows[1] = {k: v for k, v in rows[1].items() if v != ""}  # absent keys = missing values
    rows[2]["I3"] = None
    return tf.saved_model.load(str(version)), rows


def _run(loaded, request):
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    return loaded.signatures[request.model_spec.signature_name](**inputs)


def _direct(loaded, rows):
    cols = {n: tf.constant(["" if r.get(n) is None else r[n] for r in rows]) for n in field_names()}
    return loaded.signatures["serving_default"](**cols)["probability"].numpy()


def test_predict_request_runs_and_matches(setup):
    loaded, rows = setup
    request = serving_client.build_predict_request("criteo", rows, field_names(), version=3)
    assert request.model_spec.name == "criteo" and request.model_spec.version.value == 3
    assert request.inputs["C1"].tensor_shape.dim[0].size == len(rows)
    out = _run(loaded, request)
    np.testing.assert_allclose(out["probability"].numpy(), _direct(loaded, rows), atol=1e-7)
    # A PredictResponse as TF Serving would return it parses back to the same numbers.
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    for key in ("probability", "logit"):
        response.outputs[key].CopyFrom(tf.make_tensor_proto(out[key].numpy()))
    parsed = serving_client.parse_predict_response(response)
    np.testing.assert_allclose(parsed["probability"], out["probability"].numpy())
    response.outputs["logit"].Clear()
    response.outputs["logit"].dtype = 1  # DT_FLOAT, values in float_val
    response.outputs["logit"].float_val.extend([0.5, -1.0])
    assert serving_client.parse_predict_response(response)["logit"] == [0.5, -1.0]
    with pytest.raises(serving_client.RequestError, match="no output 'logit'"):
        del response.outputs["logit"]
        serving_client.parse_predict_response(response)


def test_example_request_runs_and_matches(setup):
    loaded, rows = setup
    request = serving_client.build_example_request("criteo", rows, field_names())
    assert request.model_spec.signature_name == "serving_tf_example"
    out = _run(loaded, request)
    np.testing.assert_allclose(out["probability"].numpy(), _direct(loaded, rows), atol=1e-7)


def test_rest_payload_is_columnar_json(setup):
    loaded, rows = setup
    body = json.loads(json.dumps(serving_client.rest_payload(rows, field_names())))
    assert body["signature_name"] == "serving_default"
    assert sorted(body["inputs"]) == sorted(field_names())
    assert body["inputs"]["I3"][2] == ""
    out = loaded.signatures["serving_default"](
        **{k: tf.constant(v) for k, v in body["inputs"].items()})
    np.testing.assert_allclose(out["probability"].numpy(), _direct(loaded, rows), atol=1e-7)


def test_check_request_names_the_field():
    names = field_names()
    good = {n: ["1", "2"] for n in names}
    assert serving_client.check_request(good, names) == 2
    cases = [
        (dict(good, C99=["x", "y"]), r"unknown field\(s\) \['C99'\]"),
        ({k: v for k, v in good.items() if k != "I7"}, r"missing field\(s\) \['I7'\]"),
        (dict(good, C4=["x"]), "field C4 has 1 values but field I1 has 2"),
        (dict(good, I2=[1, 2]), "field I2: row 0 is a int"),
        (dict(good, C1="abc"), "field C1: expected a list"),
        (dict(good, C2=np.array([["a"], ["b"]])), r"field C2: expected a 1-D list"),
    ]
    for request, message in cases:
        with pytest.raises(serving_client.RequestError, match=message):
            serving_client.check_request(request, names)
    with pytest.raises(serving_client.RequestError, match=r"row 0: unknown field\(s\) \['nope'\]"):
        serving_client.build_predict_request("m", [{"nope": "1"}], names)


def test_documented_import_path_reexports_the_client():
    """README: `from pipeline.serving import build_predict_request, parse_predict_response`."""
    from pipeline import serving as facade

    for name in ("build_predict_request", "build_example_request", "parse_predict_response",
                 "rest_payload", "check_request", "RequestError"):
        assert getattr(facade, name) is getattr(serving_client, name)
    from pipeline import serving_module, token_ops

    assert facade.make_serving_module is serving_module.make_serving_module
    assert facade.tf_numeric_token is token_ops.tf_numeric_token
