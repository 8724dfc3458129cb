"""Train an ADePT / DePT / PT adapter: parse, init distributed, build, train, close.

    deepspeed launch/train.py --ds_config ds_configs/zero3.json --model meta-llama/Llama-2-7b-hf \\
        --train_file train.jsonl --eval_file dev.jsonl --output_dir runs/rte

With no --model and no data it trains the built-in tiny model on the built-in task.
"""

from __future__ import annotations

from adept_dist.commands.train import command

if __name__ == "__main__":
    command()
