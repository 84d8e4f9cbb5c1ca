"""The `pytest11` entry point: installs nothing until the user asks for it.

Entry-point plugins are loaded into every pytest run of the environment, so
this one only adds `--reaper` (and the ini option `reaper = true`); with
either, it registers reaper.pytest, the plugin itself.  `pytest -p reaper.pytest`
loads that module directly and needs none of this.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reaper", "reaper: every test as a job")
    group.addoption("--reaper", action="store_true", default=False,
                    help="run each test as a reaper job: processes it leaves behind fail it "
                         "and are killed (same as -p reaper.pytest)")
    parser.addini("reaper", type="bool", default=False,
                  help="like --reaper: run each test as a reaper job")


def pytest_configure(config: pytest.Config) -> None:
    if not (config.getoption("reaper") or config.getini("reaper")):
        return
    if config.pluginmanager.has_plugin("reaper.pytest"):
        return
    from reaper import pytest as plugin
    config.pluginmanager.register(plugin, "reaper.pytest")
