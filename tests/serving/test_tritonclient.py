"""The real server driven by tritonclient.http: JSON and binary tensors, batches, metadata."""

from __future__ import annotations

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

from .models import _W  # noqa: E402


@pytest.fixture(scope="module")
def client(server):  # type: ignore[no-untyped-def]
    c = httpclient.InferenceServerClient(
        server.url, concurrency=4, connection_timeout=30, network_timeout=30
    )
    yield c
    c.close()


def test_health_and_metadata(client) -> None:  # type: ignore[no-untyped-def]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lin")
    assert client.is_model_ready("two", "3")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "aiarch"
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(meta["extensions"])
    m = client.get_model_metadata("lin")
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    cfg = client.get_model_config("lin")
    assert cfg["max_batch_size"] == 64 and "dynamic_batching" in cfg
    assert client.get_model_config("two", "3")["input"][0]["data_type"] == "TYPE_INT32"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_batch_of_eight(client, binary: bool) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    res = client.infer("lin", [inp], outputs=[out], request_id="r8")
    y = res.as_numpy("y")
    assert y.shape == (8, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y, x @ _W, rtol=1e-5, atol=1e-5)
    assert res.get_response()["id"] == "r8"


def test_infer_default_outputs_binary(client) -> None:  # type: ignore[no-untyped-def]
    x = np.ones((1, 8), np.float32)
    inp = httpclient.InferInput("x", [1, 8], "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("lin", [inp])  # no outputs → binary_data_output: true
    np.testing.assert_allclose(res.as_numpy("y"), x @ _W, rtol=1e-5)


def test_two_inputs_mixed_encodings_and_output_subset(client) -> None:  # type: ignore[no-untyped-def]
    a = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    b = np.array([[0.5, 1.0], [2.0, -1.0]], np.float64)
    ia = httpclient.InferInput("a", [2, 3], "INT32")
    ia.set_data_from_numpy(a, binary_data=False)
    ib = httpclient.InferInput("b", [2, 2], "FP64")
    ib.set_data_from_numpy(b, binary_data=True)
    outs = [
        httpclient.InferRequestedOutput("double", binary_data=False),
        httpclient.InferRequestedOutput("sum", binary_data=True),
    ]
    res = client.infer("two", [ib, ia], outputs=outs, model_version="3")
    np.testing.assert_array_equal(res.as_numpy("sum"), [[6], [15]])
    np.testing.assert_array_equal(res.as_numpy("double"), b * 2)
    names = [o["name"] for o in res.get_response()["outputs"]]
    assert names == ["double", "sum"]


def test_compressed_request_and_response(client) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(2).standard_normal((64, 8)).astype(np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(
        "lin", [inp], request_compression_algorithm="gzip", response_compression_algorithm="deflate"
    )
    np.testing.assert_allclose(res.as_numpy("y"), x @ _W, rtol=1e-5, atol=1e-5)


def test_errors_raise_with_server_message(client) -> None:  # type: ignore[no-untyped-def]
    inp = httpclient.InferInput("x", [1, 7], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 7), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected shape") as e:
        client.infer("lin", [inp])
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        client.infer("nope", [inp])
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("lin", "9")
    assert e.value.status() == "404"
    bad = httpclient.InferInput("x", [1, 2], "FP32")
    bad.set_data_from_numpy(np.array([[-1, 0]], np.float32))
    with pytest.raises(InferenceServerException, match="negative input") as e:
        client.infer("failing", [bad])
    assert e.value.status() == "500"


def test_statistics(client) -> None:  # type: ignore[no-untyped-def]
    inp = httpclient.InferInput("x", [2, 8], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 8), np.float32))
    client.infer("lin", [inp])
    stats = client.get_inference_statistics("lin")["model_stats"]
    assert len(stats) == 1 and stats[0]["name"] == "lin"
    s = stats[0]["inference_stats"]
    assert s["success"]["count"] >= 1 and s["success"]["ns"] > 0
    assert s["queue"]["ns"] > 0 and s["compute_infer"]["ns"] > 0
    assert stats[0]["inference_count"] >= 2 and stats[0]["batch_stats"]
    every = client.get_inference_statistics()["model_stats"]
    assert {m["name"] for m in every} >= {"lin", "two", "slow"}


def test_cache_hit_is_answered(client) -> None:  # type: ignore[no-untyped-def]
    x = np.full((1, 8), 3.0, np.float32)
    inp = httpclient.InferInput("x", [1, 8], "FP32")
    inp.set_data_from_numpy(x)
    first = client.infer("cached", [inp]).as_numpy("y")
    second = client.infer("cached", [inp]).as_numpy("y")
    np.testing.assert_array_equal(first, second)
    s = client.get_inference_statistics("cached")["model_stats"][0]["inference_stats"]
    assert s["cache_hit"]["count"] >= 1


def test_repository_index_unload_load(client) -> None:  # type: ignore[no-untyped-def]
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["lin"]["state"] == "READY"
    client.unload_model("failing")
    assert not client.is_model_ready("failing")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["failing"]["state"] == "UNAVAILABLE"
    client.load_model("failing")
    assert client.is_model_ready("failing")
    with pytest.raises(InferenceServerException) as e:
        client.load_model("never_seen")
    assert e.value.status() == "404"
