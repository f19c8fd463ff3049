"""`python -m circuitfind.cli`: the `circuitfind` command."""

import sys

from circuitfind.cli import main

sys.exit(main())
