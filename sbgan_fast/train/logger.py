"""The log of a run: ``stats.jsonl`` (one JSON object per log interval), TensorBoard scalars and images, and a
rank-0 progress bar with images/s and ETA."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Dict

from ..config import TrainConfig


class RunLogger:
    """JSONL stats, TensorBoard scalars/images and a rank-0 progress bar with images/s and ETA."""

    def __init__(self, cfg: TrainConfig, out_dir: str, enabled: bool = True):
        self.cfg, self.out_dir, self.enabled = cfg, out_dir, enabled
        self.tb = None
        self.bar = None
        self._warned_tb = False
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self.stats_path = os.path.join(out_dir, "stats.jsonl")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except Exception as e:  # noqa: BLE001 - tensorboard missing or broken
                print(f"[sbgan_fast] TensorBoard logging off ({type(e).__name__}: {e}); "
                      "install 'tensorboard' to enable it", file=sys.stderr)

    def start_stage(self, stage: str, start: int, total: int, images_per_step: float) -> None:
        self._t0, self._s0 = time.perf_counter(), start
        self._ips = images_per_step
        if not self.enabled or not self.cfg.progress:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=start, desc=f"{stage:>5}", dynamic_ncols=True, unit="step",
                        file=sys.stderr, mininterval=1.0)

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (e.g. an FID evaluation) out of the images/s figure."""
        if hasattr(self, "_t0"):
            self._t0 += seconds

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, stage: str, step: int, images: int, scalars: Dict[str, float]) -> Dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        done = step - self._s0
        rec = {"stage": stage, "step": step, "images": images, "time": time.time(),
               "images_per_s": (done * self._ips / elapsed) if elapsed > 0 and done > 0 else 0.0}
        rec.update({k: float(v) for k, v in scalars.items()})
        if not self.enabled:
            return rec
        with open(self.stats_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("stage", "step", "time", "images") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(f"{stage}/{k}", v, images)
        if self.bar is not None:
            short = {k: f"{v:.3g}" for k, v in scalars.items() if k.startswith("loss")}
            short["img/s"] = f"{rec['images_per_s']:.1f}"
            self.bar.set_postfix(short, refresh=False)
        return rec

    def truncate(self, stage: str, step: int) -> int:
        """Remove the records of ``stage`` after ``step`` from ``stats.jsonl`` (a stage resumed from the
        checkpoint of ``step`` logs the later steps again, so each step is recorded once), and a partial last
        line left by a killed write. Returns the number of lines removed."""
        if not self.enabled or not os.path.isfile(self.stats_path):
            return 0
        with open(self.stats_path, "r", encoding="utf-8") as f:
            lines = f.readlines()
        keep = []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines) - 1 and not line.endswith("\n"):
                    continue          # a partial record of a killed write
                keep.append(line)
                continue
            if isinstance(rec, dict) and rec.get("stage") == stage and isinstance(rec.get("step"), (int, float)) \
                    and rec["step"] > step:
                continue
            keep.append(line if line.endswith("\n") else line + "\n")
        if len(keep) == len(lines):
            return 0
        tmp = f"{self.stats_path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, self.stats_path)
        return len(lines) - len(keep)

    def image(self, tag: str, hwc_uint8, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, hwc_uint8, step, dataformats="HWC")

    def end_stage(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.end_stage()
        if self.tb is not None:
            self.tb.close()
