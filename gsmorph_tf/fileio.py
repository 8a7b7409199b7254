"""Small file helpers shared by the package (no TensorFlow import)."""
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
