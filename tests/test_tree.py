"""Draft-tree layout: ancestor mask, depths, validation, depth truncation and trie building."""

import pytest
import torch

from specblock.tree import DraftTree, TrieBuilder, verify_children, verify_layout


def sample_tree() -> DraftTree:
    #        root
    #       /    \
    #     a(0)   b(1)
    #    /   \      \
    #  c(2)  d(3)   e(4)
    #   |
    #  f(5)
    t = DraftTree()
    for tok, par in [(10, -1), (11, -1), (12, 0), (13, 0), (14, 1), (15, 2)]:
        t.add(tok, par)
    return t


def test_mask_and_depths_by_hand():
    mask, depth = verify_layout(sample_tree())
    assert depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],  # root
            [1, 1, 0, 0, 0, 0, 0],  # a
            [1, 0, 1, 0, 0, 0, 0],  # b
            [1, 1, 0, 1, 0, 0, 0],  # c
            [1, 1, 0, 0, 1, 0, 0],  # d
            [1, 0, 1, 0, 0, 1, 0],  # e
            [1, 1, 0, 1, 0, 0, 1],  # f
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    assert verify_children(sample_tree()) == [[1, 2], [3, 4], [5], [6], [], [], []]


def test_validate_rejects_bad_trees():
    t = sample_tree()
    t.validate(budget=6)
    with pytest.raises(ValueError, match="budget"):
        t.validate(budget=5)
    dup = DraftTree([5, 5], [-1, -1], [0.0, 0.0])
    with pytest.raises(ValueError, match="repeats"):
        dup.validate(budget=10)
    forward_ref = DraftTree([5, 6], [1, -1], [0.0, 0.0])
    with pytest.raises(ValueError, match="parents must come first"):
        forward_ref.validate(budget=10)


def test_truncated_to_depth_keeps_shallow_nodes_and_renumbers():
    t = sample_tree().truncated_to_depth(2)
    assert t.tokens == [10, 11, 12, 13, 14]
    assert t.parents == [-1, -1, 0, 0, 1]
    assert sample_tree().truncated_to_depth(0).tokens == []


def test_trie_merges_shared_prefixes_within_budget():
    b = TrieBuilder(budget=5)
    b.insert([1, 2, 3])
    b.insert([1, 2, 4])
    b.insert([5, 6, 7])
    assert b.tree.tokens == [1, 2, 3, 4, 5]
    assert b.tree.parents == [-1, 0, 1, 1, -1]
    assert b.full
