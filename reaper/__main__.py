"""`python -m reaper`: the same entry point as the `reaper` console script."""

import sys

from reaper.cli import main

sys.exit(main())
