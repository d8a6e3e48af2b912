"""VGG19 perceptual loss: weight-file checks (missing, hash, keys, shapes) and the loss value.

A fake weights file in torchvision's layout (random tensors, right keys and shapes) is written at test
time; the expected loss is computed with a plain functional VGG written here from the layer list.
"""
import hashlib
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from sbgan_fast.models.vgg import VGG19Features, VGGLoss, load_vgg19_weights
from tolerances import tol

# torchvision VGG19 "features": (index, out, in) of each conv; pools at 4, 9, 18, 27, 36.
CONVS = [(0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256), (14, 256, 256),
         (16, 256, 256), (19, 512, 256), (21, 512, 512), (23, 512, 512), (25, 512, 512), (28, 512, 512),
         (30, 512, 512), (32, 512, 512), (34, 512, 512)]
POOLS = (4, 9, 18, 27)
TAPS = (1, 6, 11, 20, 29)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_torchvision_state(gen):
    sd = {}
    for i, cout, cin in CONVS:
        # He-style scale keeps activations O(1) through 13 layers, so the loss is not ~0
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2.0 / (cin * 9)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=gen) * 0.01
    # torchvision files also hold the classifier; a small stand-in checks that extra keys are ignored
    sd["classifier.6.bias"] = torch.zeros(1000)
    return sd


@pytest.fixture(scope="module")
def fake_weights(module_tmp):
    sd = fake_torchvision_state(torch.Generator().manual_seed(0))
    path = module_tmp / "vgg19-fake.pth"
    # torchvision's file is a pickled OrderedDict in torch's legacy (non-zip) format
    torch.save(OrderedDict(sd), path, _use_new_zipfile_serialization=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, sd, digest


def functional_vgg(sd, x):
    feats = []
    for i in range(TAPS[-1] + 1):
        if i in POOLS:
            x = F.max_pool2d(x, 2, 2)
        elif f"features.{i}.weight" in sd:
            x = F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)
        else:
            x = F.relu(x)
        if i in TAPS:
            feats.append(x)
    return feats


def expected_loss(sd, x, y, imagenet_norm=False):
    if imagenet_norm:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x, y = ((x + 1) / 2 - mean) / std, ((y + 1) / 2 - mean) / std
    weights = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    return sum(w * (a - b).abs().mean() for w, a, b in zip(weights, functional_vgg(sd, x), functional_vgg(sd, y)))


def test_layout_matches_torchvision_keys():
    keys = set(VGG19Features().state_dict())
    assert keys == {f"features.{i}.{p}" for i, _, _ in CONVS if i <= 28 for p in ("weight", "bias")}


@pytest.mark.slow
@pytest.mark.parametrize("imagenet_norm", [False, True])
def test_loss_value_gradient_and_frozen_weights(fake_weights, imagenet_norm):
    path, sd, digest = fake_weights
    loss_fn = VGGLoss(path, sha256_prefix=digest, imagenet_norm=imagenet_norm)
    x = (torch.rand(2, 3, 32, 48) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 48) * 2 - 1
    loss = loss_fn(x, y)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected_loss(sd, x.detach(), y, imagenet_norm), **tol(torch.float32))
    assert float(loss.detach()) > 0
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss_fn.parameters())
    assert float(loss_fn(y, y)) == 0.0


def test_train_mode_keeps_vgg_in_eval(fake_weights):
    path, _, digest = fake_weights
    loss_fn = VGGLoss(path, sha256_prefix=digest[:12]).train()
    assert loss_fn.training and not loss_fn.vgg.training
    assert all(not m.training for m in loss_fn.vgg.modules())


def test_missing_file_explains_what_is_needed(tmp_path):
    for bad in (tmp_path / "nowhere.pth", None):
        with pytest.raises(FileNotFoundError) as info:
            VGGLoss(bad)
        msg = str(info.value)
        for needed in ("vgg19-dcbb9e9d.pth", "vgg_weights", "--vgg-weights", "--no-vgg-loss"):
            assert needed in msg, (needed, msg)
    assert "nowhere.pth" in str(pytest.raises(FileNotFoundError, load_vgg19_weights, tmp_path / "nowhere.pth").value)


def test_hash_mismatch_names_file_and_both_hashes(fake_weights):
    path, _, digest = fake_weights
    with pytest.raises(ValueError) as info:
        load_vgg19_weights(path)  # default expectation: torchvision's dcbb9e9d file
    msg = str(info.value)
    assert str(path) in msg and digest in msg and "dcbb9e9d" in msg
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(ValueError, match=wrong):
        load_vgg19_weights(path, sha256_prefix=wrong)
    assert len(load_vgg19_weights(path, sha256_prefix=digest)) == 26
    assert len(load_vgg19_weights(path, sha256_prefix=None)) == 26
    with pytest.raises(ValueError, match="sha256_prefix"):
        load_vgg19_weights(path, sha256_prefix="not-hex")


def test_wrong_keys_and_shapes_are_named(tmp_path, fake_weights):
    _, sd, _ = fake_weights
    missing = {k: v for k, v in sd.items() if not k.startswith("features.21.")}
    p = tmp_path / "missing.pth"
    torch.save(missing, p)
    with pytest.raises(ValueError, match=r"features\.21\.weight"):
        load_vgg19_weights(p, sha256_prefix=None)
    wrong = dict(sd)
    wrong["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    p = tmp_path / "wrong.pth"
    torch.save(wrong, p)
    with pytest.raises(ValueError, match=r"features\.5\.weight.*\(128, 32, 3, 3\)"):
        load_vgg19_weights(p, sha256_prefix=None)
    p = tmp_path / "garbage.pth"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_vgg19_weights(p, sha256_prefix=None)
    p = tmp_path / "list.pth"
    torch.save([1, 2], p)
    with pytest.raises(ValueError, match="not a state dict"):
        load_vgg19_weights(p, sha256_prefix=None)


def test_bad_inputs_are_named(fake_weights):
    path, _, digest = fake_weights
    loss_fn = VGGLoss(path, sha256_prefix=digest)
    with pytest.raises(ValueError, match="x must be"):
        loss_fn(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 16))
