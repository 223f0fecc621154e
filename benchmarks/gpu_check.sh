#!/usr/bin/env bash
# GPU check: prepare Multi30k and the tokenizer in a work folder, train the default model (trainer=gpu,
# bf16-mixed) for a time budget, and print target tokens/s, peak GPU memory and the validation loss.
# It installs nothing and runs the `python` on PATH, so activate the project's environment first
# (source .venv/bin/activate). Without --minutes the whole script ends within about 8 minutes.
#
#   NMT_DATA_DIR=/path/to/multi30k bash benchmarks/gpu_check.sh [--minutes 4] [--work-dir DIR] [--json OUT]
#   bash benchmarks/gpu_check.sh --cpu --json check.json      # tiny model on the CPU, about 20 s of training
#
# Further arguments are Hydra overrides, e.g. model=base train.max_tokens=8000. `--help` lists the options.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! python -c "import nmt" 2>/dev/null; then
    echo "gpu_check.sh: the python on PATH ($(command -v python || echo none)) cannot import nmt;" \
         "activate the project's environment (source .venv/bin/activate)" >&2
    exit 2
fi
exec python "$here/gpu_check.py" "$@"
