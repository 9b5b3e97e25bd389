"""``python -m capo ...`` (also how ``--num-processes`` relaunches under torchrun)."""

import json
import os
import sys

from capo.cli import main

if "CAPO_ARGV" in os.environ:  # set by `--num-processes K`: the original arguments
    sys.argv = [sys.argv[0], *json.loads(os.environ.pop("CAPO_ARGV"))]
main()
