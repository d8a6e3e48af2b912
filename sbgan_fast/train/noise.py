"""The noise of a training step: drawn per process or as slices of the global batch's draws
(:class:`StepNoise`), or given by the caller (:class:`GivenNoise`). Every draw is named; each stage lists its
draws in its ``NOISE`` attribute."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from .dist import DistInfo


class StepNoise:
    """Random draws of one training step for this process's share of the batch.

    * ``mode='rank'`` (default): drawn from this process's own RNG (seeded per rank); the Gumbel noise and
      the penalty's interpolation weights are left to their consumers (``None``), which draw them
      themselves (the Gumbel noise in-kernel on the GPU fast path).
    * ``mode='global'``: every process draws the noise of the whole global batch from the same RNG
      stream and keeps its slice, so a run gives the same result (up to floating-point summation
      order) for any number of processes and any ``accum``. It costs drawing ``world`` times the
      noise; the multi-process equivalence tests use it. With one process both modes draw the same
      numbers in the same order.

    Every draw is named (``z_G``, ``gumbel_G``, ``z_D``, ``gumbel_D``, ``eps_D``, ``z_D2``: see each stage's
    ``NOISE``); :class:`GivenNoise` answers the same calls with tensors chosen by the caller.
    """

    def __init__(self, mode: str, info: DistInfo, device: torch.device):
        if mode not in ("rank", "global"):
            raise ValueError(f"dist_noise must be 'rank' or 'global', got {mode!r}")
        self.mode, self.info, self.device = mode, info, device

    @property
    def is_global(self) -> bool:
        return self.mode == "global"

    def _draw(self, fn, n: int, shape) -> torch.Tensor:
        w = self.info.world
        if self.mode == "rank" or w == 1:
            return fn((n,) + tuple(shape))
        full = fn((n * w,) + tuple(shape))
        r = self.info.rank
        return full[r * n:(r + 1) * n]

    def randn(self, n: int, *shape: int, name: str = "") -> torch.Tensor:
        """(n, *shape) standard normal fp32 on the device."""
        return self._draw(lambda s: torch.randn(s, device=self.device), n, shape)

    def rand(self, n: int, *shape: int, name: str = "") -> Optional[torch.Tensor]:
        """(n, *shape) uniform [0,1) fp32, or None in 'rank' mode (the consumer draws it itself)."""
        if not self.is_global:
            return None
        return self._draw(lambda s: torch.rand(s, device=self.device), n, shape)

    def gumbel(self, n: int, *shape: int, name: str = "") -> Optional[torch.Tensor]:
        """(n, *shape) Gumbel(0,1) fp32 drawn as the Gumbel op does, or None in 'rank' mode."""
        if not self.is_global:
            return None
        from ..ops.gumbel import sample_gumbel
        return self._draw(lambda s: sample_gumbel(s, dtype=torch.float32, device=self.device), n, shape)


class GivenNoise:
    """The noise of a training step given by the caller: drives a stage's step with chosen draws, so that
    a whole step can be compared with an independent computation (or replayed while debugging)::

        noise = GivenNoise({"z_G": z1, "gumbel_G": g1, "z_D": z2, "gumbel_D": g2, "eps_D": eps})
        stage, _ = trainer.open_stage("e2e")
        stats = stage.step(step, batch, noise=noise)

    ``draws`` maps each draw's name to a tensor of the shape the step asks for: this process's samples
    first, then the draw's own dimensions (``z_*`` (n, z_dim); ``gumbel_*`` (n, K, H, W) Gumbel(0,1) noise
    at G_seg's resolution; ``eps_D`` (n, 1, 1, 1) in [0, 1), the WGAN-GP interpolation weights). The
    names a stage draws, in order, are its ``NOISE`` attribute. A draw the step asks for but ``draws``
    lacks, or a tensor of another shape, is a ``KeyError``/``ValueError`` naming it. ``used`` lists the
    names in the order the step drew them.
    """

    def __init__(self, draws: Dict[str, torch.Tensor], device: Optional[torch.device] = None):
        self.draws = dict(draws)
        self.device = device
        self.used: List[str] = []

    is_global = True    # every draw is a tensor (never left to its consumer)

    def _get(self, name: str, n: int, shape) -> torch.Tensor:
        if not name:
            raise ValueError("GivenNoise: the step asked for an unnamed draw")
        if name not in self.draws:
            raise KeyError(f"GivenNoise: the step draws {name!r}, which was not given (given: {sorted(self.draws)})")
        t = self.draws[name]
        want = (n,) + tuple(shape)
        if tuple(t.shape) != want:
            raise ValueError(f"GivenNoise: draw {name!r} must have shape {want}, got {tuple(t.shape)}")
        self.used.append(name)
        t = t.float()
        return t.to(self.device) if self.device is not None else t

    def randn(self, n: int, *shape: int, name: str = "") -> torch.Tensor:
        return self._get(name, n, shape)

    def rand(self, n: int, *shape: int, name: str = "") -> torch.Tensor:
        return self._get(name, n, shape)

    def gumbel(self, n: int, *shape: int, name: str = "") -> torch.Tensor:
        return self._get(name, n, shape)
