"""Predictions from a trained adapter (or a merged export): one output row per input row.

    python launch/predict.py --adapter runs/rte/adapter --input rows.jsonl --output preds.jsonl
    deepspeed --num_gpus 8 launch/predict.py --adapter runs/rte/adapter --input rows.jsonl --output preds.jsonl

The base model named in the adapter's config is loaded (or --model), the adapter applied, and
each row's prediction written next to the row. Greedy by default; --do_sample --temperature
--top_k --top_p --seed for sampling; --max_new_tokens. On several ranks with a stage-3 --ds_config
the model is loaded layer by layer and partitioned (--shard_scope global|node|none, --loader).
"""

from __future__ import annotations

from adept_dist.commands.predict import command

if __name__ == "__main__":
    command()
