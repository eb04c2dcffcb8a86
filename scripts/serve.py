"""Serve a checkpoint over HTTP (POST /predict, GET /health).

python scripts/serve.py --ckpt_path runs/tutorial/version_0/checkpoints/last.ckpt --port 8000
curl --data-binary @cat.png http://127.0.0.1:8000/predict
curl -F file=@cat.png http://127.0.0.1:8000/predict
"""

import sys

try:
    from lightning_modules.cli.serve import serve_main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: stop quietly, as the command would
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(serve_main())
