"""`python -m aiarch` is the `aiarch` command."""

import sys

from aiarch.cli import main

sys.exit(main())
