"""Build-time part of the packaging (the metadata is in pyproject.toml).

reaper._linux (reaper/_linux.c) is compiled here, with the C compiler that
python-prctl needs anyway: clone3(CLONE_INTO_CGROUP) without ctypes (see
reaper/spawn.py).  Without the Python headers gcc would fail on
`#include <Python.h>` and name no package; say which one instead.
"""

import os
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def run(self):
        include = sysconfig.get_paths()["include"]
        if not os.path.exists(os.path.join(include, "Python.h")):
            raise SystemExit(
                f"process-reaper: {include}/Python.h is missing: install the Python development "
                "headers and a C compiler (Debian/Ubuntu: apt-get install python3-dev gcc "
                "libcap-dev; Fedora: dnf install python3-devel gcc libcap-devel)")
        super().run()


setup(ext_modules=[Extension("reaper._linux", ["reaper/_linux.c"])],
      cmdclass={"build_ext": BuildExt})
