"""VGG19 perceptual loss of the image stage, with weights from a local torchvision file.

The ImageNet VGG19 weights are not downloaded by this package: the user supplies torchvision's
``vgg19-dcbb9e9d.pth`` (config key ``vgg_weights``, command-line ``--vgg-weights``), or turns the loss off
with ``--no-vgg-loss``. torchvision itself is not needed: :class:`VGG19Features` reproduces the layer
layout of ``torchvision.models.vgg19().features`` (state-dict keys ``features.<i>.weight`` / ``.bias``), so
the file's tensors load directly.

The loss (:class:`VGGLoss`) is the SPADE / SB-GAN one: L1 distances between the relu1_1, relu2_1, relu3_1,
relu4_1 and relu5_1 features of the fake and the real image, weighted 1/32, 1/16, 1/8, 1/4 and 1 and summed;
the caller multiplies by ``lambda_vgg`` (10). As in the authors' code, the [-1, 1] images go in without the
ImageNet mean/std normalization by default (``imagenet_norm=True`` maps them to [0, 1] and normalizes).
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VGG19Features", "VGGLoss", "load_vgg19_weights", "VGG19_FILENAME", "VGG19_SHA256_PREFIX",
           "VGG_LAYER_WEIGHTS", "file_sha256"]

VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
# torchvision names its files <arch>-<first 8 hex digits of the file's sha256>.pth.
VGG19_SHA256_PREFIX = "dcbb9e9d"
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

# torchvision's VGG19 "E" configuration up to relu5_1: conv widths, "M" = 2x2 max pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# Index (in ``features``) of the ReLU ending each slice: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_SLICE_ENDS = (1, 6, 11, 20, 29)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_HOW_TO_GET = (
    f"The VGG perceptual loss needs torchvision's ImageNet VGG19 weights, the file '{VGG19_FILENAME}' "
    f"(https://download.pytorch.org/models/{VGG19_FILENAME}, 548 MB; or ~/.cache/torch/hub/checkpoints/"
    f"{VGG19_FILENAME} on a machine where torchvision downloaded it). Pass its path with the config key "
    f"'vgg_weights' (command line: --vgg-weights PATH), or train without the VGG loss with --no-vgg-loss.")


def _conv_indices() -> List[int]:
    idx, out = 0, []
    for v in _CFG:
        if v == "M":
            idx += 1
        else:
            out.append(idx)
            idx += 2
    return out


_CONV_INDICES = tuple(_conv_indices())  # (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)


class VGG19Features(nn.Module):
    """VGG19 convolutional trunk up to relu5_1, in torchvision's layout (``features.0`` ... ``features.29``).

    Forward: x float (N, 3, H, W) -> list of 5 feature maps at relu1_1 (N,64,H,W), relu2_1 (N,128,H/2,W/2),
    relu3_1 (N,256,H/4,W/4), relu4_1 (N,512,H/8,W/8), relu5_1 (N,512,H/16,W/16). No input normalization here.
    """

    def __init__(self):
        super().__init__()
        layers: List[nn.Module] = []
        in_c = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_c = v
        self.features = nn.Sequential(*layers)
        assert len(self.features) == _SLICE_ENDS[-1] + 1

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGG19Features: input must be (N, 3, H, W) images, got shape {tuple(x.shape)}")
        outs, start = [], 0
        for end in _SLICE_ENDS:
            for i in range(start, end + 1):
                x = self.features[i](x)
            outs.append(x)
            start = end + 1
        return outs


def file_sha256(path: Union[str, os.PathLike], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def load_vgg19_weights(path: Union[str, os.PathLike, None], *,
                       sha256_prefix: Optional[str] = VGG19_SHA256_PREFIX) -> Dict[str, torch.Tensor]:
    """Read and check a torchvision VGG19 state dict; return the ``features.*`` tensors up to relu5_1.

    Args:
        path: the ``vgg19-dcbb9e9d.pth`` file.
        sha256_prefix: expected sha256 of the file, as a hex prefix (torchvision's 8-digit file-name hash)
            or the full 64-digit digest; None skips the check.
    Returns:
        dict ``features.<i>.weight`` / ``.bias`` -> fp32 CPU tensors for the 13 convs up to relu5_1 (the
        file's other tensors, deeper convs and the classifier, are ignored).
    Raises:
        FileNotFoundError: no file (the message says which file is needed, where to pass it, and how to
            turn the loss off); ValueError: hash mismatch (naming the file and both hashes), unreadable
            file, or missing / wrongly shaped tensors (naming them).
    """
    if path is None or str(path) == "":
        raise FileNotFoundError("No VGG19 weights file was given. " + _HOW_TO_GET)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VGG19 weights file not found: {path!r}. " + _HOW_TO_GET)
    if sha256_prefix is not None:
        expected = str(sha256_prefix).strip().lower()
        if not expected or len(expected) > 64 or any(c not in "0123456789abcdef" for c in expected):
            raise ValueError(f"load_vgg19_weights: sha256_prefix must be a hex prefix of a sha256 digest "
                             f"(1 to 64 hex digits), got {sha256_prefix!r}")
        actual = file_sha256(path)
        if not actual.startswith(expected):
            raise ValueError(f"VGG19 weights file {path!r} has sha256 {actual}, which does not match the expected "
                             f"{expected}{'...' if len(expected) < 64 else ''}. It is not torchvision's "
                             f"'{VGG19_FILENAME}' (corrupt or truncated download, or another model). "
                             f"Pass sha256_prefix=None to skip the check deliberately.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"VGG19 weights file {path!r} could not be read as a torch state dict: {e}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"VGG19 weights file {path!r} holds a {type(obj).__name__}, not a state dict "
                         f"(name -> tensor) like torchvision's '{VGG19_FILENAME}'")
    sd = dict(obj)
    if sd and all(str(k).startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    expected_shapes = {k: tuple(v.shape) for k, v in VGG19Features().state_dict().items()}
    missing = [k for k in expected_shapes if k not in sd]
    if missing:
        some = ", ".join(sorted(sd)[:6]) + (" ..." if len(sd) > 6 else "")
        raise ValueError(f"VGG19 weights file {path!r} lacks the VGG19 tensors {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''} (its keys: {some or 'none'}); expected "
                         f"torchvision's layout 'features.<i>.weight' as in '{VGG19_FILENAME}'")
    out = {}
    for k, shape in expected_shapes.items():
        t = sd[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"VGG19 weights file {path!r}: tensor {k!r} has shape {got}, expected {shape} "
                             f"(is this a VGG19 file? a VGG16 file has a different layout)")
        out[k] = t.detach().float()
    return out


class VGGLoss(nn.Module):
    """Weighted L1 distance of VGG19 features (the caller multiplies by lambda_vgg = 10).

    Args:
        weights_path: torchvision's ``vgg19-dcbb9e9d.pth`` (see :func:`load_vgg19_weights`).
        sha256_prefix: expected sha256 (hex prefix or full digest) of the file; None skips the check.
        imagenet_norm: False (the authors' code): [-1, 1] images go in as they are; True: mapped to
            [0, 1] and normalized with the ImageNet mean / std.
        layer_weights: weights of relu1_1 .. relu5_1 (default 1/32, 1/16, 1/8, 1/4, 1).

    Forward:
        x: fake images, float (N, 3, H, W) in [-1, 1] (gradient flows to x); y: real images, same shape
        (no gradient; its features are computed under no_grad). Returns a 0-dim fp32 tensor
        ``sum_i w_i * mean|f_i(x) - f_i(y)|``. The VGG parameters are frozen and the network stays in
        eval mode whatever ``.train()`` is called with.
    """

    def __init__(self, weights_path: Union[str, os.PathLike, None], *,
                 sha256_prefix: Optional[str] = VGG19_SHA256_PREFIX, imagenet_norm: bool = False,
                 layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS):
        super().__init__()
        if len(layer_weights) != len(_SLICE_ENDS):
            raise ValueError(f"VGGLoss: layer_weights needs {len(_SLICE_ENDS)} values (relu1_1 .. relu5_1), "
                             f"got {len(layer_weights)}")
        state = load_vgg19_weights(weights_path, sha256_prefix=sha256_prefix)
        self.vgg = VGG19Features()
        self.vgg.load_state_dict(state, strict=True)
        self.vgg.requires_grad_(False)
        self.vgg.eval()
        self.imagenet_norm = bool(imagenet_norm)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGLoss":
        super().train(mode)
        self.vgg.eval()
        return self

    def extra_repr(self) -> str:
        return f"imagenet_norm={self.imagenet_norm}, layer_weights={self.layer_weights}"

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if not self.imagenet_norm:
            return x
        return ((x + 1) * 0.5 - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4 or t.shape[1] != 3:
                got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"VGGLoss: {name} must be float (N, 3, H, W) images, got {got}")
        if x.shape != y.shape:
            raise ValueError(f"VGGLoss: x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
        fx = self.vgg(self._prep(x))
        with torch.no_grad():
            fy = self.vgg(self._prep(y))
        loss = x.new_zeros((), dtype=torch.float32)
        for w, a, b in zip(self.layer_weights, fx, fy):
            loss = loss + w * F.l1_loss(a.float(), b.float())
        return loss
