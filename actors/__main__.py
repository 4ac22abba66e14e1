"""`python -m actors` is `ovmse actor`."""

import sys

from deploy.cli import main

sys.exit(main(["actor", *sys.argv[1:]]))
