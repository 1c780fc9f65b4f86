"""Build hook for hvsim: cffi compiles the hypervisor core (native/) into hypervisor._hvcore.

Everything else about the package is declared in pyproject.toml; `cffi_modules` is a setup()
keyword that pyproject cannot express, which is the only reason this file exists.
"""
from setuptools import setup

setup(cffi_modules=["native/build_core.py:ffibuilder"])
