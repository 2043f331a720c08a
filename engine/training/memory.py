"""Device memory in use and its capacity, for the memory gauges."""

from __future__ import annotations

import os
import resource

import torch


def device_memory(device: torch.device) -> tuple[float, float]:
    """``(used, limit)`` in bytes: CUDA allocated/total, or process RSS/physical RAM."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return float(torch.cuda.memory_allocated(idx)), float(torch.cuda.get_device_properties(idx).total_memory)
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * page
    except OSError:  # not Linux: peak RSS is the best cheap proxy (KiB on Linux/BSD)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return float(rss), float(page * os.sysconf("SC_PHYS_PAGES"))
