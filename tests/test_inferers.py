"""SlabInferer: slabs cut and stacked as the training data are, every slice averaged back."""

import torch

from mrsynth.inferers import SlabInferer
from mrsynth.transforms import extract_slab


def test_identity_network_returns_the_volume_and_sees_training_layout():
    vol = torch.randn(2, 2, 9, 10, 7)  # 2 cases, 2 source volumes each, H not divisible by 4
    seen = []

    def net(x, code):
        seen.append((x.clone(), code.clone()))
        return x[:, :3]  # "synthesize" source 0's slab

    out = SlabInferer(num_slices=3, batch_size=4, divisible_by=4)(vol, net, torch.tensor([1, 3]))
    assert out.shape == (2, 1, 9, 10, 7)
    torch.testing.assert_close(out[:, 0], vol[:, 0])  # overlapping predictions averaged exactly
    x0, c0 = seen[0]
    assert x0.shape == (4, 6, 12, 12)  # padded to multiples of 4 with -1
    expected = torch.cat([extract_slab(vol[0, :1], 0, 3), extract_slab(vol[0, 1:], 0, 3)])
    torch.testing.assert_close(x0[0, :, :9, :10], expected)
    assert float(x0[0, :, 9:, :].max()) == -1.0
    assert c0.tolist() == [1, 1, 1, 1] and seen[-1][1].tolist() == [3] * len(seen[-1][1])


def test_2d_network_with_one_slice():
    vol = torch.randn(1, 1, 8, 8, 5)
    out = SlabInferer(num_slices=1, batch_size=2)(vol, lambda x, c: 2 * x, torch.tensor([0]))
    torch.testing.assert_close(out, 2 * vol)
