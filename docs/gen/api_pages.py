"""mkdocs-gen-files script: one API page per module of ``gsmorph_tf`` and ``ulae_tf``, and their navigation.

The packages are walked on disk, so the pages follow the package tree as it is: a module moved or added
needs no change here. Each page is a single ``::: dotted.module`` block that mkdocstrings (griffe, reading the
source statically: nothing is imported) renders from the docstrings. ``api/SUMMARY.md`` is the literate-nav
file of the "API reference" section.
"""
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gsmorph_tf", "ulae_tf")


def modules(package):
    """The dotted names of ``package`` and of every module and subpackage under it, packages first."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "__pycache__" in parts or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(parts)
    return sorted(names)


def page_path(parts, is_package):
    """Where a module's page goes under ``api/``: a package's own page is its folder's ``index.md``."""
    return Path(*parts, "index.md") if is_package else Path(*parts[:-1], parts[-1] + ".md")


summary = ["* [Overview](index.md)"]
for package in PACKAGES:
    names = modules(package)
    packages = {parts for parts in names if (ROOT.joinpath(*parts) / "__init__.py").is_file()}
    for parts in names:
        is_package = parts in packages
        doc_path = page_path(parts, is_package)
        with mkdocs_gen_files.open(Path("api") / doc_path, "w") as page:
            page.write("::: %s\n" % ".".join(parts))
        depth = len(parts) - 1
        if is_package:  # a section named after the package, its own page first, then its modules
            summary.append("    " * depth + "* %s/" % parts[-1])
            depth += 1
        summary.append("    " * depth + "* [%s](%s)" % (parts[-1], doc_path.as_posix()))

with mkdocs_gen_files.open("api/SUMMARY.md", "w") as nav:
    nav.write("\n".join(summary) + "\n")

with mkdocs_gen_files.open("api/index.md", "w") as page:
    page.write("# API reference\n\n"
               "Generated from the docstrings of the `gsmorph_tf` and `ulae_tf` packages, one page per module, "
               "in the order of the package tree (a package's page is its `__init__`). Only public names "
               "(not starting with `_`) are shown. The command-line flags are in the "
               "[flag reference](../flags/index.md).\n\n"
               "Packages: [`gsmorph_tf`](gsmorph_tf/index.md), [`ulae_tf`](ulae_tf/index.md).\n")
