"""`python -m pixelring2nmf ...`: the same as the `pixelring2nmf` console script."""

import sys

from .cli.main import main

sys.exit(main())
