"""`python -m services.cli ...`, the same as `cx ...`."""

import sys

from services.cli import main

sys.exit(main())
