"""Only the package list, which pyproject.toml cannot express: every package under recbole_ckd/
plus recbole_ckd.properties, which is the top-level properties/ folder (see pyproject.toml)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["recbole_ckd", "recbole_ckd.*"]) + ["recbole_ckd.properties"])
