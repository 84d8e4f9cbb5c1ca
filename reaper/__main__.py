"""`python -m reaper`: the same entry point as the `reaper` launcher."""

from reaper.cli import run

run()
