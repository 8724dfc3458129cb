"""Memory per GPU and traffic per step of each sharding scope before a job starts, and the one to use.

    python launch/plan.py --model llama-2-13b --nodes 2 --gpus_per_node 8 --gpu_memory 40GB --max_length 1024 \\
        --micro_batch 8 --activation_checkpointing

Which scopes fit in the GPUs' memory (with headroom), the traffic each sends per step inside a node
and across nodes, and the recommended scope with its DeepSpeed JSON (--json, --write_ds_config).
"""

from __future__ import annotations

import sys

from adept_dist.commands.plan import main

if __name__ == "__main__":
    sys.exit(main())
