"""``python -m reconciler.cli``: the same as the ``reconcile`` command."""

import sys

from reconciler.cli import main

sys.exit(main())
