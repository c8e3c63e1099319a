"""Write the average of several trained models' weights (one architecture) as a model folder.

python scripts/average_weights.py runs/soup runs/ft12/best runs/ft13/best
"""

from __future__ import annotations

import argparse
import sys

from spnrefine.checkpoint import save_model
from spnrefine.errors import SpnrefineError
from spnrefine.train.average import average_weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write model.safetensors + config.json into")
    parser.add_argument("weights", nargs="+", help="weights specs (folders, files, hf-hub:...)")
    args = parser.parse_args()
    try:
        model = average_weights(args.weights)
    except SpnrefineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {save_model(model, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
