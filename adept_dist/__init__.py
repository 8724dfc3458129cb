"""adept-dist: ADePT (and DePT / prompt tuning) on frozen NF4 LLaMA-family models with DeepSpeed ZeRO-3."""

__version__ = "0.1.0"
