"""Mixed precision (bf16 autocast, fp16 with GradScalers), channels-last, the WGAN-GP penalty under loss
scaling, the non-finite-step guard and GPU monitoring without NVML, all on CPU at tiny sizes."""
import json
import os
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from tiny import TINY  # noqa: E402

from sbgan_fast.train import checkpoint as ckpt_io  # noqa: E402
from sbgan_fast.train import losses as L  # noqa: E402
from sbgan_fast.train.amp import NonFiniteError, Updater  # noqa: E402
from sbgan_fast.config import build_config  # noqa: E402
from sbgan_fast.train.dist import DistInfo  # noqa: E402
from sbgan_fast.train.monitor import FIELDS, GPUMonitor, records, to_vector  # noqa: E402
from sbgan_fast.train.trainer import Trainer, train  # noqa: E402

QUIET = ["sample_every=0", "monitor_every=0"]


def cfg_for(out, *extra, **direct):
    return build_config("demo", None, TINY + QUIET + list(extra), out=str(out), **direct)


def stats(out):
    return [json.loads(line) for line in open(os.path.join(out, "stats.jsonl"))]


def all_finite(trainer):
    return all(bool(torch.isfinite(t).all()) for n in trainer.nets.values()
               for t in list(n.parameters()) + list(n.buffers()) if t.is_floating_point())


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_run_every_stage(tmp_path):
    out = tmp_path / "bf16"
    seen = {}
    cfg = cfg_for(out, "precision=bf16", "channels_last=true", "e2e.d2_pretrain_epochs=0.125", max_steps=2)
    tr = Trainer(cfg)
    def note(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)   # (returns None: the output is kept)
        return hook
    tr.G_spd.conv_img.register_forward_hook(note("G_spd"))
    tr.D_seg.register_forward_hook(note("D_seg"))
    assert tr.G_spd.conv_img.weight.is_contiguous(memory_format=torch.channels_last)
    assert tr.fmt(torch.zeros(2, 3, 4, 4)).is_contiguous(memory_format=torch.channels_last)
    tr.run()
    assert seen == {"G_spd": torch.bfloat16, "D_seg": torch.bfloat16}   # the forwards ran under autocast
    for p in tr.G_spd.parameters():
        assert p.dtype == torch.float32                                   # master weights stay fp32
    recs = stats(out)
    assert {r["stage"] for r in recs} == {"seg", "spade", "e2e"}
    assert sum(r["skipped"] for r in recs) == 0
    for r in recs:
        for k, v in r.items():
            if isinstance(v, float):
                assert v == v and abs(v) != float("inf"), (k, r)
    assert all_finite(tr)
    for s in ("seg", "spade", "e2e"):
        assert (out / "checkpoints" / f"{s}-latest.pt").is_file()


@pytest.mark.slow
def test_fp16_grad_scalers_are_checkpointed_and_resume_exactly(tmp_path):
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("this torch has no torch.amp.GradScaler")
    full = train(cfg_for(tmp_path / "a", "precision=fp16", "stages=seg", max_steps=3))
    train(cfg_for(tmp_path / "b", "precision=fp16", "stages=seg", max_steps=2))
    resumed = train(cfg_for(tmp_path / "b", "precision=fp16", "stages=seg", max_steps=3), resume=True)
    # one scaler per loss group (G and D scaled independently), saved with the checkpoint
    ck = ckpt_io.load_checkpoint(str(tmp_path / "b" / "checkpoints" / "seg-latest.pt"))
    assert set(ck["scalers"]) == {"G_seg", "D_seg"}
    assert set(full.updater.scalers) == {"G_seg", "D_seg"}
    for g in ("G_seg", "D_seg"):
        assert full.updater.scalers[g].get_scale() == resumed.updater.scalers[g].get_scale()
    rec = stats(tmp_path / "a")[-1]
    assert "scale_G_seg" in rec and "scale_D_seg" in rec
    for name in ("G_seg", "D_seg"):
        for k, v in full.nets[name].state_dict().items():
            assert torch.equal(v, resumed.nets[name].state_dict()[k]), f"{name}.{k}"
    assert all_finite(full)


class _Critic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 1)

    def forward(self, x):
        return self.fc(torch.nn.functional.leaky_relu(self.conv(x), 0.2).flatten(1)).squeeze(1)


def test_cli_flags(tmp_path, capsys):
    from sbgan_fast.cli import build_parser
    from sbgan_fast.cli import main as cli_main
    a = build_parser().parse_args(["train", "--precision", "bf16", "--no-channels-last", "--accum", "2"])
    assert (a.precision, a.channels_last, a.accum) == ("bf16", False, 2)
    a = build_parser().parse_args(["train"])
    assert (a.precision, a.channels_last, a.accum) == (None, None, None)
    # a batch of 4 does not split into 3 micro-batches: a clear error, exit status 2
    assert cli_main(["train", "--accum", "3", "--precision", "fp16", "--out", str(tmp_path / "r"), "--max-steps", "1",
                     "--no-progress", "stages=seg", *TINY, *QUIET]) == 2
    err = capsys.readouterr().err
    assert "batch size 4" in err and "accum 3" in err
    cfg = json.load(open(tmp_path / "r" / "config.json"))
    assert (cfg["precision"], cfg["accum"], cfg["channels_last"]) == ("fp16", 3, None)


def test_gradient_penalty_is_unscaled_before_the_norm():
    torch.manual_seed(0)
    D = _Critic()
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    eps = torch.rand(4, 1, 1, 1)
    gp = L.gradient_penalty(D, real, fake, eps=eps)
    (g_ref,) = torch.autograd.grad(gp, D.conv.weight)
    # a power-of-two loss scale is exact in fp32: the scaled penalty equals the plain one
    gp_s = L.gradient_penalty(D, real, fake, eps=eps, scale=torch.tensor(2.0 ** 16))
    (g_s,) = torch.autograd.grad(gp_s, D.conv.weight)
    torch.testing.assert_close(gp_s, gp, rtol=1e-6, atol=0)  # power-of-two scale: fp32 rounding only
    torch.testing.assert_close(g_s, g_ref, rtol=1e-5, atol=1e-7)  # fp32 rounding of the unscale
    # without the unscaling the norm would be 65536x too large
    assert gp_s.item() < 10 * gp.item() + 1
    # under bf16 autocast the penalty stays fp32 and close to the fp32 value
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp_b = L.gradient_penalty(D, real, fake, eps=eps)
    assert gp_b.dtype == torch.float32
    torch.testing.assert_close(gp_b, gp, rtol=5e-2, atol=1e-2)  # bf16 autocast forward: ~8e-3 per op
    with pytest.raises(ValueError, match="eps must have shape"):
        L.gradient_penalty(D, real, fake, eps=torch.rand(4))


def _nan_on(calls, fn):
    """Wrap a loss: NaN on the listed (0-based) call numbers, or always when ``calls`` is None."""
    count = {"n": 0}

    def wrapped(*a, **k):
        out = fn(*a, **k)
        i = count["n"]
        count["n"] += 1
        return out * float("nan") if calls is None or i in calls else out
    return wrapped


@pytest.mark.slow
def test_a_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "wgan_g_loss", _nan_on({1}, L.wgan_g_loss))   # the G loss of step 1
    seen = []
    tr = Trainer(cfg_for(tmp_path / "r", "stages=seg", "log_every=1", max_steps=3))
    tr.updater.on_gradients = lambda grads, losses: seen.append(
        {"groups": sorted(grads), "G_seg": [p.detach().clone() for p in tr.G_seg.parameters()]})
    tr.run()
    recs = stats(tmp_path / "r")
    assert [r["skipped"] for r in recs] == [0.0, 1.0, 0.0]
    assert "loss_G" not in recs[1]            # a skipped step's NaN losses stay out of the means
    assert all_finite(tr)
    # the skipped G update left G_seg as it was: its parameters before the step-1 G update (seen[2])
    # equal those before the step-1 D update (seen[3])
    assert [u["groups"] for u in seen[:4]] == [["G_seg"], ["D_seg"], ["G_seg"], ["D_seg"]]
    for a, b in zip(seen[2]["G_seg"], seen[3]["G_seg"]):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(seen[0]["G_seg"], seen[1]["G_seg"]))  # step 0 applied
    assert tr.updater.skipped_total == 1


@pytest.mark.slow
def test_repeated_non_finite_steps_stop_without_a_broken_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "wgan_g_loss", _nan_on(set(range(1, 100)), L.wgan_g_loss))
    out = tmp_path / "r"
    with pytest.raises(NonFiniteError, match="3 training steps in a row") as info:
        train(cfg_for(out, "stages=seg", "nonfinite_limit=3", "ckpt_every=1", max_steps=8))
    assert "seg-latest.pt" in str(info.value)        # names the last good checkpoint
    ck = ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"))
    assert ck["step"] == 3                            # written after steps 1, 2, 3; the run stopped at 4
    for sd in ck["nets"].values():
        for v in sd.values():
            assert not v.is_floating_point() or bool(torch.isfinite(v).all())


def test_updater_restores_buffers_of_a_skipped_step_and_refuses_bad_checkpoints(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    u = Updater("fp32", torch.device("cpu"), DistInfo(), nonfinite_limit=2)
    u.reset({"net": opt}, [net])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    u.begin_step()
    with u.update({"net": ("net",)}) as upd:
        x = torch.randn(4, 2, 5, 5)
        x[0, 0, 0, 0] = float("nan")
        upd.backward({"net": net(x).mean()})
    assert u.end_step("t", 0) == ["net"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k             # parameters and running statistics untouched
    u.begin_step()
    with u.update({"net": ("net",)}) as upd:
        upd.backward({"net": net(torch.full((4, 2, 5, 5), float("inf"))).mean()})
    with pytest.raises(NonFiniteError, match="nonfinite_limit=2"):
        u.end_step("t", 1)
    # the trainer never writes a checkpoint of a network holding NaN
    tr = Trainer(cfg_for(tmp_path / "c", "stages=seg", max_steps=1))
    tr.trained.add("G_seg")
    with torch.no_grad():
        next(tr.G_seg.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to write"):
        tr.save("seg", 1, done=False, which="latest")
    assert not (tmp_path / "c" / "checkpoints").exists()
    tr.close()


@pytest.mark.slow
def test_monitor_without_nvml_or_gpu_says_so_once(monkeypatch, capsys, tmp_path):
    said = []
    mon = GPUMonitor(torch.device("cpu"), say=said.append)
    assert not mon.enabled and mon.sample() == {} and len(said) == 1 and "off" in said[0]
    monkeypatch.setitem(sys.modules, "pynvml", None)          # nvidia-ml-py not installed
    said.clear()
    mon = GPUMonitor(torch.device("cuda", 0), say=said.append)
    assert not mon.nvml_enabled and len(said) == 1 and "nvidia-ml-py" in said[0]
    if not torch.cuda.is_available():
        assert mon.sample() == {}
    # NVML present but no driver
    broken = types.SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(RuntimeError("NVML Shared Library Not Found")))
    said.clear()
    mon = GPUMonitor(torch.device("cuda", 0), nvml=broken, say=said.append)
    assert not mon.nvml_enabled and "cannot start" in said[0]
    # a CPU training run with monitoring on: one message, training goes on, no GPU fields logged
    train(build_config("demo", None, TINY + ["stages=seg", "monitor_every=1", "sample_every=0"],
                       out=str(tmp_path / "r"), max_steps=2))
    err = capsys.readouterr().err
    assert err.count("GPU monitoring off") == 1
    assert not any(k.startswith("gpu") for r in stats(tmp_path / "r") for k in r)


class _FakeNVML:
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, power_fails=False):
        self.power_fails, self.shutdown = power_fails, False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise RuntimeError("unknown uuid")

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=87)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=3 * 1024 ** 3, total=80 * 1024 ** 3)

    def nvmlDeviceGetTemperature(self, h, kind):
        return 64

    def nvmlDeviceGetPowerUsage(self, h):
        if self.power_fails:
            raise RuntimeError("Not Supported")
        return 312500


def test_monitor_reads_nvml_fields_and_flattens_ranks(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    nvml = _FakeNVML()
    mon = GPUMonitor(torch.device("cuda", 1), nvml=nvml, say=lambda m: None)
    assert mon.handle == ("gpu", 5)                  # the physical GPU behind cuda:1
    s = mon.sample()
    assert s["gpu_util_pct"] == 87 and s["gpu_mem_used_mib"] == 3072 and s["gpu_mem_total_mib"] == 81920
    assert s["gpu_temp_c"] == 64 and s["gpu_power_w"] == 312.5
    said = []
    mon2 = GPUMonitor(torch.device("cuda", 0), nvml=_FakeNVML(power_fails=True), say=said.append)
    assert "gpu_power_w" not in mon2.sample() and "gpu_power_w" not in mon2.sample()
    assert len(said) == 1 and "gpu_power_w" in said[0]          # reported once, then dropped
    one = records([to_vector(s)])
    assert one["gpu_util_pct"] == 87 and "peak_alloc_mib_max" not in one
    v0, v1 = to_vector(dict(s, peak_alloc_mib=100.0)), to_vector(dict(s, peak_alloc_mib=250.0))
    two = records([v0, v1])
    assert two["r1/gpu_temp_c"] == 64 and two["peak_alloc_mib_max"] == 250.0 and len(v0) == len(FIELDS)
    mon.close()
    assert nvml.shutdown
