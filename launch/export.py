"""Export a trained adapter.

    python launch/export.py --adapter runs/rte/adapter --merge --output runs/rte/merged
    python launch/export.py --checkpoint runs/rte/checkpoints/step00002000 --output runs/rte/adapter-2000

--checkpoint writes the adapter of that step, as the run writes OUT/adapter, from the checkpoint's
whole fp32 adapter state (no GPU, any world size); with --merge, its merged export.

--merge folds ADePT's token offset into the embedding table (E + FFN(E)) and writes a standalone
Hugging Face model folder (output head untied where the base model tied it) plus the soft prompt
as soft_prompt.safetensors: serving it costs what m-token prompt tuning costs, in any runtime that
accepts input embeddings. The base model is the one in the adapter's config, or --model.
"""

from __future__ import annotations

import sys

from adept_dist.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
