"""Compare training runs: a table of recipe, epochs, time and accuracy, and a PNG of their curves.

python scripts/compare.py runs/tutorial/version_0 runs/tutorial/version_1 --output compare.png
"""

import sys

try:
    from lightning_modules.cli.compare import compare_main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: stop quietly, as the command would
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(compare_main())
