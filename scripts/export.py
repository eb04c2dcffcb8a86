"""Export a checkpoint to ONNX or TorchScript and check it against the checkpoint.

python scripts/export.py --ckpt_path runs/tutorial/version_0/checkpoints/last.ckpt --format onnx --images val_pngs/
"""

import sys

try:
    from lightning_modules.cli.export import export_main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: stop quietly, as the command would
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(export_main())
