"""Small file helpers shared by the package (no TensorFlow import)."""
import json
import os


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temp file in the same folder and an atomic rename, so a reader
    (or an interrupted run) never sees a half-written file."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json_entry(path, entries, name, value):
    """Add ``name: value`` to a JSON object of results kept in ``path`` and write it atomically, merged with what
    ``path`` holds at this moment (its entries win over ``entries``, the caller's earlier copy): two processes
    filling the same results file with different entries (e.g. a benchmark's rates or splits) keep each other's.

    Returns the merged dict (the caller's new copy)."""
    merged = dict(entries)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            merged.update(json.load(f))
    merged[name] = value
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return merged


def atomic_save_figure(fig, path, dpi=120):
    """Save a Matplotlib figure to ``path`` (PNG) through a temp file and an atomic rename, as
    :func:`atomic_write_text`."""
    tmp = "%s.tmp-%d.png" % (path, os.getpid())
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save_nifti(image, path):
    """Save a nibabel image to ``path`` (``.nii`` or ``.nii.gz``) through a temp file of the same format and
    an atomic rename, as :func:`atomic_write_text`."""
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    tmp = "%s.tmp-%d%s" % (path, os.getpid(), suffix)
    try:
        image.to_filename(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
