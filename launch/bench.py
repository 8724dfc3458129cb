"""Training speed side by side: floor (frozen forward + input backward), anchor (Hugging Face PEFT
prompt tuning, 100 tokens) and ours (adept-dist's train step, world 1 and 2), on one random
LLaMA-architecture model with the same quantisation, batch and lengths. See adept_dist/bench.py.

    python launch/bench.py                                   # defaults: a few minutes on a 2-core CPU
    python launch/bench.py --hidden 4096 --layers 32 --heads 32 --vocab 32000 --min_len 1024 --max_len 1024 \\
        --batch 4 --modes floor,anchor,ours,ours_ckpt --json bench_7b.json       # LLaMA-7B shape, on a GPU
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from adept_dist.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
