"""Harness for the container tests: real runtimes driven from the host.

These tests run only inside the container lane (lanes/containers/run), which
starts its own dockerd (and configures podman), builds the reaper image with
examples/Dockerfile, and passes what it made through the environment:
  REAPER_LANE_DOCKER_HOST   unix socket of the lane's dockerd (required)
  REAPER_LANE_DOCKER        the docker client to use (default: docker)
  REAPER_LANE_IMAGE         the image with reaper as its entrypoint
  REAPER_LANE_CGROUP_PARENT the lane's cgroup, where containers go (podman
                            gets it as --cgroup-parent; dockerd has it already)
  REAPER_LANE_PODMAN        1 when podman is configured (CONTAINERS_CONF, ...),
                            REAPER_LANE_PODMAN_IMAGE its image; otherwise
                            REAPER_LANE_PODMAN_WHY says why not
  REAPER_LANE_ARTIFACTS     a directory for output worth keeping (doctor's
                            output, every stop's time and status), printed at
                            the end of the lane
Elsewhere every test here skips with that reason.
"""

import os

import pytest

from runtimes import HERE, docker_runtime, podman_runtime


def pytest_collection_modifyitems(config, items):
    if os.environ.get("REAPER_LANE_DOCKER_HOST"):
        return
    skip = pytest.mark.skip(reason="container tests run in the container lane: bash lanes/containers/run")
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(skip)


@pytest.fixture
def docker():
    rt = docker_runtime()
    try:
        yield rt
    finally:
        rt.cleanup()


@pytest.fixture(params=["docker", "podman"])
def runtime(request):
    rt = docker_runtime() if request.param == "docker" else podman_runtime()
    try:
        yield rt
    finally:
        rt.cleanup()


@pytest.fixture
def artifacts():
    path = os.environ.get("REAPER_LANE_ARTIFACTS")
    if path:
        os.makedirs(path, exist_ok=True)
    return path
