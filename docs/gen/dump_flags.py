"""Print, as JSON, the absl flags one entry point defines: ``python docs/gen/dump_flags.py run_train.py``.

Run by ``flag_pages.py`` in a subprocess per entry point (two modules that define absl flags cannot be
imported into one process: the second raises DuplicateFlagError). The entry point is imported, not run: its
flags are defined at import and its heavy imports wait for ``main``. Printed: a list of flags with the module
that defines each (the entry point itself, or a shared helper of ``gsmorph_tf``), its type, default, allowed
values and help text; absl's own flags (``--flagfile``, ``--helpfull``, logging) are left out.
"""
import importlib.util
import json
import sys
from pathlib import Path

from absl import flags


def describe(flag, module):
    """One flag as a JSON-able dict."""
    parser = flag.parser
    default = flag.default
    if isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
    elif default is not None and not isinstance(default, (bool, int, float, str)):
        default = str(default)
    return {"name": flag.name, "short_name": flag.short_name, "module": module, "type": flag.flag_type(),
            "default": default, "help": flag.help or "",
            "choices": list(getattr(parser, "enum_values", None) or []) or None,
            "lower_bound": getattr(parser, "lower_bound", None), "upper_bound": getattr(parser, "upper_bound", None)}


def main(path):
    path = Path(path).resolve()
    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root), str(path.parent)]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    own = (path.stem, "gsmorph_tf", "ulae_tf", "benchmarks")
    result = []
    for module_name, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if module_name.split(".")[0] not in own and module_name != "__main__":
            continue
        for flag in module_flags:
            result.append(describe(flag, path.stem if module_name in (path.stem, "__main__") else module_name))
    json.dump({"entry_point": path.relative_to(root).as_posix(), "doc": (module.__doc__ or "").strip(),
               "flags": sorted(result, key=lambda f: f["name"])}, sys.stdout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
