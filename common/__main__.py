"""`python -m common` is the `ovmse` command."""

import sys

from common.cli import main

sys.exit(main())
