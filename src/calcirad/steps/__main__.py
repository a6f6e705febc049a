"""``python -m calcirad.steps <step> ...``: see :mod:`calcirad.steps.cli`."""

import sys

from calcirad.steps.cli import main

sys.exit(main())
