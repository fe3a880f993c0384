"""Tests of the 2:4 mask against a brute-force reference."""

import itertools

import pytest
import torch

from gpusq_mm.sparsity import compute_2to4_mask, is_2to4, kept_magnitude_ratio


def _reference_mask(weight: torch.Tensor) -> torch.Tensor:
    """Loop over every (out, kernel position, group of 4 input channels)."""
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    out_ch, in_ch = weight.shape[:2]
    kernel = list(itertools.product(*[range(s) for s in weight.shape[2:]]))
    for k in range(out_ch):
        for pos in kernel:
            for c0 in range(0, in_ch, 4):
                idx = [(k, c, *pos) for c in range(c0, c0 + 4)]
                mags = [abs(float(weight[i])) for i in idx]
                # largest magnitude first, lower channel index on ties
                order = sorted(range(4), key=lambda j: (-mags[j], j))
                for j in order[:2]:
                    mask[idx[j]] = True
    return mask


def _with_ties(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    # few distinct values, both signs: many ties, including |a| == |-a|
    values = torch.randint(-3, 4, shape, generator=gen).float()
    return values


@pytest.mark.parametrize(
    'shape',
    [(8, 16), (3, 8), (16, 32), (8, 16, 1, 1), (4, 8, 3, 3), (2, 4, 5, 2)],
)
@pytest.mark.parametrize('ties', [False, True])
def test_mask_matches_reference(shape, ties):
    if ties:
        weight = _with_ties(shape, seed=len(shape))
    else:
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mask = compute_2to4_mask(weight)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert torch.equal(mask, _reference_mask(weight))
    assert is_2to4(weight * mask)


def test_mask_groups_along_input_channels_of_conv():
    # the largest values are at channel 0, 1 of each group for every (r, s)
    weight = torch.zeros(2, 4, 3, 3)
    weight[:, 0] = -5.0
    weight[:, 1] = 4.0
    weight[:, 2] = 1.0
    weight[:, 3] = -1.0
    mask = compute_2to4_mask(weight)
    assert mask[:, :2].all() and not mask[:, 2:].any()


def test_mask_all_equal_keeps_first_two_channels():
    mask = compute_2to4_mask(torch.ones(2, 8))
    expected = torch.tensor([1, 1, 0, 0] * 2, dtype=torch.bool).expand(2, 8)
    assert torch.equal(mask, expected)


def test_mask_rejects_bad_shapes():
    with pytest.raises(ValueError):
        compute_2to4_mask(torch.randn(8, 6))
    with pytest.raises(ValueError):
        compute_2to4_mask(torch.randn(8))


def test_is_2to4_rejects_output_axis_pattern():
    # 2:4 along the output axis (dim 0) but dense along the input axis
    weight = torch.randn(8, 16)
    weight[2::4] = 0
    weight[3::4] = 0
    assert is_2to4(weight.t().contiguous())
    assert not is_2to4(weight)
    conv = torch.randn(8, 8, 3, 3)
    conv[2::4] = 0
    conv[3::4] = 0
    assert not is_2to4(conv)
    # 2:4 along the flattened C*R*S axis but not along C
    conv = torch.randn(4, 4, 1, 4)
    conv[..., 2:] = 0
    assert not is_2to4(conv)


def test_is_2to4_edge_cases():
    assert is_2to4(torch.zeros(4, 8))
    assert not is_2to4(torch.ones(4, 6))
    assert not is_2to4(torch.ones(8))


def test_kept_magnitude_ratio():
    weight = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert kept_magnitude_ratio(weight) == pytest.approx(0.7)
    assert kept_magnitude_ratio(torch.zeros(2, 4)) == 1.0
