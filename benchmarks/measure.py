"""Timing, memory and machine-description helpers shared by the benchmark cases."""

import importlib.metadata
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import av
import torch


def synchronize(device: torch.device | str) -> None:
    """Waits for the queued GPU work, so that a timer read afterwards covers it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> float:
    """
    Median wall time of `repeats` calls of `function`, after one untimed warm-up call (lazy initialisation, caches,
    DataLoader workers, CUDA kernels selection).
    """
    function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """
    Peak resident memory of this process so far, in MiB: Linux's `VmHWM`, which starts afresh when a program is
    executed (`ru_maxrss` keeps the peak of the process that forked it), else `ru_maxrss`.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_cuda_peak(device: torch.device | str) -> None:
    """Starts a new `cuda_peak_mb` measurement (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device: torch.device | str) -> float | None:
    """`torch.cuda.max_memory_allocated` in MiB on a GPU, `None` on CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """The machine and software the figures were measured on."""
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "ffmpeg_of_pyav": av.ffmpeg_version_info,
    }
    for package in ("torch", "transformers", "numpy", "decord", "av", "peft", "datasets"):
        info[package] = _version(package)
    return info
