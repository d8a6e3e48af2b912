"""GPU monitoring for the training logs: utilisation, memory, temperature and power through NVML
(``nvidia-ml-py``, imported as ``pynvml``), and the peak memory of torch's CUDA allocator.

Each process samples its own GPU; the trainer gathers the samples on rank 0, which writes them into
``stats.jsonl`` and TensorBoard. Without a GPU, without ``nvidia-ml-py`` or when NVML cannot start
(no driver), :class:`GPUMonitor` says once why monitoring is off and its samples are empty (the
allocator peak is still reported on a GPU without NVML).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Optional

import torch

# Order of the per-GPU values in a sample (also the order of the gathered tensor).
FIELDS = ("gpu_util_pct", "gpu_mem_used_mib", "gpu_mem_total_mib", "gpu_temp_c", "gpu_power_w",
          "peak_alloc_mib", "peak_reserved_mib")

_MIB = 1024.0 * 1024.0


def _say(msg: str) -> None:
    print(f"[sbgan_fast] {msg}", file=sys.stderr)


def _import_nvml():
    try:
        import pynvml  # provided by the nvidia-ml-py package
    except Exception as e:  # noqa: BLE001 - missing package or a broken one
        return None, f"nvidia-ml-py is not installed ({type(e).__name__}: {e}); pip install nvidia-ml-py"
    return pynvml, None


class GPUMonitor:
    """Samples one CUDA device.

    Args:
        device: the training device of this process. Not CUDA: monitoring is off.
        nvml: the NVML module to use (default: ``import pynvml``; tests pass a fake).
        say: where the one-time "monitoring is off" message goes (default: stderr).
        quiet: no message (the other ranks of a distributed run).

    ``sample()`` returns ``{field: float}`` for :data:`FIELDS` that could be read (NVML fields only when
    NVML works, allocator peaks whenever the device is CUDA); an empty dict when monitoring is off.
    """

    def __init__(self, device: torch.device, *, nvml=None, say: Optional[Callable[[str], None]] = None,
                 quiet: bool = False):
        self.device = torch.device(device)
        self._say = (lambda m: None) if quiet else (say or _say)
        self.nvml = None
        self.handle = None
        self.reason: Optional[str] = None
        self._failed_fields: set = set()
        if self.device.type != "cuda":
            self.reason = f"training on {self.device.type}, not a GPU"
            self._say(f"GPU monitoring off: {self.reason}")
            return
        mod, why = (nvml, None) if nvml is not None else _import_nvml()
        if mod is None:
            self.reason = why
            self._say(f"GPU monitoring (NVML) off: {why}; only the allocator's peak memory is logged")
            return
        try:
            mod.nvmlInit()
            self.handle = self._handle(mod)
            self.nvml = mod
        except Exception as e:  # noqa: BLE001 - NVMLError subclasses, missing driver library
            self.reason = f"NVML cannot start ({type(e).__name__}: {e})"
            self._say(f"GPU monitoring (NVML) off: {self.reason}; only the allocator's peak memory is logged")

    @property
    def enabled(self) -> bool:
        return self.device.type == "cuda"

    @property
    def nvml_enabled(self) -> bool:
        return self.handle is not None

    def _handle(self, mod):
        """The NVML handle of this process's CUDA device: by UUID when torch reports it, else by the
        physical index behind CUDA_VISIBLE_DEVICES, else by the CUDA index."""
        idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            uuid = str(torch.cuda.get_device_properties(idx).uuid)
            if uuid:
                return mod.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        except Exception:  # noqa: BLE001 - older torch or NVML without that UUID form
            pass
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        parts = [p.strip() for p in visible.split(",") if p.strip()]
        if parts and idx < len(parts) and parts[idx].isdigit():
            return mod.nvmlDeviceGetHandleByIndex(int(parts[idx]))
        return mod.nvmlDeviceGetHandleByIndex(idx)

    def _read(self, name: str, fn) -> Optional[float]:
        if name in self._failed_fields:
            return None
        try:
            return float(fn())
        except Exception as e:  # noqa: BLE001 - a field not supported on this GPU (e.g. power on some boards)
            self._failed_fields.add(name)
            self._say(f"GPU monitoring: {name} not available ({type(e).__name__}: {e}); not logged")
            return None

    def sample(self) -> Dict[str, float]:
        if not self.enabled:
            return {}
        out: Dict[str, float] = {}
        if self.handle is not None:
            m, h = self.nvml, self.handle
            vals = {
                "gpu_util_pct": lambda: m.nvmlDeviceGetUtilizationRates(h).gpu,
                "gpu_mem_used_mib": lambda: m.nvmlDeviceGetMemoryInfo(h).used / _MIB,
                "gpu_mem_total_mib": lambda: m.nvmlDeviceGetMemoryInfo(h).total / _MIB,
                "gpu_temp_c": lambda: m.nvmlDeviceGetTemperature(h, m.NVML_TEMPERATURE_GPU),
                "gpu_power_w": lambda: m.nvmlDeviceGetPowerUsage(h) / 1000.0,
            }
            for name, fn in vals.items():
                v = self._read(name, fn)
                if v is not None:
                    out[name] = v
        if torch.cuda.is_available():
            out["peak_alloc_mib"] = torch.cuda.max_memory_allocated(self.device) / _MIB
            out["peak_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / _MIB
        return out

    def reset_peak(self) -> None:
        """Start a new allocator peak (the trainer calls it at each stage start)."""
        if self.enabled and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(self.device)

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self.nvml = None
            self.handle = None


def to_vector(sample: Dict[str, float]) -> List[float]:
    """A sample as a fixed-length list in :data:`FIELDS` order (NaN for a missing field)."""
    return [float(sample.get(k, float("nan"))) for k in FIELDS]


def records(per_rank: List[List[float]]) -> Dict[str, float]:
    """Gathered per-rank vectors -> flat log entries: ``<field>`` for a single process,
    ``r<rank>/<field>`` for several, plus ``peak_alloc_mib_max`` over the ranks. Missing (NaN)
    fields are dropped."""
    out: Dict[str, float] = {}
    single = len(per_rank) == 1
    for r, vec in enumerate(per_rank):
        for k, v in zip(FIELDS, vec):
            if v == v:  # not NaN
                out[k if single else f"r{r}/{k}"] = float(v)
    peaks = [vec[FIELDS.index("peak_alloc_mib")] for vec in per_rank]
    peaks = [p for p in peaks if p == p]
    if peaks and not single:
        out["peak_alloc_mib_max"] = max(peaks)
    return out


__all__ = ["FIELDS", "GPUMonitor", "records", "to_vector"]
