"""Tree verification + KV compaction leaves the cache exactly as if the accepted path had been decoded."""

import torch

from specblock.target.kv_cache import KVCache
from specblock.target.runner import TargetRunner
from specblock.target.transformer import Transformer
from specblock.tree import DraftTree


def test_keep_path_moves_slots():
    cache = KVCache(num_layers=1, num_kv_heads=1, head_dim=1, capacity=10, dtype=torch.float32, device="cpu")
    cache.keys[0, 0, :, 0] = torch.arange(10.0)
    cache.values[0, 0, :, 0] = -torch.arange(10.0)
    cache.length = 3
    cache.keep_path(3, [0, 2, 5])  # slots 3, 5, 8 -> 3, 4, 5
    assert cache.length == 6
    assert cache.keys[0, 0, :6, 0].tolist() == [0, 1, 2, 3, 5, 8]
    assert cache.values[0, 0, :6, 0].tolist() == [0, -1, -2, -3, -5, -8]


def test_tree_verify_then_commit_equals_sequential_decoding(tiny_llama):
    model = Transformer.load(tiny_llama)
    prompt = [5, 9, 13, 40, 41, 42]
    # tree under the root: branch A = [20, 21, 22], branch B = [30, 31], and 23 under 20
    tree = DraftTree()
    a0 = tree.add(20, -1)
    b0 = tree.add(30, -1)
    a1 = tree.add(21, a0)
    tree.add(31, b0)
    tree.add(23, a0)
    a2 = tree.add(22, a1)
    runner = TargetRunner(model)
    runner.prefill(prompt, capacity=32, capture=False)
    root = 7
    step = runner.verify(root, tree, capture=True)
    path = [0, a0 + 1, a1 + 1, a2 + 1]  # root, 20, 21, 22
    runner.commit(path)
    assert runner.length == len(prompt) + 4

    seq = torch.tensor(prompt + [root, 20, 21, 22])
    ref_cache = model.new_cache(32)
    ref = model.forward(seq, torch.arange(len(seq)), ref_cache, 0, capture=True)
    n = len(seq)
    torch.testing.assert_close(runner.cache.keys[:, :, :n], ref_cache.keys[:, :, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runner.cache.values[:, :, :n], ref_cache.values[:, :, :n], atol=1e-5, rtol=1e-5)
    # logits and features of the tree nodes on the path equal those of plain causal decoding
    torch.testing.assert_close(step.logits[path], model.logits(ref.hidden[-4:]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step.features[path], ref.features[-4:], atol=1e-4, rtol=1e-4)
    # an off-path node (31 under 30) sees only its own ancestors
    off = model.forward(torch.tensor(prompt + [root, 30, 31]), torch.arange(len(prompt) + 3), model.new_cache(32), 0)
    torch.testing.assert_close(step.logits[4], model.logits(off.hidden[-1]), atol=1e-4, rtol=1e-4)
    # the next forward after compaction continues correctly
    nxt = runner.verify(50, DraftTree(), capture=False)
    full = model.forward(torch.cat([seq, torch.tensor([50])]), torch.arange(n + 1), model.new_cache(32), 0)
    torch.testing.assert_close(nxt.logits[0], model.logits(full.hidden[-1]), atol=1e-4, rtol=1e-4)
