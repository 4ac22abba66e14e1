"""`python -m deploy` is `ovmse run`."""

import sys

from deploy.cli import main

sys.exit(main(["run", *sys.argv[1:]]))
