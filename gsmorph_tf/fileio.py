"""Small file helpers shared by the package (no TensorFlow import)."""
import json
import os
import shutil


def atomic_write_with(path, write, suffix=""):
    """Call ``write(tmp)`` to write a temp file in the folder of ``path``, then rename it to ``path`` atomically,
    so a reader (or an interrupted run) never sees a half-written file; the temp file is removed if ``write``
    fails. ``suffix`` ends the temp name, for writers that choose the format by the file name (e.g. ``.png``)."""
    tmp = "%s.tmp-%d%s" % (path, os.getpid(), suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_with`)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write_with(path, write)


def atomic_copy(source, path):
    """Copy the file ``source`` to ``path`` (its folders made as needed) atomically (:func:`atomic_write_with`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_with(path, lambda tmp: shutil.copyfile(source, tmp))


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
    """Save a Matplotlib figure to ``path`` (PNG) atomically (:func:`atomic_write_with`)."""
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi), ".png")


def atomic_save_nifti(image, path):
    """Save a nibabel image to ``path`` (``.nii`` or ``.nii.gz``) atomically (:func:`atomic_write_with`), through
    a temp file of the same format."""
    atomic_write_with(path, image.to_filename, ".nii.gz" if str(path).endswith(".nii.gz") else ".nii")
