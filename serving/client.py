"""Send a moving/fixed pair to a TF Serving registration model (REST or gRPC) and write what it returns.

    python serving/client.py --moving=ES.nii.gz --fixed=ED.nii.gz --output_dir=out \\
        [--protocol=rest|grpc] [--server=localhost:8501 | localhost:8500] [--model_name=gsmorph_acdc] \\
        [--model_version=N] [--signature=serving_default|register_crop] [--ndim=2]

REST needs only the Python standard library, numpy and nibabel (no TensorFlow): it can run anywhere that
reaches the server. The request is TF Serving's columnar REST form::

    POST http://<server>/v1/models/<model_name>[/versions/<N>]:predict
    {"signature_name": "serving_default", "inputs": {"moving": [...], "fixed": [...]}}

and the answer ``{"outputs": {"moved": [...], "flow": [...], ...}}`` (signatures: ``gsmorph_tf/serve/export.py``).
JSON spells every voxel as text; for large (3D) inputs use ``--protocol=grpc``: a
``tensorflow_serving.apis.predict_pb2.PredictRequest`` with binary tensors, sent to
``PredictionService/Predict`` (needs ``tensorflow-serving-api``, hence TensorFlow, and ``grpcio``). The
gRPC channel has no message-size limit (gRPC's default refuses received messages over 4 MiB; a 160x192x160
float32 pair is 37.5 MiB, its answer 75 MiB); a proxy in between may need its limit raised (serving/README.md).

Signatures (``--signature``):

- ``serving_default`` (2D models): **raw** images, scanner intensities, any in-plane size at least the model's
  crop. The model scales, finds the heart by the motion between the two images, crops, registers and answers
  on the input's grid (identity outside its window). One request = one subject.
- ``register_crop``: images already preprocessed as in training (cut to the model's input size, scaled to
  [0, 1] with one range for the pair: minimum of both -> 0, their 99.5th percentile -> 1, clipped);
  ``run_register.py`` does this where TensorFlow is installed. 3D models' ``serving_default`` takes the same.

Layouts: 2D model (``--ndim=2``): ``[X, Y]`` (one slice) or ``[X, Y, Z]`` (a stack, sent as a batch of Z
slices); 3D model (``--ndim=3``): ``[X, Y, Z]``. Inputs are NIfTI or ``.npy``.

Outputs in ``--output_dir``, in the input's layout: ``moved`` (same shape, [0, 1] units) and ``flow`` (the
input shape plus a last axis of ``ndim`` components: displacement in voxels along the model's array axes,
``moved(x) = moving(x + flow(x))``); ``.nii.gz`` with the fixed image's affine and header when the fixed
image is NIfTI, else ``.npy``. The window centre that ``serving_default`` chose is printed.
"""
import argparse
import json
import os
import sys
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError


class ClientError(ValueError):
    """A bad input file or a failed request; the message names the file or the server's answer."""


def read_array(path):
    """``(array float32, NIfTI image or None)`` from a ``.npy`` or NIfTI file."""
    try:
        if path.endswith(".npy"):
            return np.load(path).astype(np.float32), None
        image = nib.load(path)
        return np.asanyarray(image.dataobj).astype(np.float32), image
    except (OSError, ValueError, EOFError, ImageFileError) as error:
        raise ClientError("%s: cannot read (%s: %s); expected a .npy or NIfTI file"
                          % (path, type(error).__name__, error)) from error


#: Signatures the client sends to, and whether they take raw scanner intensities.
RAW_INPUT = {"serving_default": True, "register_crop": False}


def check_model_input(array, ndim, path, raw=False):
    """Raise ClientError naming ``path`` unless ``array`` fits an ``ndim``-D model, is finite and, unless
    ``raw`` (the 2D ``serving_default``), lies in [0, 1]."""
    allowed = (2, 3) if ndim == 2 else (3,)
    if array.ndim not in allowed:
        raise ClientError("%s: shape %s; a %dD model takes %s" % (
            path, array.shape, ndim, "[X, Y] or [X, Y, Z]" if ndim == 2 else "[X, Y, Z]"))
    if not np.all(np.isfinite(array)):
        raise ClientError("%s: holds NaN or infinite values" % path)
    if not raw and (array.min() < 0 or array.max() > 1):
        raise ClientError("%s: intensities span [%g, %g]; register_crop expects values in [0, 1] (scale the "
                          "pair jointly: minimum -> 0, 99.5th percentile -> 1, clipped), or send raw images to "
                          "serving_default" % (path, array.min(), array.max()))


def to_batch(volume, ndim):
    """Image -> model batch ``[B, *vol, 1]``: ``[H, W]`` -> ``[1, H, W, 1]``, ``[H, W, Z]`` -> ``[Z, H, W, 1]``
    (2D model), ``[H, W, D]`` -> ``[1, H, W, D, 1]`` (3D model)."""
    volume = np.asarray(volume, np.float32)
    if ndim == 2 and volume.ndim == 3:
        volume = np.moveaxis(volume, -1, 0)
    else:
        volume = volume[np.newaxis]
    return volume[..., np.newaxis]


def from_batch(batch, ndim, image_shape):
    """Inverse of :func:`to_batch` for an output ``[B, *vol, C]``: the image layout plus a last axis of C
    channels, dropped when C is 1 (``moved``) and kept otherwise (``flow``)."""
    batch = np.asarray(batch, np.float32)
    if ndim == 2 and len(image_shape) == 3:
        out = np.moveaxis(batch, 0, -2)  # [Z, H, W, C] -> [H, W, Z, C]
    else:
        out = batch[0]
    return out[..., 0] if out.shape[-1] == 1 else out


def build_request(moving, fixed, signature_name="serving_default"):
    """The predict request body (UTF-8 JSON bytes) for batches ``moving`` and ``fixed`` ``[B, *vol, 1]``."""
    body = {"signature_name": signature_name,
            "inputs": {"moving": np.asarray(moving, np.float32).tolist(),
                       "fixed": np.asarray(fixed, np.float32).tolist()}}
    return json.dumps(body).encode("utf-8")


def build_grpc_request(moving, fixed, model_name, signature_name="serving_default", model_version=None):
    """The gRPC ``PredictRequest`` for batches ``moving`` and ``fixed`` ``[B, *vol, 1]`` (binary float32 tensors).

    Needs ``tensorflow-serving-api`` (and so TensorFlow), imported here only.

    Raises:
        ClientError: tensorflow-serving-api is not installed.
    """
    try:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
    except ImportError as error:
        raise ClientError("--protocol=grpc needs tensorflow-serving-api (%s): pip install "
                          "\"tensorflow-serving-api==2.21.*\", or use --protocol=rest" % error) from error

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if model_version is not None:
        request.model_spec.version.value = model_version
    for name, value in (("moving", moving), ("fixed", fixed)):
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))
    return request


def parse_grpc_response(response):
    """``{output name: array}`` from a ``PredictResponse`` (float outputs as float32)."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


#: gRPC's default limit on a **received** message, in bytes (``GRPC_DEFAULT_MAX_RECV_MESSAGE_LENGTH``, 4 MiB);
#: sent messages have none by default. A 3D pair at 80x96x80 float32 is 4.7 MiB, at 160x192x160 37.5 MiB.
GRPC_DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024

#: Channel options of the client: no limit (-1) on what it sends and receives. The answer to a 3D pair
#: (``moved`` and ``flow``: 4 values a voxel against the request's 2) is twice the request's size, so the
#: receive limit matters most; sending is unlimited by gRPC's default already and is set here for clarity.
GRPC_CHANNEL_OPTIONS = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))


def grpc_failure_message(server, code_name, details, request_bytes):
    """The ClientError message for a failed ``Predict`` call: gRPC's status name and details, and what to do.

    A message-size refusal (``Received message larger than max (N vs. LIMIT)``, or HTTP 413 from a proxy, which
    gRPC reports as ``Received http2 header with status: 413``) names the request's size, the 4 MiB default
    and where to raise it; this client itself sends and receives without limit (:data:`GRPC_CHANNEL_OPTIONS`)
    and ``tensorflow_model_server`` accepts messages up to 2 GiB, so the limit is a proxy's or another
    server's. ``request_bytes``: the serialised request's size.
    """
    details = details or ""
    message = "gRPC predict at %s failed (%s): %s" % (server, code_name, details)
    if "larger than max" in details or "status: 413" in details:
        return message + (
            "; the request is %.1f MiB (its answer larger), gRPC refuses received messages over 4 MiB (%d bytes) "
            "by default and proxies limit request bodies. This client sends and receives without limit and "
            "tensorflow_model_server accepts up to 2 GiB, so a proxy or another gRPC server in between refused "
            "the message: raise its limit (a gRPC server: options "
            "grpc.max_receive_message_length and grpc.max_send_message_length; nginx: client_max_body_size; "
            "envoy: per_connection_buffer_limit_bytes), see serving/README.md, 'Large 3D volumes'"
            % (request_bytes / 2 ** 20, GRPC_DEFAULT_MAX_RECEIVE))
    if code_name == "UNAVAILABLE":
        return message + "; is tensorflow_model_server running with --port?"
    return message


def predict_grpc(server, request, timeout=600):
    """Send ``request`` to ``PredictionService/Predict`` at ``server`` (``host:port``) on a channel without
    message-size limits (:data:`GRPC_CHANNEL_OPTIONS`); returns the response.

    Raises:
        ClientError: the call fails (server unreachable, unknown model, bad input, a message too large for a
            server or proxy on the way), with gRPC's message (:func:`grpc_failure_message`).
    """
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(server, options=list(GRPC_CHANNEL_OPTIONS)) as channel:
        try:
            return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            raise ClientError(grpc_failure_message(server, error.code().name, error.details(),
                                                   request.ByteSize())) from error


def parse_response(body):
    """``{output name: float32 array}`` from a TF Serving columnar predict answer ``{"outputs": {...}}``.

    Raises:
        ClientError: the answer is an error (``{"error": ...}``) or not a named-outputs answer.
    """
    try:
        answer = json.loads(body)
    except ValueError as error:
        raise ClientError("server answer is not JSON (%s): %r" % (error, body[:200])) from error
    if not isinstance(answer, dict) or "error" in answer or not isinstance(answer.get("outputs"), dict):
        raise ClientError("server error: %s" % (answer.get("error", answer) if isinstance(answer, dict) else answer))
    return {name: np.asarray(value, np.float32) for name, value in answer["outputs"].items()}


def predict_url(server, model_name, model_version=None):
    """``<server>/v1/models/<model_name>[/versions/<N>]:predict`` (``http://`` added to a bare ``host:port``)."""
    version = "" if model_version is None else "/versions/%d" % model_version
    server = server if "://" in server else "http://" + server
    return "%s/v1/models/%s%s:predict" % (server.rstrip("/"), model_name, version)


def post(url, body, timeout=600):
    """POST ``body`` (JSON bytes) to ``url``; returns the answer's bytes, also for an HTTP error status
    (TF Serving explains errors in a JSON body). Raises ClientError if the server cannot be reached."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.read()
    except urllib.error.HTTPError as error:
        return error.read()
    except urllib.error.URLError as error:
        raise ClientError("cannot reach %s (%s); is tensorflow_model_server running?" % (url, error.reason)) from error


def write_array(array, path_stem, like):
    """Write ``array`` as ``<path_stem>.nii.gz`` with the affine and header of NIfTI image ``like``, or as
    ``<path_stem>.npy`` when ``like`` is None (temp file, then rename). Returns the path."""
    if like is None:
        path, temp = path_stem + ".npy", path_stem + ".tmp-%d.npy" % os.getpid()
        np.save(temp, array)
    else:
        path, temp = path_stem + ".nii.gz", path_stem + ".tmp-%d.nii.gz" % os.getpid()
        image = nib.Nifti1Image(array, like.affine, header=like.header.copy())
        image.set_data_dtype(np.float32)
        nib.save(image, temp)
    os.replace(temp, path)
    return path


def register(moving_path, fixed_path, output_dir, server, model_name, model_version=None, ndim=2,
             signature="serving_default", protocol="rest"):
    """Read, check and send one pair; write ``moved`` and ``flow`` to ``output_dir``.

    Returns:
        ``(paths of the written files, the window centre [row, col] serving_default chose or None)``.
    """
    raw = RAW_INPUT[signature] and ndim == 2
    moving, _ = read_array(moving_path)
    fixed, fixed_image = read_array(fixed_path)
    check_model_input(moving, ndim, moving_path, raw)
    check_model_input(fixed, ndim, fixed_path, raw)
    if moving.shape != fixed.shape:
        raise ClientError("%s: shape %s differs from %s %s" % (moving_path, moving.shape, fixed_path, fixed.shape))
    if protocol == "grpc":
        request = build_grpc_request(to_batch(moving, ndim), to_batch(fixed, ndim), model_name, signature,
                                     model_version)
        outputs = parse_grpc_response(predict_grpc(server, request))
    else:
        body = build_request(to_batch(moving, ndim), to_batch(fixed, ndim), signature)
        outputs = parse_response(post(predict_url(server, model_name, model_version), body))
    os.makedirs(output_dir, exist_ok=True)
    paths = [write_array(from_batch(outputs[name], ndim, fixed.shape), os.path.join(output_dir, name), fixed_image)
             for name in ("moved", "flow")]
    center = outputs.get("crop_center")
    return paths, None if center is None else [int(c) for c in np.asarray(center)[0]]


DEFAULT_SERVERS = {"rest": "localhost:8501", "grpc": "localhost:8500"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moving", required=True, help="moving image (.nii/.nii.gz/.npy)")
    parser.add_argument("--fixed", required=True, help="fixed image, same shape")
    parser.add_argument("--output_dir", required=True, help="where moved and flow are written")
    parser.add_argument("--protocol", choices=sorted(DEFAULT_SERVERS), default="rest",
                        help="rest (JSON, no TensorFlow needed) or grpc (binary tensors: large 3D inputs)")
    parser.add_argument("--server", default=None, help="TF Serving address host:port (default localhost:8501 for "
                        "REST, localhost:8500 for gRPC)")
    parser.add_argument("--model_name", default="gsmorph_acdc", help="model name in models.config")
    parser.add_argument("--model_version", type=int, default=None, help="version to ask for (default: served)")
    parser.add_argument("--signature", choices=sorted(RAW_INPUT), default="serving_default",
                        help="serving_default: raw images (2D models); register_crop: preprocessed crops")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=2, help="2D (slices) or 3D model")
    args = parser.parse_args(argv)
    try:
        paths, center = register(args.moving, args.fixed, args.output_dir, args.server or DEFAULT_SERVERS[args.protocol],
                                 args.model_name, args.model_version, args.ndim, args.signature, args.protocol)
    except ClientError as error:
        print("error: %s" % error, file=sys.stderr)
        return 2
    if center is not None:
        print("window centre (row, col): %d, %d" % tuple(center))
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
