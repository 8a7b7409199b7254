"""The joints of the code: imports run one way, without cycles, and the entry points answer ``--help``
without loading TensorFlow."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("gsmorph_tf", "ulae_tf")
ENTRY_POINTS = ("run_train", "run_eval", "run_benchmark", "run_export", "run_register", "run_apply", "run_track",
                "run_study", "run_deformation_study")


def project_modules():
    """``{module name: path}`` of every module of the two packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path, modules, module_level_only=False):
    """Project modules imported by the file at ``path`` (``from p import m`` counts as ``p.m`` when that is
    a module), anywhere in the file or only at module level."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = ["%s.%s" % (node.module, alias.name) if "%s.%s" % (node.module, alias.name) in modules
                     else node.module for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_in_the_two_packages():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert find_cycle(graph) is None, "import cycle: %s" % " -> ".join(find_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_gsmorph_tf_never_imports_ulae_tf():
    """ulae_tf builds on gsmorph_tf; the framework reaches ULAE only through the registry's names."""
    modules = project_modules()
    offenders = {name: sorted(m for m in imports_of(path, modules) if m.startswith("ulae_tf"))
                 for name, path in modules.items() if name.startswith("gsmorph_tf")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_datasets_never_import_models():
    modules = project_modules()
    data = {name: path for name, path in modules.items() if name.startswith("gsmorph_tf.data")}
    models = ("gsmorph_tf.models", "gsmorph_tf.core.model", "ulae_tf")  # the networks are in gsmorph_tf.models
    for name, path in data.items():
        assert not [m for m in imports_of(path, modules) if m.startswith(models)], name


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["gsmorph_tf.config", "gsmorph_tf.registry", "gsmorph_tf.cli",
                                    "gsmorph_tf.plugins", "gsmorph_tf.data.subjects",
                                    "gsmorph_tf.data.preprocessing", "gsmorph_tf.data.learn2reg",
                                    "gsmorph_tf.evaluate.metrics", "gsmorph_tf.studies.seed_studies",
                                    "gsmorph_tf.evaluate.learn2reg_metrics",
                                    "gsmorph_tf.data.learn2reg_points",
                                    # benchmarks/reference_ulae_steps.py imports it under a Python without TensorFlow
                                    "ulae_tf.reference"] + list(ENTRY_POINTS))
def test_light_modules_do_not_load_tensorflow(module):
    done = run_python("import %s, sys; print('tensorflow' in sys.modules)" % module)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_help_lists_the_entry_points_flags(entry_point):
    done = subprocess.run([sys.executable, str(ROOT / ("%s.py" % entry_point)), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]  # absl's --help exits with status 1
    assert ("%s.py:" % entry_point) in done.stdout and "--" in done.stdout


def console_script(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.isfile(path), "%s is not installed next to %s (pip install -e .)" % (name, sys.executable)
    return path


@pytest.mark.parametrize("script, flag", [("gsmorph-train", "--data_dir"), ("gsmorph-eval", "--run_dir"),
                                          ("gsmorph-export", "--export_base"), ("gsmorph-register", "--moving"),
                                          ("gsmorph-benchmark", "--methods"), ("gsmorph-study", "--lambdas"),
                                          ("gsmorph-deformation-study", "--magnitudes"),
                                          ("gsmorph-apply", "--field"), ("gsmorph-track", "--acdc_patient")])
def test_console_scripts_list_their_flags(script, flag):
    done = subprocess.run([console_script(script), "--help"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert flag in done.stdout
