"""The papers' comparisons (Tables 1 and 2, Fig. 3) on any dataset the loaders read: the GSMorph paper's
rows on 2D datasets (:data:`PAPER_METHODS`), ULAE-net's on 3D ones (:data:`ULAE_METHODS`).

Every learned method is trained with the same data, epochs and seed (one :class:`TrainConfig`, a few
settings changed per method: the surgery mode and lambda, and HyperMorph its own learning rate), the
classical methods run on the same 2D crops, and all are scored by the same code
(:func:`gsmorph_tf.evaluate.evaluation.evaluate_predictor`, by the base config's metric protocol), so Dice, HD95 and
NJD are computed identically.

Each method keeps its results in ``<output_dir>/<slug>/``: learned methods are ordinary training runs (an
interrupted one resumes from its last epoch), and a method whose ``benchmark.json`` exists is not run again.
Inference time is measured in the same run on the same machine for every method: one pair at a time
(batch 1), after one warm-up pair, median over all test pairs.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import json
import os

import numpy as np

from gsmorph_tf.errors import ConfigError
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.evaluate.timing import compiled_predictor, machine_description, pair_by_pair
from gsmorph_tf.fileio import atomic_save_figure, atomic_write_text
from gsmorph_tf.models.networks import count_trainable_parameters
from gsmorph_tf.registry import DATASETS
from gsmorph_tf.train import training
from gsmorph_tf.train.runs import load_run_for_inference


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the comparison. ``kind``: ``identity``, ``classical`` (``settings["method"]`` names a
    :mod:`gsmorph_tf.evaluate.baselines` method) or ``learned`` (``settings`` override the base TrainConfig)."""

    name: str
    slug: str
    kind: str
    settings: tuple = ()


#: The rows of the paper's Table 1, in its order.
PAPER_METHODS = (
    Method("Initial", "initial", "identity"),
    Method("Demons", "demons", "classical", (("method", "demons"),)),
    Method("SyN", "syn", "classical", (("method", "syn"),)),
    Method("VoxelMorph-s", "voxelmorph_s", "learned", (("surgery", "none"), ("lam", 0.001))),
    Method("VoxelMorph-m", "voxelmorph_m", "learned", (("surgery", "none"), ("lam", 0.01))),
    Method("VoxelMorph-l", "voxelmorph_l", "learned", (("surgery", "none"), ("lam", 0.1))),
    # HyperMorph keeps its published learning rate (Hoopes et al.: 1e-4): at the shared 5e-3 its 14M-parameter
    # hypernetwork diverged on the phantom (Dice 0 %, NJD 35 %).
    Method("HyperMorph", "hypermorph", "learned", (("model", "hypermorph"), ("surgery", "none"),
                                                   ("learning_rate", 1e-4))),
    Method("GS-Agr", "gs_agr", "learned", (("surgery", "agr_rand"),)),
    Method("GS-PCGrad", "gs_pcgrad", "learned", (("surgery", "pcgrad"),)),
    Method("GSMorph", "gsmorph", "learned", (("surgery", "layerwise"),)),
)


#: The columns of ULAE-net's Table 1 (3D inter-subject brain registration), in its order. The learned methods
#: share the base config's similarity, smoothness penalty, lambda and learning rate (the ULAE protocol:
#: flags/benchmark_oasis.flags); VoxelMorph is the project's U-Net trained with ``L_sim + lam L_reg``, and
#: "VoxelMorph x2" the same U-Net with doubled feature widths (``unet_width=2``).
ULAE_METHODS = (
    Method("Initial", "initial", "identity"),
    Method("SyN", "syn", "classical", (("method", "syn"),)),
    Method("VoxelMorph", "voxelmorph", "learned", (("model", "gsmorph"), ("surgery", "none"))),
    Method("VoxelMorph x2", "voxelmorph_x2", "learned", (("model", "gsmorph"), ("surgery", "none"),
                                                         ("unet_width", 2))),
    Method("ULAE-net", "ulae", "learned", (("model", "ulae"), ("surgery", "none"))),
    Method("ULAE-net + gradient surgery", "ulae_gs", "learned", (("model", "ulae"), ("surgery", "layerwise"))),
)


def comparison_methods(dataset):
    """The comparison's rows for ``dataset`` (a registry name): the GSMorph paper's for 2D datasets, ULAE-net's
    for 3D ones."""
    return ULAE_METHODS if DATASETS[dataset].ndim == 3 else PAPER_METHODS


def classical_predictor(method):
    """A predictor registering each pair with a classical method of :mod:`gsmorph_tf.evaluate.baselines`."""
    from gsmorph_tf.evaluate import baselines  # optional extra: imported only when a classical method runs

    return lambda moving, fixed: baselines.register_stack(method, moving, fixed)


def check_requirements(methods):
    """Fail before any training if a classical method's library (the ``baselines`` extra) is missing.

    Raises:
        ImportError: naming the missing package and the extra to install.
    """
    from gsmorph_tf.evaluate import baselines

    for method in methods:
        if method.kind == "classical":
            baselines.require(dict(method.settings)["method"])


def _score(predict, subjects, protocol):
    """Metric rows by ``protocol`` and per-pair ms (one warm-up pair first, not counted)."""
    predict(subjects[0].moving[:1], subjects[0].fixed[:1])
    times = []
    rows = evaluation.evaluate_predictor(pair_by_pair(predict, times), subjects, protocol=protocol)
    return rows, times


def run_method(method, base_config, splits, output_dir, log=print, predictors=None):
    """Run one method in ``<output_dir>/<method.slug>/`` (or read its finished results): :func:`method_record`."""
    return method_record(method, base_config, splits, os.path.join(output_dir, method.slug), log, predictors)


def method_record(method, base_config, splits, folder, log=print, predictors=None, networks=None):
    """Run one method in ``folder`` (or read its finished results from ``<folder>/benchmark.json``) and return its
    record: ``{"name", "kind", "parameters", "ms_per_pair": [...], "subjects": rows, "summary", "chosen"}``.
    A learned method's config is ``base_config`` with the method's settings (:meth:`TrainConfig.replace_for_model`,
    so a setting its model does not take goes back to its default); trained now, it leaves its compiled predictor
    in ``predictors[method.name]`` (for the figure) and its network in ``networks[method.name]``. Training runs
    write no SavedModel: the comparison needs only their scores and checkpoints."""
    record_path = os.path.join(folder, "benchmark.json")
    if os.path.exists(record_path):
        log("%s: finished earlier, results read from %s" % (method.name, record_path))
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("metric_protocol", "volume") != base_config.metric_protocol:
            raise ConfigError("%s was scored with metric_protocol=%s, this comparison uses %s; use another "
                              "--output_dir" % (record_path, record.get("metric_protocol", "volume"),
                                                base_config.metric_protocol))
        return record
    os.makedirs(folder, exist_ok=True)
    test = splits["test"]
    protocol = base_config.metric_protocol
    record = {"name": method.name, "kind": method.kind, "parameters": None, "chosen": {},
              "metric_protocol": protocol}
    settings = dict(method.settings)
    if method.kind == "identity":
        rows, times = evaluation.evaluate_identity(test, protocol), []
    elif method.kind == "classical":
        log("%s: registering %d test pairs" % (method.name, training.pair_count(test)))
        rows, times = _score(classical_predictor(settings["method"]), test, protocol)
    else:
        config = base_config.replace_for_model(output_dir=folder, **settings)
        log("%s: training (%s)" % (method.name, ", ".join("%s=%s" % kv for kv in method.settings)))
        outcome = training.train_and_evaluate(config, log=log, export=False)
        _, network = load_run_for_inference(folder)
        predict = compiled_predictor(network)
        if predictors is not None:
            predictors[method.name] = predict
        if networks is not None:
            networks[method.name] = network
        record["parameters"] = count_trainable_parameters(network)
        with open(outcome["evaluation_json"], encoding="utf-8") as f:
            record["chosen"] = json.load(f)["chosen"]
        rows, times = _score(predict, test, protocol)
    record.update(ms_per_pair=times, subjects=rows, summary=evaluation.summarize(rows))
    evaluation.write_json(record_path, record)
    return record


def run_paper_comparison(base_config, output_dir, methods=None, log=print):
    """Run every method (default: :func:`comparison_methods` of the dataset) on ``base_config``'s data and write
    ``table1.md``, ``table2.md``, ``figure3.png`` and ``results.json`` to ``output_dir``. Returns
    ``{method name: record}``."""
    base_config.validate()
    methods = comparison_methods(base_config.dataset) if methods is None else methods
    splits = training.load_data(base_config)  # every bad input fails here, before any method runs
    os.makedirs(output_dir, exist_ok=True)
    records, predictors = {}, {}
    for index, method in enumerate(methods, 1):
        log("[%d/%d] %s" % (index, len(methods), method.name))
        records[method.name] = run_method(method, base_config, splits, output_dir, log=log, predictors=predictors)
    machine = machine_description()
    atomic_write_text(os.path.join(output_dir, "table1.md"), table1(records) + "\n")
    atomic_write_text(os.path.join(output_dir, "table2.md"), table2(records, machine) + "\n")
    figure3(records, methods, base_config, splits, output_dir, os.path.join(output_dir, "figure3.png"), predictors)
    evaluation.write_json(os.path.join(output_dir, "results.json"),
                          {"machine": machine, "config": base_config.to_dict(),
                           "metric_protocol": base_config.metric_protocol,
                           "methods": {name: {k: v for k, v in r.items() if k != "subjects"}
                                       for name, r in records.items()}})
    return records


def table1(records):
    """The paper's Table 1: Dice %, HD95 mm, MSE x1e-2, NJD %, SDlogJ, mean +- std over the test split's
    subjects or slice pairs (the protocol's caption says which); then ULAE-net's Table 1 layout: Dice % per
    structure (per label group with ``label_groups``) in rows, a column per method."""
    first = next(iter(records.values()))
    caption = evaluation.protocol_caption(first.get("metric_protocol", "volume"), first["subjects"])
    summaries = {name: record["summary"] for name, record in records.items()}
    structures = [key[len("dice_"):] for key in first["summary"] if key.startswith("dice_") and key != "dice_mean"]
    return (caption + "\n\n" + evaluation.format_table(summaries) + "\n\nDice (%) per structure:\n\n"
            + evaluation.structure_table(summaries, structures, metrics_shown=evaluation.STRUCTURE_METRICS[:1]))


def table2(records, machine):
    """The paper's Table 2: trainable parameters and inference ms per pair (median, batch 1)."""
    lines = ["| Method | Parameters | Inference (ms per pair, median) |", "|---|---|---|"]
    for name, record in records.items():
        if record["kind"] == "identity":
            continue
        params = "-" if record["parameters"] is None else "{:,}".format(record["parameters"])
        lines.append("| %s | %s | %.1f |" % (name, params, float(np.median(record["ms_per_pair"]))))
    lines.append("")
    lines.append("Measured in this run on: %s. One pair at a time, after one warm-up pair." % machine)
    return "\n".join(lines)


def _deformation_grid(axis, flow, spacing=4):
    """Draw the deformed grid x + u(x) (every ``spacing`` pixels) of a 2D flow [H, W, 2] on ``axis``."""
    h, w = flow.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = rows + flow[..., 0], cols + flow[..., 1]
    for r in range(0, h, spacing):
        axis.plot(x[r, :], y[r, :], color="tab:red", linewidth=0.5)
    for c in range(0, w, spacing):
        axis.plot(x[:, c], y[:, c], color="tab:red", linewidth=0.5)
    axis.set_xlim(0, w - 1)
    axis.set_ylim(h - 1, 0)
    axis.set_aspect("equal")


def middle_slice(array):
    """A 3D volume ``[D, H, W]`` (or field ``[D, H, W, 3]``) as its middle slice along the first axis:
    ``[H, W]`` (or the in-plane components ``[H, W, 2]``)."""
    array = array[array.shape[0] // 2]
    return array[..., 1:] if array.ndim == 3 else array


def figure3(records, methods, base_config, splits, output_dir, path, trained=None, cases=2):
    """Like the paper's Fig. 3: for ``cases`` test subjects (mid-ventricular slice; 3D tasks: the middle slice
    along the first axis), fixed, moving and each method's moved image, with its deformation grid underneath.
    Learned methods' predictors come from ``trained`` (name -> compiled predictor) or are restored from their
    runs.
    Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = splits["test"][:cases]
    shown = [m for m in methods if m.kind != "identity"]
    predictors = {}
    for method in shown:
        if method.kind == "classical":
            predictors[method.name] = classical_predictor(dict(method.settings)["method"])
        elif method.name in (trained or {}):
            predictors[method.name] = trained[method.name]
        else:
            _, network = load_run_for_inference(os.path.join(output_dir, method.slug))
            predictors[method.name] = compiled_predictor(network)
    columns = 2 + len(shown)
    fig, axes = plt.subplots(2 * len(subjects), columns, figsize=(1.6 * columns, 3.3 * len(subjects)),
                             squeeze=False)
    for case, pairs in enumerate(subjects):
        s = len(pairs.moving) // 2
        top, bottom = axes[2 * case], axes[2 * case + 1]
        names = ("Fixed", "Moving") if pairs.volumes_per_item else ("Fixed (ED)", "Moving (ES)")
        view = middle_slice if pairs.volumes_per_item else (lambda array: array)
        for axis, image, title in ((top[0], pairs.fixed[s], names[0]), (top[1], pairs.moving[s], names[1])):
            axis.imshow(view(image), cmap="gray", vmin=0, vmax=1)
            axis.set_title("%s\n%s" % (title, pairs.subject), fontsize=7)
        for column, method in enumerate(shown, 2):
            moved, flow = predictors[method.name](pairs.moving[s:s + 1], pairs.fixed[s:s + 1])
            top[column].imshow(view(moved[0]), cmap="gray", vmin=0, vmax=1)
            top[column].set_title(method.name, fontsize=7)
            _deformation_grid(bottom[column], view(flow[0]))
        for axis in list(top) + list(bottom):
            axis.set_xticks([])
            axis.set_yticks([])
        bottom[0].axis("off")
        bottom[1].axis("off")
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)

