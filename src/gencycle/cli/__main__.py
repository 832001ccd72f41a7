"""`python -m gencycle.cli ...` is the `gencycle` command."""

import sys

from gencycle.cli import main

sys.exit(main())
