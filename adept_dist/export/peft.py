"""The soft prompt as a Hugging Face PEFT prompt-tuning adapter (``export.py --peft``).

PEFT's prompt tuning puts m trained vectors in front of the input embeddings, which is all the
soft prompt is once ADePT's token offset lives in the embedding table (``--merge``) or for plain
prompt tuning (``pt``, on the unchanged base model). So

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(MERGED), MERGED / "peft_prompt")

is the trained model, in any code that loads PEFT adapters. (PEFT's own ``generate`` of a
prompt-tuning model needs ``use_cache=False``: with its cache it drifts after the first new token,
peft 0.21.2 with transformers 5.25, as huggingface/peft#1391 reports.) The config is written by PEFT's own
``PromptTuningConfig`` (so its keys are PEFT's); the weights file holds the (m, d) prompt under the
name PEFT's prompt encoders load from. tests/test_merge.py loads both with the installed PEFT: a
PEFT release that reads them otherwise fails there.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch

from adept_dist.common.fileio import replace_folder, temp_folder_for
from adept_dist.export.adapter import AdapterFileError

PEFT_FOLDER = "peft_prompt"  # inside a merged export
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_TENSOR = "prompt_embeddings"


def require_peft():
    """PEFT's PromptTuningConfig class, or one AdapterFileError naming the install."""
    from adept_dist.model.backbone import import_bitsandbytes

    with contextlib.suppress(ImportError):
        import_bitsandbytes()  # PEFT imports it: quicker through here
    try:
        from peft import PromptTuningConfig
    except ImportError:
        raise AdapterFileError("--peft writes a PEFT adapter with PEFT's own classes: pip install peft (or pip "
                               "install -e \".[peft]\")") from None  # fmt: skip
    return PromptTuningConfig


def peft_prompt_config(prompt: torch.Tensor, model_config, base_model: str):
    """PEFT's PromptTuningConfig of an (m, d) soft prompt for the model of `model_config`."""
    PromptTuningConfig = require_peft()  # noqa: N806 - the class, under its own name
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    m, d = prompt.shape
    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=m,
        token_dim=d,
        num_transformer_submodules=1,
        num_attention_heads=text.num_attention_heads,
        num_layers=text.num_hidden_layers,
        base_model_name_or_path=base_model,
    )


def write_peft_prompt(prompt: torch.Tensor, model_config, base_model: str, out_dir: str | Path) -> Path:
    """Write the PEFT prompt-tuning adapter folder (adapter_config.json, adapter_model.safetensors)
    of `prompt` for `base_model` (a folder or hub id; written into the config) atomically."""
    from safetensors.torch import save_file

    config = peft_prompt_config(prompt, model_config, base_model)  # PEFT missing: nothing is written
    out = Path(out_dir)
    tmp = temp_folder_for(out)
    try:
        config.save_pretrained(str(tmp))
        save_file({PEFT_TENSOR: prompt.detach().float().contiguous().cpu()}, str(tmp / PEFT_WEIGHTS),
                  metadata={"format": "pt"})  # fmt: skip
        return replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
