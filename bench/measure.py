"""How the benchmarks of the kernel-work box measure: time per call with the device
synchronized, its median and spread, peak memory above a baseline (CUDA's allocator, or the
process's resident set on CPU), the machine the numbers come from, and its matmul peak, measured in
the same run, that model FLOP/s are read as a fraction of (MFU on CUDA). It imports no benchmark.
"""

import ctypes
import gc
import os
import statistics
import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable, calls: int, device: torch.device) -> float:
    """Milliseconds per call of `calls` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3 / calls


def machine(device: torch.device) -> str:
    """Where the numbers come from; on CPU the load average says how much others were running."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"cpu, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores, "
        f"torch {torch.__version__}"
    )


def summary(samples_ms: list[float]) -> dict:
    """Median and spread (interquartile range and min-max) of per-call times, ms."""
    quartiles = (
        statistics.quantiles(samples_ms, n=4, method="inclusive")
        if len(samples_ms) > 1
        else samples_ms * 3
    )
    return {
        "median_ms": statistics.median(samples_ms),
        "p25_ms": quartiles[0],
        "p75_ms": quartiles[2],
        "min_ms": min(samples_ms),
        "max_ms": max(samples_ms),
        "repeats": len(samples_ms),
    }


def short_error(error: Exception) -> str:
    """`Type: first line of the message`, for the table and the JSON."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"[:200]


def malloc_trim() -> None:
    """Hand free heap pages back to the OS (glibc), so the next RSS baseline is not inflated by
    memory that the last row freed but the allocator kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as file:
            return next(int(line.split()[1]) for line in file if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def process_max_rss_kib() -> int:
    import resource  # POSIX only; Linux reads /proc instead

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)


class PeakMemory:
    """Peak memory above a baseline taken at start(). CUDA: torch.cuda.max_memory_allocated (tensors
    only, not the allocator's cache). CPU: the process's peak resident set size (VmHWM), reset to
    the current RSS through /proc/self/clear_refs; without that (not Linux) getrusage's ru_maxrss,
    a high-water mark of the whole process that cannot be reset."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        if device.type == "cuda":
            self.what = "torch.cuda.max_memory_allocated above the allocated memory at the start"
        elif self._reset_rss_peak():
            self.what = (
                "peak RSS (VmHWM, reset via /proc/self/clear_refs) above the RSS at the start"
            )
        else:
            self.what = (
                "getrusage ru_maxrss (process high-water mark, never reset) above the RSS "
                "at the start"
            )

    @staticmethod
    def _reset_rss_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as file:
                file.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
            return read_proc_status_kib("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        malloc_trim()
        self._reset_rss_peak()
        self.baseline = (read_proc_status_kib("VmRSS") or process_max_rss_kib()) * 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = (read_proc_status_kib("VmHWM") or process_max_rss_kib()) * 1024
        return (peak - self.baseline) / 2**20


# The peak's matmul side: large enough to reach the machine's rate, small enough to take a second.
PEAK_MATMUL_SIZE = {"cpu": 2048, "cuda": 8192, "quick": 256}


def matmul_peak(
    device: torch.device, dtype: torch.dtype, quick: bool = False, repeats: int = 5
) -> tuple[float, str]:
    """This machine's matmul FLOP/s, measured now, and how: the best of `repeats` timings of an
    (n x n) @ (n x n) product in `dtype`, 2 n^3 FLOPs. What the models' FLOP/s are a fraction of
    (on CUDA in bf16: MFU), taken in the same run, under the same load."""
    size = PEAK_MATMUL_SIZE["quick" if quick else device.type]
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    calls = 10 if device.type == "cuda" else 1  # one CUDA call is too short to time alone
    time_calls(lambda: a @ b, calls, device)  # warm-up: kernel choice, clocks, first-touch pages
    best_ms = min(time_calls(lambda: a @ b, calls, device) for _ in range(repeats))
    return 2 * size**3 / (
        best_ms * 1e-3
    ), f"best of {repeats} {size}x{size} @ {size}x{size} matmuls in {dtype}"
