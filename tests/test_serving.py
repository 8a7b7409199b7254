"""serving/: the client's REST and gRPC requests and responses against the SavedModel signature (no TF Serving
server can be installed here), the client end to end against stand-in REST and gRPC endpoints, and
models.config."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

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

from gsmorph_tf.export import export_saved_model
from gsmorph_tf.networks import build_gsmorph_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    """Answers ``PredictionService/Predict`` for model ``gsmorph_acdc`` like TF Serving, with the SavedModel."""

    def __init__(self, serve):
        self.serve = serve

    def Predict(self, request, context):
        if request.model_spec.name != "gsmorph_acdc":
            context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(%s)"
                          % request.model_spec.name)
        out = self.serve(**{name: tf.constant(tf.make_ndarray(value)) for name, value in request.inputs.items()})
        response = predict_pb2.PredictResponse()
        for name, value in out.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


def test_client_grpc_end_to_end_on_a_raw_stack(serve, tmp_path, capsys):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(StandInPredictionService(serve), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        rng = np.random.default_rng(6)
        moving, fixed = (900 * rng.random((2, 40, 36, 2))).astype(np.float32)  # raw [X, Y, Z] stacks
        np.save(tmp_path / "moving.npy", moving)
        np.save(tmp_path / "fixed.npy", fixed)
        arguments = ["--moving=%s" % (tmp_path / "moving.npy"), "--fixed=%s" % (tmp_path / "fixed.npy"),
                     "--protocol=grpc", "--server=127.0.0.1:%d" % port]
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
    finally:
        server.stop(None)


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
