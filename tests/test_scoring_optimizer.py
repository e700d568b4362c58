"""The scoring optimizer: weight decay on every scoring weight but biases (the authors' rule), and
checkpoints of the earlier one-group layout resumed with their Adam state."""

import pytest
import torch

from flyt_datacomp.flyt.losses import make_downstream_loss
from flyt_datacomp.flyt.models import GLUHead, MixingModel
from flyt_datacomp.flyt.trainer import scoring_param_groups, upgrade_scoring_opt_state


def models():
    torch.manual_seed(0)
    mix = MixingModel(["a", "b", "c"], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    with torch.no_grad():
        mix.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    glu = GLUHead(4, 6, seed=0)
    with torch.no_grad():
        glu.out.bias.fill_(0.7)  # non-zero, so that decay would show
    return {"m-flyt": mix, "e-flyt": glu}


@pytest.mark.parametrize("kind", ["m-flyt", "e-flyt"])
@pytest.mark.parametrize("loss_name", ["ce", "ce_temp"])
def test_weight_decay_reaches_weights_not_biases_nor_the_temperature(kind, loss_name):
    scoring, loss = models()[kind], make_downstream_loss(loss_name)
    before = {n: p.detach().clone() for n, p in scoring.named_parameters()}
    loss_before = [p.detach().clone() for p in loss.parameters()]
    opt = torch.optim.AdamW(scoring_param_groups(scoring, loss, 0.2), lr=0.1)
    for p in [*scoring.parameters(), *loss.parameters()]:
        p.grad = torch.zeros_like(p)  # no gradient: only weight decay can move a parameter
    opt.step()
    names = [n for n, _ in scoring.named_parameters()]
    assert names == (["weight"] if kind == "m-flyt" else ["gate.weight", "value.weight", "out.weight", "out.bias"])
    for n, p in scoring.named_parameters():
        if n == "out.bias":
            torch.testing.assert_close(p.detach(), before[n])  # the GLU head's bias: exempt, as in the code
        else:  # M-FLYT's weight vector too (the code's nn.Linear(k, 1) weight is decayed)
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.2))
    for p, b in zip(loss.parameters(), loss_before):
        torch.testing.assert_close(p.detach(), b)  # the downstream temperature


@pytest.mark.parametrize("kind", ["m-flyt", "e-flyt"])
@pytest.mark.parametrize("loss_name", ["ce", "ce_temp"])
def test_old_layout_checkpoint_state_moves_to_the_new_groups(kind, loss_name):
    scoring, loss = models()[kind], make_downstream_loss(loss_name)
    everything = [*scoring.parameters(), *loss.parameters()]
    old = torch.optim.AdamW([{"params": list(scoring.parameters()), "weight_decay": 0.2},
                             {"params": list(loss.parameters()), "weight_decay": 0.0}], lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p in everything:
            p.grad = torch.randn(p.shape, generator=gen)
        old.step()
    want = {id(p): {k: v.clone() for k, v in old.state[p].items()} for p in everything}
    new = torch.optim.AdamW(scoring_param_groups(scoring, loss, 0.2), lr=0.01)
    new.load_state_dict(upgrade_scoring_opt_state(old.state_dict(), scoring, loss))
    for p in everything:
        for key, value in want[id(p)].items():
            torch.testing.assert_close(new.state[p][key], value)
    # the current layout passes through unchanged
    again = torch.optim.AdamW(scoring_param_groups(scoring, loss, 0.2), lr=0.01)
    again.load_state_dict(upgrade_scoring_opt_state(new.state_dict(), scoring, loss))
    for p in everything:
        torch.testing.assert_close(again.state[p]["exp_avg"], want[id(p)]["exp_avg"])
