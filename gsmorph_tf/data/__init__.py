"""Data loading: NIfTI reading, ES->ED slice pairs and tf.data pipelines, per-dataset loaders.

``nifti`` reads files and raises :class:`DatasetError`; ``pairs`` is dataset-independent (cropping, scaling,
subject split, ``tf.data``); ``acdc`` reads the ACDC layout (also used by the synthetic phantom).
"""
from gsmorph_tf.data.acdc import ACDC_LABELS, find_acdc_subjects, load_acdc, load_acdc_subject, read_info_cfg
from gsmorph_tf.data.nifti import DatasetError, load_nifti
from gsmorph_tf.data.pairs import (STRUCTURES, SubjectPairs, crop_or_pad, label_centroid, make_dataset, make_pairs,
                                   scale_to_unit, split_subjects, validate_label_map)

__all__ = [
    "ACDC_LABELS", "DatasetError", "STRUCTURES", "SubjectPairs", "crop_or_pad", "find_acdc_subjects",
    "label_centroid", "load_acdc", "load_acdc_subject", "load_nifti", "make_dataset", "make_pairs",
    "read_info_cfg", "scale_to_unit", "split_subjects", "validate_label_map",
]
from gsmorph_tf.data.mnms import (MNMS_LABELS, find_mnms_subjects, load_mnms, load_mnms_subject,  # noqa: E402
                                  read_mnms_csv)
__all__ += ["MNMS_LABELS", "find_mnms_subjects", "load_mnms", "load_mnms_subject", "read_mnms_csv"]
