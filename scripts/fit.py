"""Train a CIFAR-10 classifier, then test its best checkpoint.

python scripts/fit.py                                  # the tutorial recipe
python scripts/fit.py --config configs/tutorial.yaml --trainer.max_epochs 3
python scripts/fit.py --print_config                   # every option, with its current value
python scripts/fit.py --ckpt_path last                 # resume the newest run
"""

from lightning_modules.cli import fit_main

if __name__ == "__main__":
    fit_main()
