"""``python -m same_fast`` is the ``same-fast`` command."""
import sys

from same_fast.cli import main

sys.exit(main())
