"""``python -m napari_meddift.cli``."""

import sys

from . import main

sys.exit(main())
