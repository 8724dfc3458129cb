"""adept-dist: ADePT (and DePT / prompt tuning) on frozen NF4 LLaMA-family models with DeepSpeed ZeRO-3."""

import logging

__version__ = "0.1.0"


def _hub_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes on a CPU with AVX512-BF16 tries to fetch an optional NF4 matmul kernel from the
    Hugging Face hub at import and logs a warning when it cannot (offline, or an unverified
    publisher), once per rank. It then uses its own CPU kernel, which gives the same results (every
    CPU figure in docs/ was measured with it): nothing for a user to act on, so not shown."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_hub_kernel_notice)
