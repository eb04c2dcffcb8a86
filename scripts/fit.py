"""Train a CIFAR-10 classifier, then test its best checkpoint.

python scripts/fit.py                                  # the tutorial recipe (downloads CIFAR-10)
python scripts/fit.py --config configs/fast_cpu.yaml   # ~86% val in ~4 tutorial epochs on 2 CPU cores
python scripts/fit.py --print_config                   # every option, with its current value
python scripts/fit.py --ckpt_path last                 # resume the newest run
"""

import sys

try:
    from lightning_modules.cli.fit import fit_main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: stop quietly, as the command would
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(fit_main())
