"""Batch invariance in bf16 and fp32: a token's logits are the same, bit for bit, whether the
target decodes it alone or verifies it inside a draft tree after the same prefix. This is what
lets speculative decoding equal plain decoding token for token, near-ties included (design §11a)."""

import pytest
import torch

from specblock.target.kernels import kernel_table
from specblock.target.runner import TargetRunner
from specblock.target.transformer import Transformer
from specblock.tree import DraftTree


def plain_logits(model: Transformer, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """Logits after the prompt and after each continuation token, decoding one token a forward."""
    runner = TargetRunner(model)
    rows = [runner.prefill(prompt[:-1], 128, capture=False).logits[0]]
    for token in [prompt[-1], *continuation]:
        rows.append(runner.verify(token, DraftTree(), capture=False).logits[0])
        runner.commit([0])
    return torch.stack(rows[1:])


# 9 tokens: the whole context is one row-by-row tail; 62: a shared chunk of context too, and the
# chain crosses the attention's chunk boundary at position 64 (target/primitives.py)
@pytest.mark.parametrize("prompt_length", [9, 62])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_chain_inside_a_bushy_tree_has_the_logits_of_plain_decoding(fixture, prompt_length, dtype, request):
    if not kernel_table()[str(dtype).removeprefix("torch.")].invariant:
        pytest.skip(f"this CPU gives no row-invariant {dtype} product (see the kernel table)")
    model = Transformer.load(request.getfixturevalue(fixture), dtype=dtype)
    if not model.plan.invariant:
        pytest.skip("the table's OpenBLAS fp32 plan fell back to PyTorch: an earlier model set the thread pool")
    assert model.batch_invariant
    assert_chain_in_tree_decodes_plainly(model, prompt_length)


def test_fp32_padding_keeps_tree_rows_plain_where_a_lone_row_rounds_differently(tiny_qwen2, monkeypatch):
    """The AMX Xeon's fp32 case on any CPU: a product whose lone row takes another path (here
    rows computed one by one, plus 0.01 in 1-row calls) still gives a chain inside a tree the
    logits of plain decoding under a plan that pads every call to 2 rows."""
    from specblock.target import attention, kernels
    from specblock.target.kernels import KernelPlan, Linear

    if not attention.attention_is_layout_invariant(torch.float32, 2):
        pytest.skip("this CPU's layout-invariant attention is not invariant in fp32 (see the kernel table)")
    monkeypatch.setattr(kernels, "_TABLE", kernel_table() | {"float32": KernelPlan("cpu", "float32", "torch", 2, 0)})
    real = Linear._product

    def lone_row_differs(self, x):
        return torch.cat([real(self, row) for row in x.split(1)]) + (0.01 if x.shape[0] == 1 else 0.0)

    monkeypatch.setattr(Linear, "_product", lone_row_differs)
    model = Transformer.load(tiny_qwen2, dtype=torch.float32)
    assert model.batch_invariant
    assert_chain_in_tree_decodes_plainly(model, 62)


def test_fixed_chunks_keep_tree_rows_plain_where_a_product_depends_on_the_call_size(tiny_llama, monkeypatch):
    """The AMX Xeon's case on any CPU: a product whose rows change with the call size (here by
    an offset of 0.01 per row in the call) still gives a chain inside a tree the logits of
    plain decoding under a plan that runs exact calls in fixed 4-row chunks."""
    from specblock.target import attention, kernels
    from specblock.target.kernels import KernelPlan, Linear

    if not attention.attention_is_layout_invariant(torch.bfloat16, 1):
        pytest.skip("this CPU's layout-invariant attention is not invariant at 1 row (see the kernel table)")
    monkeypatch.setattr(kernels, "_TABLE", kernel_table() | {"bfloat16": KernelPlan("cpu", "bfloat16", "torch", 1, 4)})
    real = Linear._product
    monkeypatch.setattr(Linear, "_product", lambda self, x: real(self, x) + 0.01 * x.shape[0])
    model = Transformer.load(tiny_llama, dtype=torch.bfloat16)
    assert model.batch_invariant
    assert_chain_in_tree_decodes_plainly(model, 62)


def assert_chain_in_tree_decodes_plainly(model: Transformer, prompt_length: int) -> None:
    """A chain verified inside a bushy tree gets, row for row, the logits of decoding it plainly."""
    prompt = [(7 * i + 5) % 60 + 3 for i in range(prompt_length)]
    chain = [44, 13, 60, 21]
    want = plain_logits(model, prompt, chain)  # rows: after the root, then after each chain token
    tree = DraftTree()
    parent = -1
    for depth, token in enumerate(chain):
        tree.add(token + 1, parent)  # a sibling before the chain node, and one after
        node = tree.add(token, parent)
        tree.add(token + 2, parent)
        if depth == 1:
            tree.add(3, tree.add(2, node))  # a side branch below a chain node
        parent = node
    runner = TargetRunner(model)
    runner.prefill(prompt[:-1], 128, capture=False)
    got = runner.verify(prompt[-1], tree, capture=False).logits
    chain_rows = [0] + [1 + i for i, (t, p) in enumerate(zip(tree.tokens, tree.parents)) if t in chain and
                        (p == -1 or tree.tokens[p] in chain)]  # fmt: skip
    assert len(chain_rows) == len(chain) + 1
    for row, expected in zip(chain_rows, want):
        assert torch.equal(got[row], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_attention_probe_fails_when_the_layout_leaks_into_the_result(dtype, monkeypatch):
    """The kernel table's probe must notice an attention whose rows depend on the tree layout."""
    from specblock.target import attention

    plan = kernel_table()[str(dtype).removeprefix("torch.")]
    if plan.invariant:  # the table ran the probe and it passed
        assert attention.attention_is_layout_invariant(dtype, plan.min_rows)
    real = attention.layout_invariant_attention

    def leaky(q, keys, values, layout, min_rows=2):  # depends on how many rows share the call
        return real(q, keys, values, layout, min_rows) + q.shape[1] * 1e-2

    monkeypatch.setattr(attention, "layout_invariant_attention", leaky)
    assert not attention.attention_is_layout_invariant(dtype, 2)

    def leaks_across_requests(q, keys, values, layout, min_rows=2):  # right alone, wrong beside another request
        out = real(q, keys, values, layout, min_rows)
        return out + 1e-2 if layout.padding.segments > 1 else out

    monkeypatch.setattr(attention, "layout_invariant_attention", leaks_across_requests)
    assert not attention.attention_is_layout_invariant(dtype, 2)


def test_verify_forwards_ask_every_product_for_exact_calls_and_prefills_do_not(tiny_llama, monkeypatch):
    """A chunked kernel plan keeps rows invariant only in exact calls: every product of a verify
    forward (the lm_head too) must ask for them, and a prefill's layers must not (they take the
    faster plain call, and are computed the same way with or without speculation); a prefill's
    logits do (the last row's must not depend on how many logit rows came with it)."""
    from specblock.target import kernels
    from specblock.target.kernels import KernelPlan, Linear

    chunked = KernelPlan("cpu", "bfloat16", "torch", 1, 4, invariant=True)
    monkeypatch.setattr(kernels, "_TABLE", kernel_table() | {"bfloat16": chunked})
    calls: list[bool] = []
    real = Linear.__call__
    monkeypatch.setattr(Linear, "__call__", lambda self, x, exact=False: calls.append(exact) or real(self, x, exact))
    model = Transformer.load(tiny_llama, dtype=torch.bfloat16)
    assert model.batch_invariant
    assert calls and all(calls)  # the load warmed every product up in exact calls
    calls.clear()
    runner = TargetRunner(model)
    runner.prefill([5, 6, 7, 8], 64, capture=False, logit_rows=[1])
    assert calls[-1] and not any(calls[:-1])  # the lm_head last
    calls.clear()
    tree = DraftTree()
    tree.add(9, tree.add(8, -1))
    runner.verify(4, tree, capture=False)
    per_layer = 4  # qkv, o_proj, gate_up, down
    assert calls == [True] * (per_layer * model.cfg.num_layers + 1)  # + the lm_head


def test_a_model_probes_the_attention_with_its_own_head_shape_at_load(tiny_qwen2, monkeypatch):
    """The table probes two head shapes; a kernel may still treat the model's own apart (a lone
    query row per kv head), so the load's probe, which decides exactness, uses the model's."""
    from specblock.target import kernels, transformer
    from specblock.target.kernels import KernelPlan

    monkeypatch.setattr(kernels, "_TABLE", kernel_table() | {"float32": KernelPlan("cpu", "float32", "torch", 1, 0)})
    seen = []
    monkeypatch.setattr(transformer, "attention_is_layout_invariant", lambda dtype, rows, *heads: seen.append(heads))
    model = Transformer.load(tiny_qwen2, dtype=torch.float32)
    cfg = model.cfg
    assert seen == [(cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)]
    assert not model.batch_invariant  # the probe said no (None): no exactness claimed


def test_verify_attention_pads_its_products_to_the_plans_attention_rows(tiny_qwen2, monkeypatch):
    """The plan's `attention_rows` (8 for fp32 on the AMX Xeon) is what the probe passed with:
    every product of the verify attention must be padded to it, not to the weights' `min_rows`."""
    from specblock.target import attention, kernels
    from specblock.target.kernels import KernelPlan

    plan = KernelPlan("cpu", "float32", "torch", 2, 0, attention_rows=8)
    monkeypatch.setattr(kernels, "_TABLE", kernel_table() | {"float32": plan})
    paddings: list[int] = []
    real = attention._rows_matmul
    monkeypatch.setattr(attention, "_rows_matmul", lambda a, b, rows: paddings.append(rows) or real(a, b, rows))
    model = Transformer.load(tiny_qwen2, dtype=torch.float32)
    if not model.batch_invariant:
        pytest.skip("the load's probe found this CPU's fp32 attention not invariant even at 8 rows")
    runner = TargetRunner(model)
    runner.prefill(list(range(3, 70)), 128, capture=False)  # 67 tokens: shared chunks and a tail
    paddings.clear()
    tree = DraftTree()
    tree.add(9, tree.add(8, -1))
    runner.verify(4, tree, capture=False)
    assert paddings and set(paddings) == {8}
