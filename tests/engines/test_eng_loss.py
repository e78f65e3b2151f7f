"""Eq. 11 loss: hard-negative selection (3 per positive, per image) on hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch

from engines.loss import hard_negative_mask, voxel_loss


def test_hard_negatives_are_the_three_worst_negatives_of_each_image():
    # two images of 1 plane x 2 x 4 voxels; flat index = row * 4 + col
    bce = torch.tensor(
        [
            [
                [[0.1, 0.9, 0.2, 0.8], [5.0, 0.3, 0.7, 0.4]]
            ],  # image 0: the positive (index 4) has the largest BCE
            [[[0.5, 0.1, 0.6, 0.2], [0.3, 0.9, 0.4, 0.8]]],  # image 1: no positive at all
        ]
    )
    labels = torch.zeros_like(bce)
    labels[0, 0, 1, 0] = 1.0
    mask = hard_negative_mask(bce, labels)
    # image 0: 1 positive -> 3 negatives, the largest BCE among negatives: 0.9, 0.8, 0.7
    assert torch.nonzero(mask[0].flatten()).flatten().tolist() == [1, 3, 6]
    # image 1: max(n_pos, 1) = 1 -> 3 negatives: 0.9, 0.8, 0.6
    assert torch.nonzero(mask[1].flatten()).flatten().tolist() == [2, 5, 7]
    assert not (mask & (labels > 0.5)).any()


def test_hard_negatives_are_capped_by_the_negatives_available():
    bce = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 4)
    labels = torch.zeros_like(bce)
    labels[0, 0, 0, :3] = 1.0  # 3 positives want 9 negatives, only 5 exist
    mask = hard_negative_mask(bce, labels)
    assert torch.nonzero(mask.flatten()).flatten().tolist() == [3, 4, 5, 6, 7]


def test_hard_negative_ties_are_broken_by_position_and_ratio_is_honoured():
    bce = torch.ones(1, 2, 2, 2)
    labels = torch.zeros_like(bce)
    labels[0, 1, 1, 1] = 1.0
    mask = hard_negative_mask(bce, labels, ratio=2)
    assert torch.nonzero(mask.flatten()).flatten().tolist() == [0, 1]


def test_voxel_loss_by_hand():
    # logits 0 -> p = 0.5 everywhere: BCE = ln 2 per voxel. One positive -> it and 3 hard
    # negatives count: 4 ln 2. Sub-voxel outputs sigmoid(0) = 0.5 vs target (0.2, 0.7, 0.5):
    # L1 = 0.3 + 0.2 + 0 = 0.5. Both terms are per positive voxel (1 here).
    logits = torch.zeros(1, 1, 4, 2, 4)
    targets = torch.zeros(1, 1, 4, 2, 4)
    targets[0, 0, :, 1, 2] = torch.tensor([1.0, 0.2, 0.7, 0.5])
    loss, parts = voxel_loss(logits, targets)
    assert parts["positives"] == 1
    assert parts["bce"] == pytest.approx(4 * math.log(2), rel=1e-6)
    assert parts["l1"] == pytest.approx(0.5, rel=1e-6)
    assert float(loss) == pytest.approx(4 * math.log(2) + 0.5, rel=1e-6)


def test_voxel_loss_ignores_coordinates_of_negative_voxels():
    logits = torch.zeros(1, 1, 4, 2, 2)
    targets = torch.zeros(1, 1, 4, 2, 2)
    targets[0, 0, 0, 0, 0] = 1.0
    targets[0, 0, 1:, 0, 0] = 0.5  # exact sub-voxel prediction at the positive
    base, _ = voxel_loss(logits, targets)
    targets[0, 0, 1:, 1, 1] = 0.9  # coordinates of a negative voxel must not matter
    again, parts = voxel_loss(logits, targets)
    assert float(again) == pytest.approx(float(base)) and parts["l1"] == 0.0
