"""Networks with their conditioning bound (``mrsynth.networks.Conditioned`` / ``PromptConditioned``):
the same outputs as the network called with the conditions, the same weights file."""

from __future__ import annotations

import torch
from monai.inferers import SlidingWindowInferer

from mrsynth.inferers import ImplicitSlidingWindowInferer
from mrsynth.networks import Conditioned, PromptConditioned, availability_mask
from test_networks import tiny
from test_tsf import tiny_tsf
from test_tumsyn import tiny_tumsyn, tokens


def test_conditioned_seq2seq_equals_the_call_with_the_code_and_shares_weights():
    net = tiny()
    bound = Conditioned(net, [3]).eval()
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(bound(x), net(x, torch.tensor([3, 3])))
    assert bound.state_dict().keys() == net.state_dict().keys()  # models/model.pt loads unchanged
    other = tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    Conditioned(other, [3]).load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x, torch.tensor([3, 3])), net(x, torch.tensor([3, 3])))
    assert not torch.equal(Conditioned(net, [1])(x), bound(x))  # the code is used


def test_conditioned_tsf_binds_mask_and_code():
    net = tiny_tsf().eval()
    mask = availability_mask(["t1", "t1ce", "t2", "flair"], ["flair"])
    assert mask.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(Conditioned(net, [mask, 3])(x), net(x, mask.expand(2, 4), torch.tensor([3, 3])))


def test_prompt_conditioned_equals_the_implicit_inferer_on_the_input_grid():
    net = tiny_tumsyn().eval()
    tok = tokens([1, 2, 3])
    bound = PromptConditioned(net, tok)
    x = torch.rand(1, 1, 12, 10, 8)
    with torch.no_grad():
        dense = bound(x)
        ref = ImplicitSlidingWindowInferer(roi_size=16, skip_below=None)(x, net, tok)  # one window: no blending
    assert dense.shape == (1, 1, 12, 10, 8)
    torch.testing.assert_close(dense, ref, rtol=1e-4, atol=1e-5)
    # windowed with MONAI's own inferer, as a serving tool would, it tracks the implicit inferer
    # (window placement and blending weights differ a little: r 0.988-0.990 over three seeds)
    with torch.no_grad():
        win = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.5, mode="gaussian", sigma_scale=0.125)(x, bound)
        ref = ImplicitSlidingWindowInferer(roi_size=8, overlap=0.5, skip_below=None)(x, net, tok)
    assert win.shape == ref.shape
    assert float(torch.corrcoef(torch.stack([win.flatten(), ref.flatten()]))[0, 1]) > 0.95
