"""`python -m learner` is `ovmse learner`."""

import sys

from deploy.cli import main

sys.exit(main(["learner", *sys.argv[1:]]))
