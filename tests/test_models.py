import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.flyt.models import GLUHead, MixingModel, load_scoring_model, save_scoring_model


def test_mixing_model_is_linear_on_standardised_inputs(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 0.1], size=(1000, 3))
    m = MixingModel.from_pool_features(["a", "b", "c"], feats)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.tensor(feats[:7], dtype=torch.float64)
    z = (feats[:7] - feats.mean(0)) / feats.std(0)
    np.testing.assert_allclose(m(x).detach().numpy(), z @ np.array([0.5, -1.0, 2.0]), rtol=1e-5)
    assert m.mixing_weights() == pytest.approx({"a": 0.5, "b": -1.0, "c": 2.0})
    save_scoring_model(tmp_path / "m.pt", m, {"note": 1})
    m2, meta = load_scoring_model(tmp_path / "m.pt")
    assert meta == {"note": 1} and m2.input_names == ["a", "b", "c"]
    torch.testing.assert_close(m2(x), m(x))
    with pytest.raises(FlytInputError, match="expects 3 input scores"):
        m(torch.zeros(2, 2))


def test_mixing_model_rejects_bad_statistics():
    with pytest.raises(FlytInputError, match="positive std"):
        MixingModel.from_pool_features(["a", "b"], np.stack([np.ones(10), np.arange(10.0)], 1))
    with pytest.raises(FlytInputError, match="distinct"):
        MixingModel(["a", "a"], [0, 0], [1, 1])


def test_glu_head_cosine_init_tracks_cosine_similarity(tmp_path):
    torch.manual_seed(0)
    img, txt = torch.randn(256, 32), torch.randn(256, 32)
    txt[:128] = img[:128] + 0.3 * torch.randn(128, 32)  # half matched pairs: a wide cosine range
    head = GLUHead(32, 64, cosine_init=True)
    with torch.no_grad():
        s = head(img, txt)
    cos = F.cosine_similarity(img, txt)
    assert torch.corrcoef(torch.stack([s, cos]))[0, 1] > 0.99
    plain = GLUHead(32, 64)
    with torch.no_grad():
        assert torch.corrcoef(torch.stack([plain(img, txt), cos]))[0, 1] < 0.9
    save_scoring_model(tmp_path / "e.pt", head)
    again, _ = load_scoring_model(tmp_path / "e.pt")
    torch.testing.assert_close(again(img, txt), head(img, txt))


def test_load_scoring_model_errors(tmp_path):
    with pytest.raises(FlytInputError, match="does not exist"):
        load_scoring_model(tmp_path / "none.pt")
    torch.save({"kind": "other"}, tmp_path / "x.pt")
    with pytest.raises(FlytInputError, match="not a flyt-datacomp scoring model"):
        load_scoring_model(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FlytInputError, match="not a PyTorch file"):
        load_scoring_model(tmp_path / "junk.pt")


def test_reference_model_errors_name_the_culprit(tmp_path, monkeypatch):
    import open_clip

    from flyt_datacomp.clip_models import create_clip, tiny_clip_config

    with pytest.raises(FlytInputError, match="unknown CLIP architecture 'ViT-Nope'.*tiny-resnet"):
        create_clip("ViT-Nope")
    small = create_clip(tiny_clip_config(embed_dim=32), seed=0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in small.state_dict().items()}}, tmp_path / "ref.pt")
    with pytest.raises(FlytInputError, match=r"ref\.pt does not fit the reference architecture"):
        create_clip(tiny_clip_config(), checkpoint=str(tmp_path / "ref.pt"))
    loaded = create_clip(tiny_clip_config(embed_dim=32), checkpoint=str(tmp_path / "ref.pt"))  # DDP prefix dropped
    torch.testing.assert_close(loaded.text_projection, small.text_projection)

    def offline(name, pretrained=None):
        raise RuntimeError(f"Failed to download weights for tag '{pretrained}': no network")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(FlytInputError, match="weights 'openai' for ViT-B-32: Failed to download.*`reference_checkpoint`"):
        create_clip("ViT-B-32", pretrained="openai")


@pytest.mark.parametrize("change", ["complex", "bool", "sparse", "meta", "a list"])
def test_a_scoring_model_with_weights_that_are_not_real_numbers_is_refused(tmp_path, change):
    """torch would load complex weights into the model's real ones with only a warning."""
    save_scoring_model(tmp_path / "m.pt", MixingModel(["a", "b"], [0.0, 1.0], [1.0, 2.0]))
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    w = payload["state_dict"]["weight"]
    payload["state_dict"]["weight"] = {"complex": w.to(torch.complex64), "bool": w > 0, "sparse": w.to_sparse(),
                                       "meta": w.to("meta"), "a list": w.tolist()}[change]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(FlytInputError, match=r"bad\.pt: weight (holds|is)"):
        load_scoring_model(tmp_path / "bad.pt")
