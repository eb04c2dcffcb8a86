"""Search fit.py's options with Optuna, or run one recipe over several seeds.

python scripts/sweep.py --space configs/sweeps/fast_cpu_lr.yaml --config configs/fast_cpu.yaml --n_trials 12
python scripts/sweep.py --config configs/fast_cpu.yaml --seeds 3       # mean +- sd of val/test accuracy
"""

import sys

try:
    from lightning_modules.cli.sweep import sweep_main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: stop quietly, as the command would
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(sweep_main())
