"""Score any checkpoint (ours or the tutorial's .pth) on a labelled split, with the report fit.py writes.

python scripts/evaluate.py --ckpt_path runs/fast_cpu/version_0/checkpoints/last.ckpt --data.data_dir data
python scripts/evaluate.py --ckpt_path tudui_9.pth --split val --tta none
"""

import sys

try:
    from lightning_modules.cli.evaluate import evaluate_main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: stop quietly, as the command would
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(evaluate_main())
