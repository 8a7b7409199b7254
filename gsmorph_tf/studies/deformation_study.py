"""Does ULAE-net keep its promise? Accumulative enhancement against single-step VoxelMorph, a resumable multi-seed
3D study on the synthetic brain task.

ULAE-net's claim (Shu et al., MICCAI 2021) is that its three accumulative steps register large deformations
better than a single-step VoxelMorph, even one with twice the feature widths. The study trains, on the same brain
data, pairs, steps, learning rate and seeds, every learned row of :data:`STUDY_METHODS` (ULAE-net's Table 1
columns, :data:`gsmorph_tf.studies.paper_comparison.ULAE_METHODS`, and GSMorph-3D), runs Initial and SyN on the same
test pairs, and scores all of them with one evaluator (:func:`gsmorph_tf.studies.paper_comparison.method_record`: Dice
per structure, HD95, NJD, SDlogJ, inference ms per pair). Models are named by their registry strings only.

- **VoxelMorph** is trained at every lambda of the sweep (l2 smoothness, as ULAE's objective); the lambda with the
  best mean validation Dice over seeds is *chosen*, and **VoxelMorph x2** (doubled feature widths) trains with it:
  both baselines get the tuning a user would give them, ULAE-net keeps its published lambda (1).
- **Tests**: paired two-sided Wilcoxon signed-rank tests over the test pairs (each pair's Dice averaged over
  seeds) of ULAE-net against the chosen VoxelMorph and against VoxelMorph x2, and of ULAE-net with gradient
  surgery against ULAE-net; Welch's t-test over seeds beside each.
- **Dice against deformation magnitude**: ULAE-net and VoxelMorph x2 (and Initial) at every level of
  ``magnitudes``, each level its own brain dataset (``brain_max_displacement``; the subjects' random fields are
  the same up to their scale). A level equal to the main one reuses the main runs.
- **ULAE's Fig. 3**: one test pair after each of ULAE-net's three steps (its ``step1_moved``, ``step2_moved``,
  ``step3_moved`` outputs) and warped by the composed field (``moved``), beside moving and fixed.

Stopping rule: every learned run trains at most ``epochs`` epochs of ``pairs_per_epoch`` steps; with
``early_stopping_patience`` (the CPU flagfile's) it stops earlier, once its validation Dice has not improved for that
many epochs (:class:`gsmorph_tf.train.training.ValidationPlateau`), so each run trains until its own plateau. It is
scored with its last weights (no best-epoch pick: the reference's inference loads the last). The validation curves
(every run's own, one panel per row and level),
each method's validation-Dice gain over the last quarter of its epochs and its steps (min-max over seeds) say
where each method stopped and whether it still improved.

Everything goes to ``output_dir``: one folder per level (``disp<level>/``), in it one per row (``<slug>/``, learned
rows one more per seed, ``seed<k>/``), each an ordinary training run (resumed after an interruption) with the
study's record ``study_run.json`` (a finished run is read back, not retrained); then ``deformation_table.md``,
``deformation_study.json``, ``validation_curves.png``, ``dice_vs_magnitude.png`` and ``ulae_steps.png``, all
written atomically. ``study_config.json`` holds the settings: a later call on the same folder must use the same
ones (seeds, methods, lambdas and magnitudes may change: they select runs).

**A study carried across machines** (``record_dir``): a study of many runs may outlive the machine it started on
(scratch space wiped between jobs, a fresh clone each sitting). The record folder keeps what the study's numbers
and figures need, small enough to commit: ``study_config.json``, every finished run's ``study_run.json`` at its
place in the tree (``disp<level>/<slug>[/seed<k>]/``), the network of the run Fig. 3 draws
(:func:`gsmorph_tf.train.runs.save_network_weights`) and the outputs. A run whose record is kept there is read
back on any machine instead of trained again; checkpoints and TensorBoard events stay in ``output_dir``.

**Several processes on one study.** The same call may run in several processes at once on one ``output_dir``
(e.g. one single-thread process per core): each run's folder is locked by the process training it
(:mod:`gsmorph_tf.train.rundir`), and a process that meets a run another live process is training skips it (and
VoxelMorph x2 while VoxelMorph's lambda waits for such a run) and goes on to the next. A call that skipped runs
writes no outputs; the call that finds every run finished writes them: run the command once more after the others
end (it reads every run back).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import math
import os

import numpy as np
import tensorflow as tf

from gsmorph_tf.config import TrainConfig
from gsmorph_tf.errors import ConfigError
from gsmorph_tf.evaluate.evaluation import write_json
from gsmorph_tf.evaluate.timing import machine_description
from gsmorph_tf.fileio import atomic_copy, atomic_save_figure, atomic_write_text
from gsmorph_tf.studies import paper_comparison, seed_studies
from gsmorph_tf.studies.paper_comparison import Method
from gsmorph_tf.train import rundir, training
from gsmorph_tf.train.runs import (NETWORK_WEIGHTS, has_run_checkpoint, load_network_weights,
                                   load_run_for_inference, read_run_config, save_network_weights)

INITIAL, SYN, VOXELMORPH, VOXELMORPH_X2 = "Initial", "SyN", "VoxelMorph", "VoxelMorph x2"
ULAE, ULAE_GS, GSMORPH_3D = "ULAE-net", "ULAE-net + gradient surgery", "GSMorph-3D"

#: The study's rows, by the names ``methods`` takes, in table order: ULAE-net's Table 1 columns and GSMorph-3D
#: (the GSMorph paper's U-Net in 3D with layer-wise gradient surgery, no lambda).
STUDY_METHODS = paper_comparison.ULAE_METHODS + (
    Method(GSMORPH_3D, "gsmorph3d", "learned", (("model", "gsmorph"), ("surgery", "layerwise"))),)
_SLUGS = {m.name: m.slug for m in STUDY_METHODS}
#: The methods trained at every deformation magnitude (with Initial, when selected, as the reference).
MAGNITUDE_METHODS = (ULAE, VOXELMORPH_X2)
#: VoxelMorph's smoothness weights (l2, ULAE's penalty) swept by default: around ULAE-net's published 1.
DEFAULT_LAMBDAS = (0.3, 1.0, 3.0)
#: The part of the epochs over which a method's late validation-Dice gain is measured (the plateau check).
LATE_FRACTION = 0.25
#: ULAE-net's outputs shown in its Fig. 3, with their titles: each step's warped image, then the composed warp.
STEP_OUTPUTS = (("step1_moved", "Step 1"), ("step2_moved", "Step 2"), ("step3_moved", "Step 3"),
                ("moved", "Composed"))
#: The study's outputs, written to ``output_dir`` and copied to ``record_dir``.
OUTPUTS = ("deformation_table.md", "deformation_study.json", "validation_curves.png", "dice_vs_magnitude.png",
           "ulae_steps.png")
#: The per-run metrics of the table beside Dice per structure: (key, header).
TABLE_KEYS = (("dice_mean", "Dice mean (%)"), ("hd95_mean", "HD95 (mm)"), ("njd", "NJD (%)"), ("sdlogj", "SDlogJ"))


def select_methods(names=None):
    """The rows of :data:`STUDY_METHODS` named in ``names`` (in table order), or all of them for None.

    Raises:
        ConfigError: naming the unknown names and the valid ones.
    """
    if names is None:
        return STUDY_METHODS
    known = [m.name for m in STUDY_METHODS]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError("methods: %s; valid: %s" % ("unknown %s" % ", ".join(repr(n) for n in unknown) if unknown
                                                      else "none given", ", ".join(known)))
    return tuple(m for m in STUDY_METHODS if m.name in names)


def level_name(level):
    """The folder of a deformation level: ``disp<level>`` (``disp5``, ``disp2.5``)."""
    return "disp%g" % level


def late_gain(curve, fraction=LATE_FRACTION):
    """Validation Dice gained over the last ``fraction`` of a run's epochs: ``curve[-1] - curve[-1 - k]`` with
    ``k = ceil(fraction * epochs)``, at least 1 and at most ``epochs - 1``; near 0 on a plateau. NaN for a curve
    of fewer than 2 epochs."""
    if len(curve) < 2:
        return float("nan")
    k = min(len(curve) - 1, max(1, int(math.ceil(fraction * len(curve)))))
    return float(curve[-1] - curve[-1 - k])


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """One study: the main level's base config (``dataset="brain"``; its ``brain_max_displacement`` is the main
    level, its ``split_seed`` fixes the subjects and split of every level), where it goes, and what it runs.

    Attributes:
        config: :class:`~gsmorph_tf.config.TrainConfig` shared by every learned run (ULAE-net's objective; each
            row changes its model settings, VoxelMorph its lambda, every run its seed and output folder).
        output_dir: the study's folder.
        methods: rows of :data:`STUDY_METHODS` (see :func:`select_methods`).
        seeds: training seeds of every learned row.
        lambdas: VoxelMorph's sweep (the chosen one also trains VoxelMorph x2).
        magnitudes: ``brain_max_displacement`` levels (voxels) of the magnitude study; empty: none.
        record_dir: the study's record folder (see the module's docstring); empty: none.
    """
    config: TrainConfig
    output_dir: str
    methods: tuple = STUDY_METHODS
    seeds: tuple = (0, 1, 2)
    lambdas: tuple = DEFAULT_LAMBDAS
    magnitudes: tuple = ()
    record_dir: str = ""

    @property
    def main_level(self):
        return float(self.config.option("brain_max_displacement"))

    @property
    def levels(self):
        """The main level first, then the other magnitudes in the given order."""
        return (self.main_level,) + tuple(float(m) for m in self.magnitudes if float(m) != self.main_level)

    @property
    def names(self):
        return [m.name for m in self.methods]

    def validate(self):
        """Raise :class:`ConfigError` naming the first bad setting; return ``self``."""
        if self.config.dataset != "brain":
            raise ConfigError("the deformation study runs on dataset=brain (its magnitudes are brain_max_displacement "
                              "levels), got dataset=%s" % self.config.dataset)
        if self.config.split_seed is None:
            raise ConfigError("split_seed must be set: every seed trains on the same brain subjects and split")
        self.config.validate()
        if not self.output_dir:
            raise ConfigError("output_dir is empty")
        if self.record_dir and os.path.abspath(self.record_dir) == os.path.abspath(self.output_dir):
            raise ConfigError("record_dir must be another folder than output_dir (%s): it keeps the study's records "
                              "apart from its checkpoints" % self.output_dir)
        if not self.methods:
            raise ConfigError("methods is empty; valid: %s" % ", ".join(m.name for m in STUDY_METHODS))
        _check_distinct("seeds", self.seeds, lambda s: isinstance(s, int) and not isinstance(s, bool) and s >= 0,
                        "non-negative integers")
        if {VOXELMORPH, VOXELMORPH_X2} & set(self.names):
            _check_distinct("lambdas", self.lambdas, _positive, "positive numbers")
        if VOXELMORPH_X2 in self.names and VOXELMORPH not in self.names and len(self.lambdas) != 1:
            raise ConfigError("VoxelMorph x2 trains with the lambda chosen for VoxelMorph on the validation split: add "
                              "VoxelMorph to methods, or give one lambda (got lambdas %s)"
                              % ",".join("%g" % v for v in self.lambdas))
        if self.magnitudes:
            _check_distinct("magnitudes", self.magnitudes, _positive, "positive numbers (voxels)")
        return self

    def record_folder(self, folder):
        """Where the record folder keeps the run in ``folder`` (a folder under ``output_dir``); None without one."""
        return os.path.join(self.record_dir, os.path.relpath(folder, self.output_dir)) if self.record_dir else None

    def level_config(self, level):
        """The base config on the brain dataset of ``level`` (its ``brain_max_displacement``)."""
        return dataclasses.replace(self.config, dataset_options=dict(self.config.dataset_options,
                                                                     brain_max_displacement=float(level)))

    def level_methods(self, level):
        """The rows run at ``level``: all at the main level; Initial and :data:`MAGNITUDE_METHODS` at the others."""
        if level == self.main_level:
            return self.methods
        return tuple(m for m in self.methods if m.name == INITIAL or m.name in MAGNITUDE_METHODS)

    def run_count(self):
        """How many runs the study holds (each learned row's seeds; VoxelMorph's per lambda)."""
        count = 0
        for level in self.levels:
            for method in self.level_methods(level):
                runs = len(self.seeds) if method.kind == "learned" else 1
                count += runs * (len(self.lambdas) if method.name == VOXELMORPH else 1)
        return count


def _positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_distinct(name, values, valid, expected):
    bad = [v for v in values if not valid(v)]
    if not values or bad:
        raise ConfigError("%s takes %s, got %s" % (name, expected, ("%r" % (bad[0],)) if bad else "none"))
    repeated = sorted({v for v in values if list(values).count(v) > 1})
    if repeated:
        raise ConfigError("%s lists %s more than once" % (name, ", ".join("%g" % v for v in repeated)))


def _voxelmorph_row(method, lam, name):
    """``method`` (VoxelMorph or VoxelMorph x2) at smoothness weight ``lam``, named and filed by it."""
    return dataclasses.replace(method, name="%s (lam=%g)" % (name, lam), slug="%s_lam%g" % (method.slug, lam),
                               settings=method.settings + (("lam", float(lam)),))


def choose_lambda(records, lambdas):
    """The VoxelMorph lambda with the highest mean (over seeds) final validation Dice, the first of ``lambdas``
    on a tie; with one lambda, that one. Returns ``(lambda, {lambda: (mean, std) validation Dice})``."""
    validation = {}
    for lam in lambdas:
        name = "%s (lam=%g)" % (VOXELMORPH, lam)
        values = [np.nan if r["validation_dice"] is None else r["validation_dice"] for r in records.get(name, [])]
        validation[float(lam)] = ((float(np.nanmean(values)), float(np.nanstd(values)))
                                  if values and not np.all(np.isnan(values)) else (float("nan"), float("nan")))
    best = max(lambdas, key=lambda lam: np.nan_to_num(validation[float(lam)][0], nan=-np.inf))
    return float(best), validation


def run_record(method, seed, level, config, splits, folder, log=print, networks=None, kept=None):
    """One run of the study (``seed`` None for Initial and SyN), trained (or resumed) and scored, or read back
    from ``<folder>/study_run.json``; its record::

        {"method", "seed", "level", "kind", "test": summary, "test_subjects": one row per test pair,
         "ms_per_pair": [...], "parameters", "validation_curve": [...], "validation_dice", "steps"}

    A learned run trained now leaves its network in ``networks[method.name]`` (ULAE's figure). With ``kept``
    (the run's folder in the study's record folder), a record kept there and missing in ``folder`` is copied in
    first (the run is read back, not trained), and the run's record is kept there once it exists."""
    def make():
        settings = method.settings + ((("seed", seed),) if seed is not None else ())
        scored = paper_comparison.method_record(dataclasses.replace(method, settings=settings), config, splits, folder,
                                                log=log, networks=networks)
        learned = method.kind == "learned"
        curve = seed_studies.epoch_curve(folder) if learned else []
        return {"method": method.name, "seed": seed, "level": level, "kind": method.kind, "test": scored["summary"],
                "test_subjects": scored["subjects"], "ms_per_pair": scored["ms_per_pair"],
                "parameters": scored["parameters"], "validation_curve": curve,
                "validation_dice": curve[-1] if curve else float("nan"),
                "steps": seed_studies.epoch_steps(config, splits) * len(curve) if learned else 0,
                "metric_protocol": config.metric_protocol}
    path = os.path.join(folder, "study_run.json")
    kept_path = os.path.join(kept, "study_run.json") if kept else None
    if kept_path and os.path.exists(kept_path) and not os.path.exists(path):
        log("finished on another machine: %s read back" % kept_path)
        atomic_copy(kept_path, path)
    record = seed_studies.read_or_make(path, make)
    if kept_path and not os.path.exists(kept_path):
        atomic_copy(path, kept_path)
    return record


def keep_figure_network(plan, run_dir, network=None):
    """Keep the network of the run Fig. 3 draws (``run_dir``) in the record folder, once: ``network`` (just
    trained) or the one restored from the run's checkpoint. Nothing without a record folder, when it is kept
    already, or when neither is here."""
    kept = plan.record_folder(run_dir)
    if kept is None or os.path.exists(os.path.join(kept, NETWORK_WEIGHTS)):
        return
    if network is None:
        if not has_run_checkpoint(run_dir):
            return
        _, network = load_run_for_inference(run_dir)
    save_network_weights(kept, network, read_run_config(run_dir))


def network_for_figure(plan, run_dir, network=None):
    """The network Fig. 3 draws: ``network`` (trained in this call), else the run's own (restored by
    :func:`ulae_step_images` from ``run_dir``), else the one kept in the record folder when the run was trained on
    another machine. None: restore it from ``run_dir``."""
    if network is not None:
        return network
    kept = plan.record_folder(run_dir)
    if not has_run_checkpoint(run_dir) and kept and os.path.exists(os.path.join(kept, NETWORK_WEIGHTS)):
        return load_network_weights(kept)[1]
    return None


def load_levels(plan):
    """Every level's data, written on first use and checked (:func:`gsmorph_tf.train.training.load_data`,
    :func:`~gsmorph_tf.train.training.check_batches`, :func:`~gsmorph_tf.train.training.check_mixed_precision`)
    before any training: ``{level: splits}``."""
    splits = {}
    for level in plan.levels:
        config = plan.level_config(level)
        splits[level] = training.load_data(config)
        training.check_batches(config, splits[level])
        training.check_mixed_precision(config, splits[level])
    return splits


def check_study_folder(plan):
    """Save the study's settings as ``<output_dir>/study_config.json``, or check them against the saved ones.

    Raises:
        ConfigError: naming the folder and each setting that differs (seeds, methods, lambdas and magnitudes
            may change: they select runs; nothing else may).
    """
    config = dataclasses.replace(plan.config, output_dir=plan.output_dir)
    if plan.record_dir:
        # the data is written again from its settings on each machine: its folder may change with the machine
        record = os.path.join(plan.record_dir, "study_config.json")
        if os.path.exists(record):
            try:
                config.check_resumable(record, may_change=("output_dir", "seed", "data_dir"))
            except ConfigError as error:
                raise ConfigError("record_dir: %s" % error) from error
        else:
            os.makedirs(plan.record_dir, exist_ok=True)
            config.save(record)
    os.makedirs(plan.output_dir, exist_ok=True)
    path = os.path.join(plan.output_dir, "study_config.json")
    if os.path.exists(path):
        config.check_resumable(path, may_change=("output_dir", "seed"))
    else:
        config.save(path)


def run_label(name, seed, level):
    """How the study names a run in its log: ``<row>[, seed <k>] (max displacement <level> voxels)``."""
    return "%s%s (max displacement %g voxels)" % (name, "" if seed is None else ", seed %d" % seed, level)


def in_training_elsewhere(folder):
    """Whether another live process is training the run in ``folder`` (it holds the run's lock,
    :func:`gsmorph_tf.train.rundir.check_not_in_use`) and the run has not finished (no ``study_run.json``)."""
    if os.path.exists(os.path.join(folder, "study_run.json")):
        return False
    try:
        rundir.check_not_in_use(folder)
    except ConfigError:
        return True
    return False


def record_unless_elsewhere(method, seed, level, config, splits, folder, log, networks, kept, label):
    """:func:`run_record` (its arguments), announced by logging ``label``; None (logged) when another live process
    is training the run, found before this process would start it or by the trainer's lock error when the other
    process took it in between."""
    if in_training_elsewhere(folder):
        log("%s: skipped, another process is training it" % label)
        return None
    log(label)
    try:
        return run_record(method, seed, level, config, splits, folder, log, networks, kept)
    except ConfigError:
        if not in_training_elsewhere(folder):
            raise
        log("%s: skipped, another process started training it" % label)
        return None


def run_deformation_study(plan, log=print):
    """Run (or resume) every run of ``plan`` and write its table, figures and JSON to ``plan.output_dir``.

    Every bad input (settings, the baselines extra for SyN, a study folder holding other settings, each level's
    data) fails before any training. A run another process is training is skipped (:func:`in_training_elsewhere`;
    see the module docstring), and then no output is written.

    Returns:
        The study's summary (:func:`summarize`) with ``table`` (the Markdown written to ``deformation_table.md``)
        and ``recorded`` (whether the outputs were copied to the record folder: :func:`write_outputs`); None when
        runs were skipped.
    """
    plan.validate()
    paper_comparison.check_requirements(plan.methods)
    check_study_folder(plan)
    splits = load_levels(plan)
    records = {level: {} for level in plan.levels}
    main = plan.main_level
    chosen = plan.lambdas[0] if len(plan.lambdas) == 1 else None
    figure_network, done, total, folders, skipped = None, 0, plan.run_count(), [], []
    for level in plan.levels:
        config = plan.level_config(level)
        for method in plan.level_methods(level):
            seeds = plan.seeds if method.kind == "learned" else (None,)
            if method.name == VOXELMORPH_X2 and chosen is None:
                done += len(seeds)
                skipped += [run_label(method.name, seed, level) for seed in seeds]
                log("[%d/%d] %s: skipped, VoxelMorph's lambda is not chosen yet (its runs are training in another "
                    "process)" % (done, total, run_label(method.name, None, level)))
                continue
            if method.name == VOXELMORPH:
                rows = [_voxelmorph_row(method, lam, VOXELMORPH) for lam in plan.lambdas]
            elif method.name == VOXELMORPH_X2:
                rows = [_voxelmorph_row(method, chosen, VOXELMORPH_X2)]
            else:
                rows = [method]
            level_skipped = len(skipped)
            for row in rows:
                for seed in seeds:
                    done += 1
                    what = run_label(row.name, seed, level)
                    folder = os.path.join(plan.output_dir, level_name(level), row.slug)
                    folder = folder if seed is None else os.path.join(folder, "seed%d" % seed)
                    folders.append(os.path.relpath(folder, plan.output_dir))
                    trained = {}
                    record = record_unless_elsewhere(row, seed, level, config, splits[level], folder, log, trained,
                                                     plan.record_folder(folder), "[%d/%d] %s" % (done, total, what))
                    if record is None:
                        skipped.append(what)
                        continue
                    records[level].setdefault(row.name, []).append(record)
                    if (level, row.name, seed) == (main, ULAE, plan.seeds[0]):
                        figure_network = trained.get(row.name)
                        keep_figure_network(plan, folder, figure_network)
            if method.name == VOXELMORPH and level == main and len(skipped) == level_skipped:
                chosen = choose_lambda(records[main], plan.lambdas)[0]
                log("VoxelMorph's lambda chosen on the validation split: %g" % chosen)
    if skipped:
        log("%d run(s) were skipped, being trained by other processes: %s. No outputs written: run the same command "
            "again once those processes have ended; it reads every finished run back and writes them."
            % (len(skipped), "; ".join(skipped)))
        return None
    summary = summarize(records, plan, chosen)
    write_outputs(plan, records, summary, splits, figure_network, folders, log)
    return summary


# --- the numbers --------------------------------------------------------------------------------------------------

def structures(records):
    """The structures scored, in table order, from a record's test summary (its ``dice_<structure>`` keys)."""
    return [key[len("dice_"):] for key in records[0]["test"] if key.startswith("dice_") and key != "dice_mean"]


def summarize_method(records):
    """One row of the table from a method's records (one per seed; Initial and SyN one): ``(mean, std)`` over
    seeds of each test metric, of the per-run median inference ms per pair, of the final validation Dice and of
    its :func:`late_gain`; and ``seeds``, ``steps`` (``(min, max)`` over seeds: early stopping ends each run on its
    own plateau), ``parameters``."""
    row = {key: seed_studies.over_seeds(records, key)
           for key in ["dice_%s" % s for s in structures(records)] + [key for key, _ in TABLE_KEYS]}

    def spread(values):
        values = [v for v in values if v is not None and not np.isnan(v)]
        return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))
    row["ms_per_pair"] = spread([float(np.median(r["ms_per_pair"])) for r in records if r["ms_per_pair"]])
    row["validation_dice"] = spread([r["validation_dice"] for r in records])
    row["late_gain"] = spread([late_gain(r["validation_curve"]) for r in records])
    steps = [r["steps"] for r in records]
    row.update(seeds=len(records), steps=(min(steps), max(steps)), parameters=records[0]["parameters"])
    return row


def comparison(records_by_method, a, b):
    """Method ``a`` against ``b``: the paired Wilcoxon over test pairs and Welch over seeds
    (:func:`gsmorph_tf.studies.seed_studies.paired_test`, :func:`~gsmorph_tf.studies.seed_studies.seed_test`); None
    unless both ran."""
    if a not in records_by_method or b not in records_by_method:
        return None
    return {"a": a, "b": b, "wilcoxon": seed_studies.paired_test(records_by_method[a], records_by_method[b]),
            "welch": seed_studies.seed_test(records_by_method[a], records_by_method[b])}


def summarize(records, plan, chosen):
    """The study's numbers from ``{level: {row name: [records]}}``.

    Returns:
        dict: ``main_level``; ``structures`` (scored, in table order); ``rows`` (the main level's table,
        :func:`summarize_method` per row); ``chosen_lambda``, ``chosen_lambda_method`` and ``lambda_validation``
        (``{lambda: (mean, std)}`` validation Dice; None without VoxelMorph); ``comparisons`` (ULAE-net against
        the chosen VoxelMorph and VoxelMorph x2, ULAE-net + gradient surgery against ULAE-net, those that ran);
        ``magnitudes`` (per level, ascending: test pairs, test Dice ``(mean, std)`` over seeds of Initial, ULAE-net
        and VoxelMorph x2, and ULAE-net against VoxelMorph x2).
    """
    main = records[plan.main_level]
    voxelmorph = "%s (lam=%g)" % (VOXELMORPH, chosen) if chosen is not None else None
    x2 = "%s (lam=%g)" % (VOXELMORPH_X2, chosen) if chosen is not None else None
    result = {"main_level": plan.main_level, "structures": structures(next(iter(main.values()))),
              "rows": {name: summarize_method(r) for name, r in main.items()},
              "chosen_lambda": chosen if VOXELMORPH in plan.names else None,
              "chosen_lambda_method": voxelmorph if VOXELMORPH in plan.names else None,
              "lambda_validation": ({"%g" % lam: value for lam, value in choose_lambda(main, plan.lambdas)[1].items()}
                                    if VOXELMORPH in plan.names else None),
              "comparisons": [c for c in (comparison(main, ULAE, voxelmorph), comparison(main, ULAE, x2),
                                          comparison(main, ULAE_GS, ULAE)) if c is not None],
              "magnitudes": []}
    if plan.magnitudes:
        for level in sorted(set(float(m) for m in plan.magnitudes)):
            at = records[level]
            result["magnitudes"].append({
                "level": level, "test_pairs": len(next(iter(at.values()))[0]["test_subjects"]) if at else 0,
                "dice": {name: seed_studies.over_seeds(at[name], "dice_mean") for name in (INITIAL, ULAE, x2)
                         if name in at},
                "ulae_vs_x2": comparison(at, ULAE, x2)})
    return result


# --- the outputs --------------------------------------------------------------------------------------------------

def _cell(value):
    mean, std = value
    return "-" if mean is None or np.isnan(mean) else "%.2f +- %.2f" % (mean, std)


def _p(value):
    return "-" if value is None or np.isnan(value) else "%.3g" % value


def _test_line(entry):
    wilcoxon, welch = entry["wilcoxon"], entry["welch"]
    return ("%s - %s: mean %+.2f, median %+.2f Dice points over %d test pairs; Wilcoxon W = %s, p = %s; over seeds "
            "(%d vs %d) Welch t = %s, p = %s." % (entry["a"], entry["b"], wilcoxon["mean_difference"],
                                                  wilcoxon["median_difference"], wilcoxon["subjects"],
                                                  _p(wilcoxon["statistic"]), _p(wilcoxon["p_value"]),
                                                  welch["seeds"][0], welch["seeds"][1], _p(welch["statistic"]),
                                                  _p(welch["p_value"])))


def _steps_cell(steps):
    low, high = steps
    return "-" if not high else str(low) if low == high else "%d-%d" % (low, high)


def study_table(summary, test_pairs):
    """Markdown: the main level's table (mean +- std over seeds), the chosen lambda, the tests, and Dice against
    deformation magnitude."""
    rows, names = summary["rows"], summary["structures"]
    headers = ["Dice %s (%%)" % s for s in names] + [h for _, h in TABLE_KEYS] + [
        "ms / pair", "Val. Dice (%)", "Val. gain, last %d %% of epochs" % (100 * LATE_FRACTION), "seeds", "steps"]
    lines = ["Main level: brain_max_displacement %g voxels, %d test pairs. Each cell: mean +- std over seeds of the "
             "test split's mean (Initial and SyN: one run); ms / pair: each run's median, one pair at a time."
             % (summary["main_level"], test_pairs), "",
             "| Method | %s |" % " | ".join(headers), "|---|%s" % ("---|" * len(headers))]
    for name, row in rows.items():
        cells = [_cell(row["dice_%s" % s]) for s in names] + [_cell(row[key]) for key, _ in TABLE_KEYS]
        cells += [_cell(row["ms_per_pair"]), _cell(row["validation_dice"]), _cell(row["late_gain"]),
                  str(row["seeds"]), _steps_cell(row["steps"])]
        lines.append("| %s | %s |" % (name, " | ".join(cells)))
    if summary["chosen_lambda"] is not None:
        lines += ["", "VoxelMorph's lambda chosen on the validation split (best mean validation Dice over seeds): %g "
                  "(%s); VoxelMorph x2 trains with it. Validation Dice per lambda: %s."
                  % (summary["chosen_lambda"], summary["chosen_lambda_method"],
                     ", ".join("%s: %s" % (lam, _cell(v)) for lam, v in summary["lambda_validation"].items()))]
    if summary["comparisons"]:
        lines += ["", "Paired two-sided Wilcoxon signed-rank tests over the test pairs (each pair's Dice averaged over "
                  "seeds), and Welch's t-test over seeds (each seed's test mean):", ""]
        lines += ["- " + _test_line(entry) for entry in summary["comparisons"]]
    if summary["magnitudes"]:
        methods = [name for name in (INITIAL, ULAE) if any(name in m["dice"] for m in summary["magnitudes"])]
        methods += sorted({name for m in summary["magnitudes"] for name in m["dice"]} - {INITIAL, ULAE})
        lines += ["", "Dice (%) against deformation magnitude (each level its own brain dataset; mean +- std over "
                  "seeds):", "",
                  "| Max displacement (voxels) | test pairs | %s | ULAE-net - x2 | Wilcoxon p | Welch p |"
                  % " | ".join(methods), "|---|---|%s---|---|---|" % ("---|" * len(methods))]
        for entry in summary["magnitudes"]:
            test = entry["ulae_vs_x2"]
            lines.append("| %g | %d | %s | %s | %s | %s |" % (
                entry["level"], entry["test_pairs"], " | ".join(_cell(entry["dice"].get(n, (np.nan, 0)))
                                                                for n in methods),
                "%+.2f" % test["wilcoxon"]["mean_difference"] if test else "-",
                _p(test["wilcoxon"]["p_value"]) if test else "-", _p(test["welch"]["p_value"]) if test else "-"))
    return "\n".join(lines)


def plot_magnitudes(summary, path):
    """Test Dice against the largest deformation (voxels): ULAE-net and VoxelMorph x2 with error bars over seeds,
    Initial dashed. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5.5, 4.2))
    entries = summary["magnitudes"]
    for name in sorted({n for e in entries for n in e["dice"]}, key=lambda n: (n != INITIAL, n)):
        points = [(e["level"], e["dice"][name]) for e in entries if name in e["dice"]]
        axis.errorbar([p[0] for p in points], [p[1][0] for p in points], yerr=[p[1][1] for p in points],
                      fmt="o--" if name == INITIAL else "o-", capsize=3, label=name,
                      color="gray" if name == INITIAL else None)
    axis.set_xlabel("brain_max_displacement (voxels)")
    axis.set_ylabel("test Dice (%)")
    axis.set_title("Each level its own dataset; mean +- std over seeds", fontsize=9)
    axis.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def ulae_step_images(run_dir, pair, network=None):
    """ULAE-net's moved image after each of its three steps and after the composed warp, for one test pair:
    ``{output name: [D, H, W]}`` for :data:`STEP_OUTPUTS`, from ``network`` or the run in ``run_dir``.

    Raises:
        ConfigError: the network has no such outputs (not ULAE-net).
    """
    if network is None:
        _, network = load_run_for_inference(run_dir)
    outputs = network([tf.constant(pair.moving[:1, ..., None], tf.float32),
                       tf.constant(pair.fixed[:1, ..., None], tf.float32)], training=False)
    named = dict(zip(network.output_names, outputs))
    missing = [name for name, _ in STEP_OUTPUTS if name not in named]
    if missing:
        raise ConfigError("%s: the network has no output %s (outputs: %s); the figure shows ULAE-net's steps"
                          % (run_dir, ", ".join(missing), ", ".join(network.output_names)))
    return {name: np.asarray(named[name], np.float32)[0, ..., 0] for name, _ in STEP_OUTPUTS}


def plot_ulae_steps(pair, images, path):
    """ULAE's Fig. 3: moving, the image after each step and after the composed warp, and fixed (the middle slice
    along the first axis), each titled with its MSE (x1e-2) to the fixed image. Returns ``{panel: MSE x1e-2}``.
    Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = pair.fixed[0]
    panels = [("Moving", pair.moving[0])] + [(title, images[name]) for name, title in STEP_OUTPUTS] + [("Fixed", fixed)]
    errors = {title: 100.0 * float(np.mean((image - fixed) ** 2)) for title, image in panels}
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.6))
    for axis, (title, image) in zip(axes, panels):
        axis.imshow(paper_comparison.middle_slice(image), cmap="gray", vmin=0, vmax=1)
        axis.set_title(title if title == "Fixed" else "%s\nMSE %.2f (x1e-2)" % (title, errors[title]), fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(pair.subject, fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
    return errors


def kept_runs(record_dir):
    """The run folders (relative to the study's folder, e.g. ``disp5/ulae/seed0``) whose records ``record_dir``
    keeps."""
    return {os.path.relpath(folder, record_dir) for folder, _, names in os.walk(record_dir)
            if "study_run.json" in names}


def write_outputs(plan, records, summary, splits, figure_network=None, folders=None, log=print):
    """``deformation_table.md``, ``validation_curves.png`` (with learned rows: every learned run's own curve, a
    panel per row and level, :func:`gsmorph_tf.studies.seed_studies.plot_seed_curves`), ``dice_vs_magnitude.png``
    (with magnitudes), ``ulae_steps.png`` (with ULAE-net: the first test pair of the main level, the first seed's
    run) and ``deformation_study.json`` (settings, summary, every run) in ``plan.output_dir``.

    With a record folder, the outputs are copied there too, unless it keeps runs this call did not cover (its
    ``folders``, relative to ``plan.output_dir``: a call on a subset of the methods, seeds, lambdas or levels, such
    as one of several processes sharing a study): the record folder's outputs are the whole study's, and a subset's
    table must not replace them. ``summary["recorded"]`` says whether they were copied."""
    main = plan.main_level
    test = splits[main]["test"]
    table = study_table(summary, training.pair_count(test))
    atomic_write_text(os.path.join(plan.output_dir, "deformation_table.md"), table + "\n")
    panels = {"%s, %g voxels" % (name, level): runs for level in plan.levels for name, runs in records[level].items()}
    if any(r["validation_curve"] for runs in panels.values() for r in runs):  # a learned run to draw
        seed_studies.plot_seed_curves(panels, os.path.join(plan.output_dir, "validation_curves.png"))
    if summary["magnitudes"]:
        plot_magnitudes(summary, os.path.join(plan.output_dir, "dice_vs_magnitude.png"))
    figure = None
    if ULAE in plan.names:
        run_dir = os.path.join(plan.output_dir, level_name(main), _SLUGS[ULAE], "seed%d" % plan.seeds[0])
        pair = test[0]
        network = network_for_figure(plan, run_dir, figure_network)
        errors = plot_ulae_steps(pair, ulae_step_images(run_dir, pair, network),
                                 os.path.join(plan.output_dir, "ulae_steps.png"))
        figure = {"pair": pair.subject, "run": run_dir, "mse_x100": errors}
    summary["figure"] = figure
    write_json(os.path.join(plan.output_dir, "deformation_study.json"), {
        "config": plan.config.to_dict(), "methods": plan.names, "seeds": list(plan.seeds),
        "lambdas": list(plan.lambdas), "magnitudes": list(plan.magnitudes), "levels": list(plan.levels),
        "machine": machine_description(), "summary": summary,
        "runs": {level_name(level): by_method for level, by_method in records.items()}})
    uncovered = sorted(kept_runs(plan.record_dir) - set(folders or ())) if plan.record_dir else []
    if uncovered:
        log("The outputs were not copied to %s: it keeps %d run(s) this call did not cover (%s%s); the call "
            "covering every run updates them" % (plan.record_dir, len(uncovered), ", ".join(uncovered[:3]),
                                                ", ..." if len(uncovered) > 3 else ""))
    elif plan.record_dir:
        for name in OUTPUTS:
            if os.path.exists(os.path.join(plan.output_dir, name)):
                atomic_copy(os.path.join(plan.output_dir, name), os.path.join(plan.record_dir, name))
    summary["table"], summary["recorded"] = table, bool(plan.record_dir) and not uncovered
