"""Weighted CLIP loss properties (paper 3.3), downstream losses and class sets."""

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.classes import load_classes, sample_class_texts
from flyt_datacomp.flyt.losses import (
    ClipPairsLoss,
    CrossEntropyLoss,
    LearnedTemperatureCrossEntropyLoss,
    clip_loss,
    make_downstream_loss,
    weighted_clip_loss,
    weighted_clip_terms,
)


def _features(b=6, d=5, seed=0, dtype=torch.float64, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    img = scale * torch.randn(b, d, generator=gen, dtype=dtype)
    txt = scale * torch.randn(b, d, generator=gen, dtype=dtype)
    return img, txt


def test_zero_weight_equals_removal_values_and_gradients():
    img, txt = _features()
    w = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 0)
    w[2] = 0.0
    keep = [0, 1, 3, 4, 5]
    tau = torch.tensor(7.0, dtype=torch.float64)

    leaves = [t.clone().requires_grad_(True) for t in (img, txt, tau, w)]
    full = weighted_clip_loss(*leaves)
    g_full = torch.autograd.grad(full, leaves)

    sub = [img[keep].clone().requires_grad_(True), txt[keep].clone().requires_grad_(True),
           tau.clone().requires_grad_(True), w[keep].clone().requires_grad_(True)]
    removed = weighted_clip_loss(*sub)
    g_sub = torch.autograd.grad(removed, sub)

    assert torch.isfinite(full) and all(torch.isfinite(g).all() for g in g_full)
    assert torch.equal(full, removed) or torch.allclose(full, removed, rtol=1e-14, atol=0)
    for k in range(2):  # image and text features
        torch.testing.assert_close(g_full[k][keep], g_sub[k], rtol=1e-13, atol=1e-15)
        assert torch.equal(g_full[k][2], torch.zeros_like(g_full[k][2]))
    torch.testing.assert_close(g_full[2], g_sub[2], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g_full[3][keep], g_sub[3], rtol=1e-13, atol=1e-15)
    assert g_full[3][2] == 0


def test_uniform_weights_equal_open_clip_loss():
    img, txt = _features(b=7, d=9, dtype=torch.float32)
    tau = torch.tensor(14.3)
    w = torch.full((7,), 1 / 7)
    ours = weighted_clip_loss(img, txt, tau, w)
    ref = open_clip.loss.ClipLoss()(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), tau)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(clip_loss(img, txt, tau), ref, rtol=1e-6, atol=1e-6)


def test_larger_weight_means_larger_share():
    img, txt = _features(b=8, d=6, seed=3)
    base = torch.randn(8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shares = []
    for s0 in torch.linspace(-3.0, 3.0, 13, dtype=torch.float64):
        s = base.clone()
        s[0] = s0
        w = torch.softmax(s, 0)
        l_img, l_txt = weighted_clip_terms(img, txt, 10.0, w)
        contributions = 0.5 * w * (l_img + l_txt)
        shares.append(float(contributions[0] / contributions.sum()))
    assert all(b > a for a, b in zip(shares, shares[1:])), shares


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_large_logit_scale_is_finite(dtype):
    img, txt = _features(b=16, d=32, seed=5, dtype=torch.float32, scale=20.0)
    w = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(6)), 0)
    ref = weighted_clip_loss(img, txt, 100.0, w)
    low_img, low_txt = img.to(dtype).requires_grad_(True), txt.to(dtype).requires_grad_(True)
    low = weighted_clip_loss(low_img, low_txt, torch.tensor(100.0, dtype=dtype), w.to(dtype))
    low.backward()
    assert torch.isfinite(low) and torch.isfinite(low_img.grad).all() and torch.isfinite(low_txt.grad).all()
    assert abs(float(low.detach()) - float(ref)) < 0.02 * float(ref)


def test_gradcheck_float64():
    img, txt = _features(b=5, d=4, seed=7)
    w = torch.softmax(torch.randn(5, generator=torch.Generator().manual_seed(8), dtype=torch.float64), 0)
    inputs = tuple(t.clone().requires_grad_(True) for t in (img, txt, torch.tensor(3.0, dtype=torch.float64), w))
    assert torch.autograd.gradcheck(weighted_clip_loss, inputs)
    assert torch.autograd.gradgradcheck(weighted_clip_loss, inputs)


# ----------------------------------------------------------------------------- downstream losses


def _downstream_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    cls = torch.randn(10, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(10, (6,), generator=gen)
    return img, labels, cls


def test_ce_matches_manual_cross_entropy():
    img, labels, cls = _downstream_inputs()
    logits = F.normalize(img, dim=-1) @ F.normalize(cls, dim=-1).T
    expected = -torch.log_softmax(logits, 1)[torch.arange(6), labels].mean()
    torch.testing.assert_close(CrossEntropyLoss()(img, labels, cls, None), expected)


def test_ce_temp_has_learned_temperature_with_gradient():
    img, labels, cls = _downstream_inputs(1)
    loss = LearnedTemperatureCrossEntropyLoss().double()
    assert math.isclose(float(loss.temperature.detach()), 1 / 0.07, rel_tol=1e-6)  # stored as float32 log
    assert [n for n, _ in loss.named_parameters()] == ["log_temperature"]
    value = loss(img, labels, cls, None)
    logits = (1 / 0.07) * F.normalize(img, dim=-1) @ F.normalize(cls, dim=-1).T
    torch.testing.assert_close(value, F.cross_entropy(logits, labels))
    value.backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad != 0


def test_clip_downstream_is_clip_loss_on_class_prompt_pairs_with_its_own_temperature():
    img, labels, cls = _downstream_inputs(2)
    loss = ClipPairsLoss().double()
    upstream_tau = torch.tensor(20.0, dtype=torch.float64)
    value = loss(img, labels, cls, upstream_tau)
    # the mean of the two cross entropies over tau_DS <img_i, prompt of c_j>, tau_DS = 1/0.07, normalised features
    logits = (1 / 0.07) * F.normalize(img, dim=-1) @ F.normalize(cls[labels], dim=-1).T
    pairs = torch.arange(6)
    torch.testing.assert_close(value, (F.cross_entropy(logits, pairs) + F.cross_entropy(logits.T, pairs)) / 2)
    torch.testing.assert_close(loss(img, labels, cls, None), value)  # the upstream tau is not used
    value.backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad != 0


def test_make_downstream_loss_names():
    assert {make_downstream_loss(n).name for n in ("ce", "ce_temp", "clip")} == {"ce", "ce_temp", "clip"}
    with pytest.raises(FlytInputError):
        make_downstream_loss("mse")


# ----------------------------------------------------------------------------- class sets


def test_builtin_class_sets():
    imagenet = load_classes("imagenet")
    assert imagenet.num_classes == 1000 and len(imagenet.templates) == 80
    assert len(set(imagenet.classnames)) == 998  # OpenAI's list repeats "missile" and "sunglasses"
    assert imagenet.classnames[0] == "tench" and imagenet.classnames[-1] == "toilet paper"
    assert imagenet.templates[0] == "a bad photo of a {}."
    digits = load_classes("digits")
    assert digits.classnames == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_sample_class_texts_is_seeded_and_one_per_class():
    classes = load_classes("imagenet")
    a = sample_class_texts(classes, torch.Generator().manual_seed(0))
    b = sample_class_texts(classes, torch.Generator().manual_seed(0))
    c = sample_class_texts(classes, torch.Generator().manual_seed(1))
    assert a == b and a != c and len(a) == 1000
    assert all(name in text for name, text in zip(classes.classnames, a))


def test_load_classes_from_file_and_validation(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"classnames": ["a", "b"], "templates": ["a {}."]}))
    assert load_classes(good).classnames == ("a", "b")
    cases = {
        "missing": None,
        "badjson": "{not json",
        "notobject": json.dumps(["a"]),
        "empty": json.dumps({"classnames": [], "templates": ["{}"]}),
        "notemplate": json.dumps({"classnames": ["a"], "templates": ["no placeholder"]}),
        "nontext": json.dumps({"classnames": [1, 2], "templates": ["{}"]}),
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.json"
        if content is not None:
            path.write_text(content)
        with pytest.raises(FlytInputError):
            load_classes(path)
