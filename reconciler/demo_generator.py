"""``python -m reconciler.demo_generator``: the demo's catalog generator, by its old name.

Productions (demo.yaml, test_basic.yaml, the init-repo example) and tests name this module;
the generator itself lives in ``reconciler.demo.generate`` beside the campaign's other steps.
"""

from __future__ import annotations

import sys

from reconciler.demo.generate import fails_once, main, seed

__all__ = ["fails_once", "main", "seed"]

if __name__ == "__main__":
    sys.exit(main())
