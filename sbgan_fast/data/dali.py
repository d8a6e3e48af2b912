"""NVIDIA DALI loader for the real datasets: JPEG/PNG decoding, cropping and resizing off the Python path.

:class:`DaliLoader` takes the same sequence of index batches as the torch ``DataLoader`` path (the trainer's
deterministic sample stream, already sharded per rank when the sampler is) and yields the same batch dicts:
``{"image": uint8 (N, 3, H, W), "label": int64 (N, H, W), "index": int64 (N,), "skipped": int64 (N,)}``,
on the GPU when a ``device_id`` is given (``mixed`` nvJPEG decoding and GPU resizing), on the CPU otherwise.

Per batch, the pipeline gets from an external source: the encoded image files, each item's crop window (the
dataset's :meth:`~sbgan_fast.data.real.RealPairsDataset.crop_window`, from ``(seed, index, epoch)``) and its
label map. Images are decoded, sliced to the window and resized (linear or cubic, antialiased) inside DALI.
Label maps are produced by the dataset's own label path (decode, value table, crop, Pillow nearest resize) so
that both loaders give identical label maps: DALI's nearest resize rounds exact ties (source coordinates that are
whole numbers) differently from Pillow's; label PNG decoding is cheap next to image decoding and resizing.

A file DALI cannot decode stops its pipeline with a message that does not name the file; the loader then
produces that batch with the dataset's Python path, which raises :class:`~sbgan_fast.data.files.DataError`
naming the file (or skips it under ``skip_bad_files``), and rebuilds the pipeline. ``check-data`` finds such
files before training.

DALI is optional: :func:`dali_status` says whether it can be used and why not.
"""
from __future__ import annotations

import collections
import sys
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .files import DataError, check_same_size, read_header

__all__ = ["DaliLoader", "dali_status"]

DALI_REQUIREMENT = "nvidia-dali-cuda130==2.4.0"


def dali_status() -> Tuple[bool, str]:
    """(usable, reason): whether ``nvidia.dali`` imports, with the reason when it does not."""
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali import fn, types  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means no DALI
        return False, f"NVIDIA DALI is not installed or does not load ({type(e).__name__}: {e}); " \
                      f"pip install {DALI_REQUIREMENT}"
    return True, f"NVIDIA DALI {nvidia.dali.__version__}"


def _split(index) -> Tuple[int, Optional[int]]:
    if isinstance(index, tuple):
        return int(index[0]), int(index[1])
    return int(index), None


class DaliLoader:
    """Batches of a :class:`~sbgan_fast.data.real.RealPairsDataset` decoded and resized by DALI.

    Args:
        dataset: the dataset (its files, crop rule, value table, output size and interpolation are used).
        batches: iterable of index lists (ints, or ``(index, epoch)`` pairs for datasets with random crops).
        device_id: CUDA device for mixed decoding and GPU resizing; None: CPU-only pipeline.
        num_threads: DALI CPU worker threads.
        prefetch: batches prepared ahead.

    Iterating yields ``{"image": uint8 (N, 3, H, W), "label": int64 (N, H, W), "index": int64 (N,),
    "skipped": int64 (N,)}`` (on ``cuda:device_id`` when given, labels too)."""

    def __init__(self, dataset, batches: Iterable[Sequence], *, device_id: Optional[int] = None,
                 num_threads: int = 2, prefetch: int = 2):
        ok, why = dali_status()
        if not ok:
            raise RuntimeError(why)
        from .real import RealPairsDataset
        if not isinstance(dataset, RealPairsDataset):
            raise TypeError(f"DaliLoader: expected a RealPairsDataset, got {type(dataset).__name__}")
        if dataset.labels_only:
            raise ValueError("DaliLoader: the dataset is label-only; label maps need no image decoding (use the "
                             "torch loader)")
        if dataset.height is None or dataset.width is None:
            raise ValueError("DaliLoader: the dataset needs a fixed output size (height and width)")
        if num_threads < 1 or prefetch < 1:
            raise ValueError(f"DaliLoader: num_threads and prefetch must be >= 1, got {num_threads}, {prefetch}")
        self.dataset = dataset
        self.batches = batches
        self.device_id = device_id
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch)
        self.out_device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
        self.skipped: List[str] = []
        # one label dtype for every batch (DALI needs one type per batch): from the value table, not per map
        self._label_dtype = np.uint8 if int(np.max(dataset.lut, initial=0)) < 256 else np.int32

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    # -- pipeline ---------------------------------------------------------------------------------
    def _define(self, max_batch: int, source):
        """The pipeline (not built): decode (``mixed`` on a GPU), crop window, resize, HWC -> CHW; the label
        maps (already at the output size) only move to the GPU; the (index, skipped) rows stay on the CPU."""
        from nvidia.dali import fn, pipeline_def, types
        ds = self.dataset
        interp = types.INTERP_CUBIC if ds.image_interp == "bicubic" else types.INTERP_LINEAR
        gpu = self.device_id is not None
        # Decoding as the Python path does: EXIF orientation tags are ignored (the label maps have none, and
        # the crop windows are in stored pixel order); on the GPU, JPEG chroma is upsampled as on the CPU.
        dec_kw = {"adjust_orientation": False}
        if gpu:
            dec_kw["jpeg_fancy_upsampling"] = True

        @pipeline_def(batch_size=max_batch, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=self.prefetch, exec_dynamic=True)
        def pipe():
            enc, anchor, shape, label, meta = fn.external_source(source=source, num_outputs=5, batch=True,
                                                                 no_copy=False)
            img = fn.decoders.image(enc, device="mixed" if gpu else "cpu", output_type=types.RGB, **dec_kw)
            # anchor and shape are CPU inputs (a GPU slice reads them without a device-to-host copy)
            img = fn.slice(img, anchor, shape, axis_names="WH", normalized_anchor=False, normalized_shape=False)
            img = fn.resize(img, resize_x=ds.width, resize_y=ds.height, interp_type=interp, antialias=True)
            img = fn.transpose(img, perm=[2, 0, 1])
            if gpu:
                label = label.gpu()
            return img, label, meta

        return pipe()

    def _build(self, max_batch: int, source):
        p = self._define(max_batch, source)
        p.build()
        return p

    def _prepare(self, idx: Sequence) -> Tuple[List[np.ndarray], ...]:
        """External-source inputs of one batch (Python side): encoded images, crop anchors and shapes, labels,
        (index, skipped) rows. Bad files are handled here the way the dataset handles them."""
        ds = self.dataset
        encs, anchors, shapes, labels, metas = [], [], [], [], []
        n = len(ds)
        for index in idx:
            i, epoch = _split(index)
            epoch = ds.epoch if epoch is None else epoch
            for k in range(n if ds.skip_bad_files else 1):
                j = (i + k) % n
                try:
                    lab_full = ds.read_label(j)
                    h, w = lab_full.shape
                    ip = ds.image_paths[j]
                    if ip is None:
                        raise DataError(f"{ds.name}: item {j} has no image", ds.label_paths[j])
                    check_same_size(ip, read_header(ip, "image")[0], ds.label_paths[j], (w, h))
                    label = ds.finish_label(lab_full, j, epoch)
                    with open(ip, "rb") as f:
                        enc = np.frombuffer(f.read(), dtype=np.uint8)
                except (DataError, OSError) as e:
                    if not ds.skip_bad_files:
                        if isinstance(e, OSError):
                            raise DataError(f"cannot read image file {ds.image_paths[j]}: {e}",
                                            ds.image_paths[j]) from e
                        raise
                    path = getattr(e, "path", None) or ds.image_paths[j]
                    if path not in ds.skipped:
                        ds.skipped.append(path)
                    continue
                t, l, ch, cw = ds.crop_window(j, epoch, h, w)
                encs.append(enc)
                anchors.append(np.array([l, t], np.float32))
                shapes.append(np.array([cw, ch], np.float32))
                labels.append(np.ascontiguousarray(label.astype(self._label_dtype)))
                metas.append(np.array([j, k], np.int64))
                break
            else:
                raise DataError(f"{ds.name}: no loadable item found (every file failed)")
        return encs, anchors, shapes, labels, metas

    def _python_batch(self, idx: Sequence) -> Dict[str, torch.Tensor]:
        """One batch through the dataset's Python path (names the bad file, or skips it)."""
        items = [self.dataset[i if not isinstance(i, tuple) else (int(i[0]), int(i[1]))] for i in idx]
        out = {"image": torch.stack([it["image"] for it in items]),
               "label": torch.stack([it["label"] for it in items]),
               "index": torch.tensor([it["index"] for it in items]),
               "skipped": torch.tensor([it["skipped"] for it in items])}
        # image and label on the output device; index and skipped on the CPU, as in the DALI batches
        return {k: v.to(self.out_device) if k in ("image", "label") else v for k, v in out.items()}

    @staticmethod
    def _to_torch(tl, device: torch.device) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray
        t = tl.as_tensor()
        dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32,
                 np.dtype(np.int64): torch.int64}[np.dtype(_dali_np_dtype(t))]
        out = torch.empty(tuple(t.shape()), dtype=dtype, device=device)
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        feed_ndarray(t, out, cuda_stream=stream)
        return out

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        it = iter(self.batches)
        pending: Deque[Sequence] = collections.deque()   # fed to DALI, not yet returned
        stash: List[Sequence] = []                        # a batch too large for the current pipeline
        state = {"done": False}

        def source():
            if stash:
                raise StopIteration
            try:
                idx = list(next(it))
            except StopIteration:
                state["done"] = True
                raise
            if len(idx) > state["max"]:
                stash.append(idx)
                raise StopIteration
            pending.append(idx)
            return self._prepare(idx)

        while True:
            if stash:
                first = stash.pop()
            else:
                try:
                    first = list(next(it))
                except StopIteration:
                    return
            state["max"] = max(len(first), 1)
            # the first batch of a (re)built pipeline comes through the same source function
            first_box = [first]

            def source_with_first():
                if first_box:
                    idx = first_box.pop()
                    pending.append(idx)
                    return self._prepare(idx)
                return source()

            pipe = self._build(state["max"], source_with_first)
            try:
                while True:
                    try:
                        img, lab, meta = pipe.run()
                    except StopIteration:
                        break
                    except RuntimeError as e:
                        if not pending:
                            raise
                        idx = pending.popleft()
                        batch = self._python_batch(idx)   # raises DataError naming the file, or skips it
                        print(f"[sbgan_fast] DALI failed on a batch ({str(e).splitlines()[0][:200]}); it was "
                              "loaded by the Python path instead", file=sys.stderr)
                        yield batch
                        # rebuild: refeed what DALI had taken but not returned
                        redo = list(pending)
                        pending.clear()
                        it = _chain(redo, it)
                        state["done"] = False
                        break
                    pending.popleft()
                    m = self._to_torch(meta, torch.device("cpu"))
                    yield {"image": self._to_torch(img, self.out_device),
                           "label": self._to_torch(lab, self.out_device).long(),
                           "index": m[:, 0].clone(), "skipped": m[:, 1].clone()}
            finally:
                del pipe
            if state["done"] and not stash:
                return


def _chain(first: List, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _dali_np_dtype(t) -> np.dtype:
    from nvidia.dali import types
    return np.dtype(types.to_numpy_type(t.dtype))
