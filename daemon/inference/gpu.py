"""GPU utilisation and memory for the worker heartbeat, through NVML when it is there.

Optional: needs the ``nvidia-ml-py`` package (the ``gpu`` extra) and an NVIDIA driver.
Without them ``gpu_stats`` returns an empty list and nothing is exported.
"""

from __future__ import annotations

import logging
import os
import subprocess
from functools import lru_cache

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _nvml():  # noqa: ANN202 - the pynvml module or None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no package, no driver, no device: all mean "no GPU metrics"
        return None
    return pynvml


def visible_indices(count: int) -> list[int]:
    """Indices of the GPUs this process may use (CUDA_VISIBLE_DEVICES), among ``count``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return list(range(count))
    out = []
    for part in visible.split(","):
        part = part.strip()
        if part.isdigit() and int(part) < count:
            out.append(int(part))
    return out


def gpu_stats() -> list[dict]:
    """[{index, utilization_ratio, memory_used_bytes, memory_total_bytes}] or []."""
    nvml = _nvml()
    if nvml is None:
        return []
    stats = []
    try:
        for index in visible_indices(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            stats.append(
                {
                    "index": index,
                    "utilization_ratio": util.gpu / 100.0,
                    "memory_used_bytes": int(memory.used),
                    "memory_total_bytes": int(memory.total),
                }
            )
    except Exception:
        log.warning("could not read GPU statistics", exc_info=True)
        return []
    return stats


def gpu_names() -> list[str]:
    """The visible NVIDIA cards' names (NVML, else ``nvidia-smi``); [] when none is found."""
    nvml = _nvml()
    if nvml is not None:
        try:
            names = []
            for index in visible_indices(nvml.nvmlDeviceGetCount()):
                name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(index))
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            return names
        except Exception:  # noqa: BLE001 - fall back to nvidia-smi
            pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]
