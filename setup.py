"""Build-time part of the packaging (the metadata is in pyproject.toml).

Two compiled pieces, both built with the C compiler python-prctl needs anyway:
- reaper._clone3 (reaper/_clone3.c): clone3(CLONE_INTO_CGROUP) without ctypes;
- the `reaper` launcher: see reaper/_launcher.py.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("reaper._clone3", ["reaper/_clone3.c"])])
