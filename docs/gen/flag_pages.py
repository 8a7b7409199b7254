"""mkdocs-gen-files script: the flag reference, one page per entry point, from the absl definitions.

Every ``run_*.py`` at the repository root and every ``benchmarks/*.py`` that defines absl flags is imported in
its own subprocess (``dump_flags.py``; two such modules cannot share a process), which prints its flags as
JSON; a page per entry point lists them with type, default and help. A child that fails stops the build
with its error output. The child runs under ``GSMORPH_FLAGS_PYTHON`` if set, else under the Python that
runs mkdocs (the project's ``.venv`` for ``make docs``), with the repository first on ``PYTHONPATH``.
"""
import html
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("GSMORPH_FLAGS_PYTHON") or sys.executable


def entry_points():
    """The scripts whose flags are documented: run_*.py, then benchmark scripts that define absl flags.

    ``GSMORPH_DOCS_FLAGS=entry_points`` leaves the benchmark scripts out (the site test does, to stay short: three
    of them import TensorFlow when imported); ``make docs`` documents them all.
    """
    scripts = sorted(ROOT.glob("run_*.py"))
    which = os.environ.get("GSMORPH_DOCS_FLAGS", "all")
    if which not in ("all", "entry_points"):
        raise ValueError("GSMORPH_DOCS_FLAGS must be 'all' or 'entry_points', got %r" % which)
    if which == "all":
        scripts += [p for p in sorted((ROOT / "benchmarks").glob("*.py")) if "flags.DEFINE" in p.read_text()]
    return scripts


def dump_all(scripts):
    """Run one ``dump_flags.py`` child per script (in parallel) and return their parsed JSON, in order."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    children = [subprocess.Popen([PYTHON, str(ROOT / "docs" / "gen" / "dump_flags.py"), str(script)], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for script in scripts]
    results = []
    for script, child in zip(scripts, children):
        out, err = child.communicate(timeout=300)
        if child.returncode != 0:
            raise RuntimeError("reading the flags of %s with %s failed (exit %d):\n%s"
                               % (script.relative_to(ROOT), PYTHON, child.returncode, err[-4000:]))
        results.append(json.loads(out))
    return results


def cell(text):
    """Text safe inside a Markdown table cell: HTML-escaped, pipes and emphasis characters escaped."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    for char in "|*_`[]":
        text = text.replace(char, "\\" + char)
    return text


def code(value):
    """A value as a code span (empty string shown as ``''``)."""
    value = "''" if value == "" else str(value)
    return "<code>%s</code>" % html.escape(value).replace("|", "&#124;")


def type_cell(flag):
    kind = flag["type"]  # an enum's values are in its help text ("<a|b|c>: ...")
    bounds = []
    if flag["lower_bound"] is not None:
        bounds.append(">= %s" % flag["lower_bound"])
    if flag["upper_bound"] is not None:
        bounds.append("<= %s" % flag["upper_bound"])
    if bounds:
        kind += " (%s)" % ", ".join(bounds)
    return kind


def page_name(entry):
    return entry.replace("/", "_").removesuffix(".py") + ".md"


def first_paragraph(doc):
    """The docstring's first paragraph as Markdown: reST literals and roles become code spans."""
    text = " ".join(doc.split("\n\n")[0].split())
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text).replace("``", "`")
    return text.replace("|", "\\|")


def write_page(data):
    entry = data["entry_point"]
    lines = ["# `%s`" % entry, ""]
    if data["doc"]:
        lines += [first_paragraph(data["doc"]), ""]
    lines += ["Generated from the flag definitions (`python %s --helpfull` prints the same). Every entry point "
              "also takes absl's own flags (`--flagfile`, `--helpfull`, `--verbosity`, ...); a flagfile named "
              "without a folder is also looked up in the project's `flags/`." % entry, ""]
    by_module = {}
    for flag in data["flags"]:
        by_module.setdefault(flag["module"], []).append(flag)
    stem = Path(entry).stem
    for module in sorted(by_module, key=lambda m: (m != stem, m)):
        title = ("Flags of `%s`" % entry) if module == stem else ("Flags defined in `%s`" % module)
        lines += ["## " + title, "", "| Flag | Type | Default | Help |", "|---|---|---|---|"]
        for flag in by_module[module]:
            name = "--" + flag["name"] + ((" (-%s)" % flag["short_name"]) if flag["short_name"] else "")
            default = "" if flag["default"] is None else code(flag["default"])
            lines.append("| %s | %s | %s | %s |" % (code(name), type_cell(flag), default, cell(flag["help"])))
        lines.append("")
    if not data["flags"]:
        lines += ["This script defines no flags of its own.", ""]
    with mkdocs_gen_files.open("flags/" + page_name(entry), "w") as page:
        page.write("\n".join(lines))


results = dump_all(entry_points())
for data in results:
    write_page(data)
runs = [d for d in results if not d["entry_point"].startswith("benchmarks/")]
benchmarks = [d for d in results if d["entry_point"].startswith("benchmarks/")]
index = ["# Flag reference", "",
         "Every command-line flag of every entry point, generated from the absl definitions when the site is "
         "built (each script is imported in its own process and its flags read back), so it cannot drift from "
         "the code. `python <script> --help` prints the same at the command line.", "",
         "## Entry points", ""]
index += ["- [`%s`](%s): %s" % (d["entry_point"], page_name(d["entry_point"]), first_paragraph(d["doc"]))
          for d in runs]
if benchmarks:
    index += ["", "## Benchmark scripts", ""]
    index += ["- [`%s`](%s)" % (d["entry_point"], page_name(d["entry_point"])) for d in benchmarks]
with mkdocs_gen_files.open("flags/index.md", "w") as page:
    page.write("\n".join(index) + "\n")
summary = ["* [Overview](index.md)", "* Entry points"]
summary += ["    * [%s](%s)" % (Path(d["entry_point"]).name, page_name(d["entry_point"])) for d in runs]
if benchmarks:
    summary += ["* Benchmark scripts"]
    summary += ["    * [%s](%s)" % (Path(d["entry_point"]).name, page_name(d["entry_point"])) for d in benchmarks]
with mkdocs_gen_files.open("flags/SUMMARY.md", "w") as nav:
    nav.write("\n".join(summary) + "\n")
