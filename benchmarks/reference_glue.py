"""What the two reference-code comparisons (``reference_training.py`` for GSMorph, ``reference_ulae_training.py`` for
ULAE-net) share on this project's side: checking the separate Python that runs the reference code, and running
a reference script under it with its progress shown. No TensorFlow, no flags."""
import subprocess

from gsmorph_tf.errors import ConfigError


def check_reference_python(python):
    """Raise :class:`~gsmorph_tf.errors.ConfigError` naming ``--reference_python`` and the last line of its error
    unless ``python`` can import torch and numpy."""
    probe = subprocess.run([python, "-c", "import torch, numpy"], capture_output=True, text=True)
    if probe.returncode:
        raise ConfigError("--reference_python=%s cannot import torch and numpy: %s"
                          % (python, (probe.stderr.strip().splitlines() or ["exit status %d" % probe.returncode])[-1]))


def run_streamed(command):
    """Run ``command`` (a reference training script under the reference's Python), printing each line of its
    output as it comes, prefixed ``  reference: ``; ``RuntimeError`` naming the command if it fails."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        print("  reference: " + line.rstrip(), flush=True)
    if process.wait():
        raise RuntimeError("the reference run failed (exit %d): %s" % (process.returncode, " ".join(command)))
