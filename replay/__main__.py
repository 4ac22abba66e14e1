"""`python -m replay` is `ovmse replay-server`."""

import sys

from deploy.cli import main

sys.exit(main(["replay-server", *sys.argv[1:]]))
