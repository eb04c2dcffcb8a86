"""Classify image files with a trained checkpoint.

python scripts/predict.py --ckpt_path runs/tutorial/version_0/checkpoints/last.ckpt cat.png photos/ "shots/*.jpg"
python scripts/predict.py --ckpt_path tudui_9.pth cat.png --top_k 3 --output preds.json
"""

import sys

try:
    from lightning_modules.cli.predict import predict_main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: stop quietly, as the command would
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(predict_main())
