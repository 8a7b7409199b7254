"""serving/: the client's REST and gRPC requests and responses against the SavedModel signature (no TF Serving
server can be installed here), the client end to end against stand-in REST and gRPC endpoints, and
models.config."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import contextlib
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from concurrent import futures

import grpc
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from gsmorph_tf.models.networks import build_gsmorph_unet
from gsmorph_tf.serve.export import export_saved_model

from conftest import ROOT

CLIENT_PATH = os.path.join(ROOT, "serving", "client.py")


def load_client():
    spec = importlib.util.spec_from_file_location("serving_client", CLIENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


client = load_client()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """The exported model's ``serving_default`` (raw input; flow head ~ N(0, 0.05): not the identity)."""
    network = build_gsmorph_unet((32, 32))
    head = network.get_layer("flow").kernel
    head.assign(np.random.default_rng(0).normal(0, 0.05, head.shape).astype(np.float32))
    path = export_saved_model(network, str(tmp_path_factory.mktemp("models") / "gsmorph"))
    return tf.saved_model.load(path).signatures["serving_default"]


def call(serve, moving, fixed):
    out = serve(moving=tf.constant(moving, tf.float32), fixed=tf.constant(fixed, tf.float32))
    return {name: value.numpy() for name, value in out.items()}


def test_request_json_round_trips_through_the_signature(serve):
    rng = np.random.default_rng(1)
    moving, fixed = (800 * rng.random((2, 3, 40, 36, 1))).astype(np.float32)  # raw: any size >= the crop
    request = json.loads(client.build_request(moving, fixed).decode("utf-8"))
    assert request["signature_name"] == "serving_default" and sorted(request["inputs"]) == ["fixed", "moving"]
    from_json = call(serve, np.array(request["inputs"]["moving"], np.float32),
                     np.array(request["inputs"]["fixed"], np.float32))
    direct = call(serve, moving, fixed)
    assert np.abs(direct["flow"]).max() > 1e-3
    for name in ("moved", "flow"):
        assert np.abs(from_json[name] - direct[name]).max() <= 1e-5
    # The answer as TF Serving's REST API writes it (columnar "outputs"), parsed by the client.
    answer = json.dumps({"outputs": {name: value.tolist() for name, value in direct.items()}})
    parsed = client.parse_response(answer.encode("utf-8"))
    assert sorted(parsed) == ["crop_center", "flow", "moved"]
    for name in ("moved", "flow", "crop_center"):
        assert parsed[name].dtype == np.float32 and parsed[name].shape == direct[name].shape
        assert np.abs(parsed[name] - direct[name]).max() <= 1e-6


def test_grpc_request_round_trips_through_the_signature(serve):
    rng = np.random.default_rng(5)
    moving, fixed = (800 * rng.random((2, 2, 40, 36, 1))).astype(np.float32)  # raw: any size >= the crop
    request = client.build_grpc_request(moving, fixed, "gsmorph_acdc", model_version=3)
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())  # as it travels
    assert request.model_spec.name == "gsmorph_acdc" and request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 3 and sorted(request.inputs) == ["fixed", "moving"]
    out = serve(**{name: tf.constant(tf.make_ndarray(value)) for name, value in request.inputs.items()})
    response = predict_pb2.PredictResponse()
    for name, value in out.items():  # what TF Serving answers: the signature's outputs as TensorProtos
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    parsed = client.parse_grpc_response(predict_pb2.PredictResponse.FromString(response.SerializeToString()))
    direct = call(serve, moving, fixed)
    assert sorted(parsed) == ["crop_center", "flow", "moved"] and np.abs(direct["flow"]).max() > 1e-3
    for name in ("moved", "flow", "crop_center"):
        assert parsed[name].dtype == direct[name].dtype and parsed[name].shape == direct[name].shape
        np.testing.assert_array_equal(parsed[name], direct[name])


class StandInPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers ``PredictionService/Predict`` for one model like TF Serving, with a SavedModel's signatures
    (``{name: function}``); records the size in bytes of every request it parsed and every answer it built."""

    def __init__(self, signatures, model_name="gsmorph_acdc"):
        self.signatures = signatures
        self.model_name = model_name
        self.received, self.sent = [], []

    def Predict(self, request, context):
        if request.model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(%s)"
                          % request.model_spec.name)
        self.received.append(request.ByteSize())
        signature = self.signatures[request.model_spec.signature_name or "serving_default"]
        out = signature(**{name: tf.constant(tf.make_ndarray(value)) for name, value in request.inputs.items()})
        response = predict_pb2.PredictResponse()
        for name, value in out.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        self.sent.append(response.ByteSize())
        return response


@contextlib.contextmanager
def grpc_server(service, options=None):
    """A local gRPC server running ``service``; yields its ``host:port``. ``options``: the server's channel
    arguments (None: gRPC's defaults, which refuse received messages over 4 MiB)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield "127.0.0.1:%d" % port
    finally:
        server.stop(None)


def test_client_grpc_end_to_end_on_a_raw_stack(serve, tmp_path, capsys):
    with grpc_server(StandInPredictionService({"serving_default": serve})) as address:
        rng = np.random.default_rng(6)
        moving, fixed = (900 * rng.random((2, 40, 36, 2))).astype(np.float32)  # raw [X, Y, Z] stacks
        np.save(tmp_path / "moving.npy", moving)
        np.save(tmp_path / "fixed.npy", fixed)
        arguments = ["--moving=%s" % (tmp_path / "moving.npy"), "--fixed=%s" % (tmp_path / "fixed.npy"),
                     "--protocol=grpc", "--server=%s" % address]
        status = client.main(arguments + ["--output_dir=%s" % (tmp_path / "out")])
        assert status == 0, capsys.readouterr().err
        direct = call(serve, np.moveaxis(moving, -1, 0)[..., None], np.moveaxis(fixed, -1, 0)[..., None])
        assert "window centre (row, col): %d, %d" % tuple(direct["crop_center"][0]) in capsys.readouterr().out
        np.testing.assert_allclose(np.load(tmp_path / "out" / "flow.npy"), np.moveaxis(direct["flow"], 0, -2),
                                   atol=1e-6)
        np.testing.assert_allclose(np.load(tmp_path / "out" / "moved.npy"),
                                   np.moveaxis(direct["moved"][..., 0], 0, -1), atol=1e-6)
        status = client.main(arguments + ["--output_dir=%s" % (tmp_path / "out2"), "--model_name=other"])
        assert status == 2 and "NOT_FOUND" in capsys.readouterr().err
        assert not os.path.exists(tmp_path / "out2")


#: A 3D volume whose moving + fixed pair (2 x 2.34 MiB float32) exceeds gRPC's 4 MiB default; the answer
#: (moved + flow) is 9.4 MiB.
LARGE_VOLUME = (80, 96, 80)
NO_LIMITS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


@pytest.fixture(scope="module")
def signatures_3d(tmp_path_factory):
    """The signatures of an untrained one-level 3D network (4 features, 1.4 k weights) exported at
    :data:`LARGE_VOLUME`, its flow head ~ N(0, 0.05) so the field is not the identity."""
    network = build_gsmorph_unet(LARGE_VOLUME, features=(4,))
    head = network.get_layer("flow").kernel
    head.assign(np.random.default_rng(0).normal(0, 0.05, head.shape).astype(np.float32))
    path = export_saved_model(network, str(tmp_path_factory.mktemp("models") / "gsmorph_oasis"))
    return tf.saved_model.load(path).signatures


def test_client_grpc_sends_a_3d_pair_over_the_4_mib_default(signatures_3d, tmp_path, capsys):
    moving, fixed = np.random.default_rng(7).random((2, *LARGE_VOLUME), np.float32)
    np.save(tmp_path / "moving.npy", moving)
    np.save(tmp_path / "fixed.npy", fixed)
    request = client.build_grpc_request(moving[None, ..., None], fixed[None, ..., None], "gsmorph_oasis")
    assert request.ByteSize() > client.GRPC_DEFAULT_MAX_RECEIVE == 4194304
    arguments = ["--moving=%s" % (tmp_path / "moving.npy"), "--fixed=%s" % (tmp_path / "fixed.npy"),
                 "--protocol=grpc", "--ndim=3", "--model_name=gsmorph_oasis"]
    service = StandInPredictionService(signatures_3d, "gsmorph_oasis")

    # A server on gRPC's defaults (as a proxy or another server keeping them would) refuses the request.
    with grpc_server(service) as address:
        status = client.main(arguments + ["--server=%s" % address, "--output_dir=%s" % (tmp_path / "refused")])
    err = capsys.readouterr().err
    assert status == 2 and "failed (RESOURCE_EXHAUSTED)" in err and "vs. 4194304" in err, err
    assert "the request is 4.7 MiB" in err and "grpc.max_receive_message_length" in err
    assert "client_max_body_size" in err and "per_connection_buffer_limit_bytes" in err
    assert service.received == [] and not os.path.exists(tmp_path / "refused")

    # Limits raised on the server (as tensorflow_model_server does): the pair travels and is answered.
    with grpc_server(service, NO_LIMITS) as address:
        status = client.main(arguments + ["--server=%s" % address, "--output_dir=%s" % (tmp_path / "out")])
        assert status == 0, capsys.readouterr().err
        # A channel on gRPC's defaults refuses the 9.4 MiB answer: why the client lifts its receive limit.
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "vs. 4194304" in refused.value.details()
    assert service.received == [request.ByteSize()] * 2 and min(service.sent) > 2 * 4194304
    direct = {name: value.numpy()[0] for name, value in signatures_3d["serving_default"](
        moving=tf.constant(moving[None, ..., None]), fixed=tf.constant(fixed[None, ..., None])).items()}
    assert np.abs(direct["flow"]).max() > 1e-3
    np.testing.assert_allclose(np.load(tmp_path / "out" / "flow.npy"), direct["flow"], atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "moved.npy"), direct["moved"][..., 0], atol=1e-6)


def test_size_refusals_say_where_to_raise_the_limit():
    proxy = client.grpc_failure_message("lb:443", "UNKNOWN", "Received http2 header with status: 413", 39321733)
    assert "the request is 37.5 MiB" in proxy and "client_max_body_size" in proxy
    unreachable = client.grpc_failure_message("host:8500", "UNAVAILABLE", "failed to connect", 100)
    assert unreachable.endswith("is tensorflow_model_server running with --port?")
    oom = client.grpc_failure_message("host:8500", "RESOURCE_EXHAUSTED", "OOM when allocating tensor", 100)
    assert oom == "gRPC predict at host:8500 failed (RESOURCE_EXHAUSTED): OOM when allocating tensor"


def test_error_answers_raise_with_the_servers_message():
    with pytest.raises(client.ClientError, match="Servable not found for request: Latest"):
        client.parse_response(b'{"error": "Servable not found for request: Latest(gsmorph)"}')
    with pytest.raises(client.ClientError, match="not JSON"):
        client.parse_response(b"<html>502 Bad Gateway</html>")


def test_stacks_become_batches_of_slices_and_back():
    stack = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    batch = client.to_batch(stack, ndim=2)
    assert batch.shape == (3, 4, 5, 1)
    np.testing.assert_array_equal(batch[2, ..., 0], stack[..., 2])
    np.testing.assert_array_equal(client.from_batch(batch, 2, stack.shape), stack)
    flow = np.stack([batch[..., 0], -batch[..., 0]], axis=-1)  # [Z, H, W, 2]
    np.testing.assert_array_equal(client.from_batch(flow, 2, stack.shape)[:, :, 2, 1], -stack[..., 2])
    assert client.to_batch(stack, ndim=3).shape == (1, 4, 5, 3, 1)
    assert client.predict_url("http://host:8501/", "gsmorph", 3) == \
        "http://host:8501/v1/models/gsmorph/versions/3:predict"


class StandInServing(http.server.BaseHTTPRequestHandler):
    """Answers ``POST /v1/models/gsmorph:predict`` like TF Serving's REST API, with the SavedModel."""
    serve = None

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/models/gsmorph_acdc:predict":
            status, answer = 404, {"error": "Servable not found for request: %s" % self.path}
        else:
            out = call(self.serve, *(np.array(request["inputs"][k], np.float32) for k in ("moving", "fixed")))
            status, answer = 200, {"outputs": {name: value.tolist() for name, value in out.items()}}
        body = json.dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(serve):
    StandInServing.serve = serve
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInServing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_client_end_to_end_writes_nifti_on_the_fixed_grid(serve, server, tmp_path, capsys):
    rng = np.random.default_rng(2)
    moving, fixed = rng.random((2, 32, 32, 3), np.float32)
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    affine[:3, 3] = (-20, 5, 30)
    for name, array in (("moving", moving), ("fixed", fixed)):
        nib.save(nib.Nifti1Image(array, affine), str(tmp_path / ("%s.nii.gz" % name)))
    status = client.main(["--moving=%s" % (tmp_path / "moving.nii.gz"), "--fixed=%s" % (tmp_path / "fixed.nii.gz"),
                          "--output_dir=%s" % (tmp_path / "out"), "--server=%s" % server])
    assert status == 0, capsys.readouterr().err
    moved = nib.load(str(tmp_path / "out" / "moved.nii.gz"))
    flow = nib.load(str(tmp_path / "out" / "flow.nii.gz"))
    assert moved.shape == (32, 32, 3) and flow.shape == (32, 32, 3, 2)
    np.testing.assert_allclose(flow.affine, affine)
    direct = call(serve, np.moveaxis(moving, -1, 0)[..., None], np.moveaxis(fixed, -1, 0)[..., None])
    np.testing.assert_allclose(moved.get_fdata()[..., 1], direct["moved"][1, ..., 0], atol=1e-6)
    np.testing.assert_allclose(flow.get_fdata()[:, :, 1, :], direct["flow"][1], atol=1e-6)
    assert sorted(os.listdir(tmp_path / "out")) == ["flow.nii.gz", "moved.nii.gz"]  # no temp file left

    status = client.main(["--moving=%s" % (tmp_path / "moving.nii.gz"), "--fixed=%s" % (tmp_path / "fixed.nii.gz"),
                          "--output_dir=%s" % (tmp_path / "out2"), "--server=%s" % server, "--model_name=other"])
    assert status == 2 and "error: server error: Servable not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out2")


def test_client_refuses_unscaled_images_naming_the_file(tmp_path, capsys):
    raw = np.full((32, 32, 3), 650.0, np.float32)
    np.save(tmp_path / "moving.npy", raw)
    np.save(tmp_path / "fixed.npy", raw / 1000)
    status = client.main(["--moving=%s" % (tmp_path / "moving.npy"), "--fixed=%s" % (tmp_path / "fixed.npy"),
                          "--output_dir=%s" % (tmp_path / "out"), "--server=http://127.0.0.1:9",
                          "--signature=register_crop"])
    err = capsys.readouterr().err
    assert status == 2 and "error: %s: intensities span [650, 650]" % (tmp_path / "moving.npy") in err
    assert not os.path.exists(tmp_path / "out")


def test_client_needs_no_tensorflow(tmp_path):
    script = textwrap.dedent("""
        import importlib.abc, runpy, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"tensorflow", "gsmorph_tf", "voxelmorph", "neurite", "tf_keras"}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        sys.argv = [sys.argv[1], "--help"]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    done = subprocess.run([sys.executable, "-c", script, CLIENT_PATH], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--moving" in done.stdout and "--server" in done.stdout


def test_models_config_is_a_model_server_config():
    with open(os.path.join(ROOT, "serving", "models.config"), encoding="utf-8") as f:
        text = f.read()
    assert "tensorflow_model_server --port=8500 --rest_api_port=8501 --model_config_file=serving/models.config" in text
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (config,) = parsed.model_config_list.config
    assert config.name == "gsmorph_acdc" and config.model_platform == "tensorflow"
    # TF Serving needs an absolute base path that ends in the model's folder (run_export.py's layout).
    assert os.path.isabs(config.base_path) and config.base_path.endswith("/gsmorph_acdc")
    assert re.search(r"/v1/models/gsmorph_acdc:predict", text)
