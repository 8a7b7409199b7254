"""gsmorph-tf: GSMorph and ULAE-net deformable image registration in TensorFlow (voxelmorph layers)."""
from setuptools import find_packages, setup

setup(
    name="gsmorph-tf",
    version="0.1.0",
    description="GSMorph (gradient surgery) and ULAE-net deformable registration in TensorFlow/Keras",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",  # as TensorFlow and voxelmorph; the text is in LICENSE
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["gsmorph_tf", "gsmorph_tf.*", "ulae_tf", "ulae_tf.*"]),
    package_data={"gsmorph_tf.evaluate": ["learn2reg_surfel_areas.json"]},  # read by its learn2reg_metrics
    py_modules=["run_train", "run_eval", "run_benchmark", "run_export", "run_register", "run_apply", "run_track",
                "run_study", "run_deformation_study"],
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "voxelmorph==0.2",
        "neurite==0.2",
        "nibabel>=5.0,<6",
        "tensorboard==2.21.*",
        "absl-py>=2.0,<3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "matplotlib>=3.7,<4",
        "tqdm>=4.60,<5",
        # SavedModel warm-up file (PredictionLog protos) and the gRPC client; pure Python, needs only TF + grpcio.
        "tensorflow-serving-api==2.21.*",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"],  # make test: two worker processes, a file each (tested: 3.8.0)
        # Classical baselines (Demons, SyN). Tested: SimpleITK 2.5.7, antspyx 0.6.3 (needs numpy<2.4, scipy<1.16).
        "baselines": ["SimpleITK>=2.3,<3", "antspyx>=0.6,<0.7"],
        # 3D brain task for ULAE-net: the MNI152 template and tissue maps nilearn ships (no download).
        "brain": ["nilearn>=0.14,<0.15"],  # tested: nilearn 0.14.1
        # The documentation site (make docs) and its browser test (tests/test_docs_site.py; the browser itself is
        # Debian's chromium + chromium-driver, `make browser`). Tested: mkdocs 1.6.1, mkdocs-material 9.8.2,
        # mkdocstrings 1.0.8, mkdocstrings-python 2.0.11, mkdocs-gen-files 0.6.1, mkdocs-literate-nav 0.6.3,
        # selenium 4.51.0.
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings>=1.0,<2", "mkdocstrings-python>=2.0,<3",
                 "mkdocs-gen-files>=0.5,<0.7", "mkdocs-literate-nav>=0.6,<0.7", "selenium>=4.20,<5"],
    },
    entry_points={"console_scripts": ["gsmorph-train=run_train:run", "gsmorph-eval=run_eval:run",
                                      "gsmorph-benchmark=run_benchmark:run", "gsmorph-export=run_export:run",
                                      "gsmorph-register=run_register:run", "gsmorph-apply=run_apply:run",
                                      "gsmorph-track=run_track:run",
                                      "gsmorph-study=run_study:run",
                                      "gsmorph-deformation-study=run_deformation_study:run"]},
)
