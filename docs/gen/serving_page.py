"""mkdocs-gen-files script: ``serving/README.md`` (the TF Serving guide next to its config and client) as a page.

One source: the file stays where the server config and client are, and the site shows it as
``serving/README.md``.
"""
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]

with mkdocs_gen_files.open("serving/README.md", "w") as page:
    page.write((ROOT / "serving" / "README.md").read_text(encoding="utf-8"))
mkdocs_gen_files.set_edit_path("serving/README.md", "../serving/README.md")
