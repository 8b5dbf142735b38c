"""`python -m easyedit_split.cli`: the same as the `easyedit-split` console script."""
import sys

from . import main

sys.exit(main())
