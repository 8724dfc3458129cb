"""Memory a process takes while it loads a model: host RSS from /proc/self/status (Linux), and
CUDA's allocator peak on a GPU. Used by ``predict.py`` (its log line and ``ADEPT_MEMORY_REPORT``)
and ``bench/bench_load.py``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

MEMORY_REPORT = "ADEPT_MEMORY_REPORT"  # a file: each rank appends its load figures as one JSON line


def status_mb(field: str) -> float:
    """A /proc/self/status figure in MB (VmRSS: resident now; VmHWM: the peak); NaN where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Set the peak RSS (VmHWM) to the RSS now, so that it says what follows ("5" into
    /proc/self/clear_refs, Linux 4.0+). False where that fails: the peak then counts from the start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class LoadWatch:
    """The peak memory from `start` to `figures`: host RSS, and CUDA's allocator peak on a GPU."""

    device: torch.device
    rss_before_mb: float
    peak_reset: bool

    @classmethod
    def start(cls, device: torch.device) -> LoadWatch:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return cls(device, status_mb("VmRSS"), reset_peak())

    def figures(self) -> dict:
        peak = status_mb("VmHWM")
        out = {
            "rss_before_mb": round(self.rss_before_mb, 1),
            "peak_rss_mb": round(peak, 1),
            "peak_increase_mb": round(peak - self.rss_before_mb, 1),  # what loading added at its peak
            "rss_after_mb": round(status_mb("VmRSS"), 1),
            "peak_reset": self.peak_reset,  # False: the peak may predate the load (an upper bound)
        }
        if self.device.type == "cuda":
            out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out


def append_report(record: dict) -> None:
    """One JSON line appended to $ADEPT_MEMORY_REPORT, if set (one short write: ranks do not interleave)."""
    path = os.environ.get(MEMORY_REPORT)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


DEVICE_MEMORY = "ADEPT_DEVICE_MEMORY"  # bytes (or 40GB, 24GiB) a rank may use, instead of its device's


def device_bytes(device: torch.device, ranks_on_host: int) -> int | str:
    """Memory one rank may use: $ADEPT_DEVICE_MEMORY as given (a share of a GPU, or a run planned for
    other devices), else the GPU's total on CUDA, else this host's RAM shared by its ranks."""
    if os.environ.get(DEVICE_MEMORY):
        return os.environ[DEVICE_MEMORY]
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(ranks_on_host, 1)
