"""Build script: the pybind11 streaming extension and the top-level kernels/ package.

The extension needs only a C++17 compiler (no CUDA). Metadata lives in pyproject.toml.
"""
from __future__ import annotations

import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext_modules = [
    Pybind11Extension(
        "same_fast._stream",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    )
]

packages = find_packages(include=["same_fast", "same_fast.*"])
packages += ["same_fast.kernels"]

setup(
    packages=packages,
    package_dir={"same_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
