"""The ``adept-export`` command (``launch/export.py``): an adapter from a checkpoint, the merged
export, the PEFT prompt-tuning adapter (imported by no module)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from adept_dist.common.errors import EXIT_USER_ERROR, UserError
from adept_dist.export.merge import merge, peft_adapter
from adept_dist.export.peft import PEFT_FOLDER
from adept_dist.run.checkpoint import export_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="export.py", description="Export an adapter: from a checkpoint, or merged.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", help="adapter folder (OUT/adapter of a run)")
    source.add_argument("--checkpoint", help="a run's checkpoint (OUT/checkpoints/stepN): the adapter of that step")
    p.add_argument("--output", required=True, help="new folder for the adapter or the merged model")
    p.add_argument("--merge", action="store_true", help="fold the token offset into the embedding table")
    p.add_argument("--peft", action="store_true",
                   help=f"also write the soft prompt as a PEFT prompt-tuning adapter: OUTPUT/{PEFT_FOLDER} of the "
                        f"merged model with --merge; OUTPUT itself for a pt adapter on its unchanged base model")  # fmt: skip
    p.add_argument("--model", default=None, help="base model (hub id or folder); default: the adapter config's")
    args = p.parse_args(argv)
    if args.adapter and not args.merge and not args.peft:
        print("error: nothing to do: the adapter folder is already the unmerged export; pass --merge or --peft",
              file=sys.stderr)  # fmt: skip
        return EXIT_USER_ERROR

    def export(adapter_dir: str) -> None:
        if args.merge:
            merge(adapter_dir, args.output, args.model, peft=args.peft)
        else:
            print(f"PEFT prompt-tuning adapter written to {peft_adapter(adapter_dir, args.output, args.model)}")

    try:
        if args.checkpoint and not (args.merge or args.peft):
            out = export_checkpoint(args.checkpoint, args.output, args.model)
            print(f"adapter of {args.checkpoint} written to {out}")
        elif args.checkpoint:  # its adapter first, into a scratch folder, then exported from there
            with tempfile.TemporaryDirectory(prefix="adept-export-") as scratch:
                export(str(export_checkpoint(args.checkpoint, Path(scratch) / "adapter", args.model)))
        else:
            export(args.adapter)
    except UserError as exc:  # a bad adapter, model, checkpoint or file of either (schema.SchemaError), a full disk
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
