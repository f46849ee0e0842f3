#!/usr/bin/env python
"""Train and evaluate agents on siftmoe_gym (see docs/training.md).

    python train.py --quick
    python train.py --env siftmoe_gym/Decode-v0 --algo ppo --steps 200000 --seed 0 --n-envs 8 --logdir runs/
    python train.py evaluate --model runs/<run>/final_model.zip
    python train.py compare --scenarios benchmarks/scenarios/default.yml --out runs/compare
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
