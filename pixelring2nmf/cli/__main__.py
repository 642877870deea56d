"""`python -m pixelring2nmf.cli ...`: the same as the `pixelring2nmf` console script."""

import sys

from .main import main

sys.exit(main())
