"""The machine-aware kernel choice (target/kernels.py): what is measured, cached and applied."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from specblock.errors import InvalidSettingError
from specblock.target import kernels
from specblock.target import cpu as cpu_info
from specblock.target.cpu import CpuFeatures, auto_dtype
from specblock.target.kernels import KernelPlan, Linear, kernel_table, measure_kernel_table
from specblock.target.transformer import Transformer


def test_the_table_names_a_kernel_for_each_cpu_dtype():
    plans = measure_kernel_table()
    assert set(plans) == {"float32", "bfloat16", "float16", "int8"}
    for name, plan in plans.items():
        candidate = (plan.backend, plan.min_rows, plan.chunk_rows)
        assert candidate in kernels._candidates(getattr(torch, name))
        assert kernels.timing_name(candidate) in plan.timings_us  # it was timed, not assumed
        chosen = plan.timings_us[kernels.timing_name(candidate)]
        if not plan.invariant:  # none was (or the attention failed its probe): the fastest, or within 10% of it
            assert chosen <= 1.1 * min(plan.timings_us.values())


def test_packed_onednn_products_equal_f_linear_bit_for_bit():
    weight = (torch.randn(96, 64) / 8).bfloat16()
    x = torch.randn(5, 64).bfloat16()
    try:
        lin = Linear(weight, plan=KernelPlan("cpu", "bfloat16", backend="onednn"))
    except (RuntimeError, NotImplementedError):
        pytest.skip("this torch build has no oneDNN packed linear")
    assert lin.weight is not weight  # packed once at construction, into oneDNN's own layout
    assert torch.equal(lin(x), F.linear(x, weight))


def test_the_table_is_cached_per_machine_and_remeasured_when_missing_or_unreadable(monkeypatch):
    monkeypatch.setattr(kernels, "_TABLE", None)
    first = kernel_table()
    key = kernels._table_key()
    saved = json.loads(kernels.table_path().read_text())
    assert set(saved["tables"][key]) == set(first)
    # the same machine's table is read back as written (a planted choice shows it was not remeasured)
    saved["tables"][key]["bfloat16"]["min_rows"] = 8
    kernels.table_path().write_text(json.dumps(saved))
    monkeypatch.setattr(kernels, "_TABLE", None)
    assert kernel_table()["bfloat16"].min_rows == 8
    # another machine's entry is kept beside this one's, never used for it
    other = json.loads(json.dumps(saved["tables"][key]))
    other["bfloat16"]["min_rows"] = 99
    saved["tables"] = {"format 2 | another CPU | 2 threads | torch 0": other}
    kernels.table_path().write_text(json.dumps(saved))
    monkeypatch.setattr(kernels, "_TABLE", None)
    assert kernel_table()["bfloat16"].min_rows in kernels.PAD_CANDIDATES
    assert set(json.loads(kernels.table_path().read_text())["tables"]) == {key, "format 2 | another CPU | 2 threads | torch 0"}
    # a corrupt file or an old-format entry is measured again, not a crash at load
    for bad in ("{not json", json.dumps({"tables": {key: {"bfloat16": {"device": "cpu"}}}})):
        kernels.table_path().write_text(bad)
        monkeypatch.setattr(kernels, "_TABLE", None)
        assert kernel_table()["bfloat16"].min_rows in kernels.PAD_CANDIDATES


def test_cpus_sharing_a_model_name_keep_their_own_measurements(monkeypatch):
    from specblock.budget import machine_key

    flags = {"amx_bf16": False, "avx512_bf16": True, "avx512": True, "avx2": True}
    keys = []
    for generation in ("cpu family 25 model 17 stepping 1", "cpu family 26 model 2 stepping 0"):  # Zen 4, Zen 5
        features = lambda g=generation: CpuFeatures("AMD EPYC", **flags, generation=g)  # noqa: E731
        monkeypatch.setattr(kernels, "cpu_features", features)  # the table's key
        monkeypatch.setattr(cpu_info, "cpu_features", features)  # the profiles' (budget.machine_key)
        keys.append((kernels._table_key(), machine_key("bfloat16: onednn, rows padded to 2, row-invariant")))
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]
    assert "family 25" in keys[0][0] and "family 26" in keys[1][1]


def test_cpuinfo_parsing_reads_the_generation_on_x86_and_arm():
    x86 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
           "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
           "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 99\nmodel name\t: other\nflags\t\t: fpu\n")  # fmt: skip
    cpu = cpu_info.parse_cpuinfo(x86)
    assert (cpu.model, cpu.avx512_bf16, cpu.amx_bf16) == ("AMD EPYC", True, False)  # "model" is not "model name"
    assert cpu.generation == "cpu family 25 model 17 stepping 1"  # the first processor's
    arm = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    cpu = cpu_info.parse_cpuinfo(arm, fallback_model="aarch64")
    assert cpu.model == "aarch64" and cpu.generation == "CPU implementer 0x41 CPU part 0xd0c"
    empty = cpu_info.parse_cpuinfo("", fallback_model="x86_64")
    assert empty.model == "x86_64" and "generation unknown" in empty.key()


def test_auto_dtype_follows_the_instruction_set(monkeypatch):
    def cpu(**flags):
        base = {"amx_bf16": False, "avx512_bf16": False, "avx512": True, "avx2": True}
        return lambda: CpuFeatures("test CPU", **(base | flags))

    monkeypatch.setattr(cpu_info, "cpu_features", cpu(amx_bf16=True))
    assert auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(cpu_info, "cpu_features", cpu(avx512_bf16=True))
    assert auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(cpu_info, "cpu_features", cpu())
    assert auto_dtype("cpu") == torch.float32
    assert auto_dtype("cuda") == torch.bfloat16


def test_rows_below_the_plan_minimum_are_padded_and_weights_are_never_converted():
    weight = torch.randn(48, 32).bfloat16()
    x = torch.randn(3, 32).bfloat16()
    lin = Linear(weight, plan=KernelPlan("cpu", "bfloat16", min_rows=8))
    assert lin.weight.data_ptr() == weight.data_ptr()  # stored as given, in its dtype
    padded = torch.zeros(8, 32, dtype=torch.bfloat16)
    padded[:3] = x
    assert torch.equal(lin(x), F.linear(padded, weight)[:3])
    assert torch.equal(lin(x[None])[0], lin(x))  # leading dimensions are rows too


def test_a_chunked_plan_runs_exact_calls_in_fixed_size_calls_and_the_rest_plain(monkeypatch):
    weight = torch.randn(48, 32).bfloat16()
    lin = Linear(weight, plan=KernelPlan("cpu", "bfloat16", chunk_rows=4))
    calls = []
    real = lin._product
    monkeypatch.setattr(lin, "_product", lambda x: calls.append(x.shape[0]) or real(x))
    x = torch.randn(10, 32).bfloat16()
    y = lin(x, exact=True)
    assert calls == [4, 4, 4] and y.shape == (10, 48)  # 10 rows: three calls of 4, the last padded
    padded = torch.zeros(12, 32, dtype=torch.bfloat16)
    padded[:10] = x
    assert torch.equal(y, torch.cat([F.linear(padded[i : i + 4], weight) for i in (0, 4, 8)])[:10])
    calls.clear()
    assert torch.equal(lin(x), F.linear(x, weight)) and calls == [10]  # not exact (a prefill): one plain call
    assert torch.equal(lin(x[:1], exact=True), F.linear(padded[:4], weight)[:1])


def test_a_chunked_candidate_is_checked_in_exact_calls(monkeypatch):
    """The table's invariance check must see the chunks: plain calls of the same kernel vary here."""
    assert ("onednn", 1, kernels.CHUNK_ROWS) in kernels._candidates(torch.bfloat16)
    # a product whose rows depend on the call size, but not within fixed chunks, is chosen chunked
    monkeypatch.setattr(kernels, "_candidates", lambda dtype: [("torch", 1, 0), ("torch", 1, 4)])
    monkeypatch.setattr(kernels, "attention_is_layout_invariant", lambda dtype, rows, *heads: True)
    monkeypatch.setattr(Linear, "_product", lambda self, x: F.linear(x, self.weight) + x.shape[0] * 1e-2)
    plan = measure_kernel_table((torch.bfloat16,))["bfloat16"]
    assert (plan.backend, plan.min_rows, plan.chunk_rows, plan.invariant) == ("torch", 1, 4, True)
    # where plain calls are invariant too, they win a tie (prefills and drafters then pay nothing)
    monkeypatch.setattr(Linear, "_product", lambda self, x: F.linear(x, self.weight))
    monkeypatch.setattr(kernels, "_rows_invariant", lambda product, weight: True)
    monkeypatch.setattr(kernels, "median_us", lambda fn: 100.0)
    assert measure_kernel_table((torch.bfloat16,))["bfloat16"].chunk_rows == 0


def test_fp32_takes_a_padded_row_invariant_candidate_and_probes_its_attention(monkeypatch):
    """The AMX Xeon's fp32 case on any CPU: a lone row takes another path (matrix-vector) and
    rounds differently from every larger call. The table must pad it to 2 rows rather than take
    the faster plain call, and the verify attention's probe must run in fp32 as well."""
    assert ("onednn", 2, 0) in kernels._candidates(torch.float32)
    monkeypatch.setattr(kernels, "_candidates", lambda dtype: [("torch", 1, 0), ("torch", 2, 0)])
    probed = []
    monkeypatch.setattr(kernels, "attention_is_layout_invariant",
                        lambda dtype, rows, *heads: probed.append((dtype, rows, heads)) or True)
    rows_seen: list[int] = []

    def lone_row_differs(self, x):  # rows one by one (invariant by construction), but a 1-row call is off
        rows_seen.append(x.shape[0])
        return torch.cat([F.linear(row, self.weight) for row in x.split(1)]) + (1e-2 if x.shape[0] == 1 else 0.0)

    monkeypatch.setattr(Linear, "_product", lone_row_differs)

    def one_row_is_cheaper(fn):  # the unpadded candidate times faster, as a matrix-vector call does
        rows_seen.clear()
        fn()
        return 50.0 if rows_seen == [1] else 100.0

    monkeypatch.setattr(kernels, "median_us", one_row_is_cheaper)
    plan = measure_kernel_table((torch.float32,))["float32"]
    assert (plan.backend, plan.min_rows, plan.chunk_rows, plan.invariant) == ("torch", 2, 0, True)
    assert plan.timings_us["torch_rows1"] < plan.timings_us["torch_rows2"]
    assert probed == [(torch.float32, 2, heads) for heads in kernels.PROBE_SHAPES]
    # a user who trades exactness for speed gets the faster plain call, filed apart in the cache
    exact_key = kernels._table_key()
    monkeypatch.setenv("SPECBLOCK_KERNELS", "fastest")
    plan = measure_kernel_table((torch.float32,))["float32"]
    assert (plan.min_rows, plan.invariant) == (1, False) and kernels._table_key() != exact_key
    monkeypatch.setenv("SPECBLOCK_KERNELS", "quick")
    with pytest.raises(InvalidSettingError, match="exact or fastest"):
        measure_kernel_table((torch.float32,))


def test_the_attention_is_padded_to_the_fewest_rows_its_probe_passes_with(monkeypatch):
    """fp32 on the AMX Xeon: batched attention products of a few rows round apart from larger
    ones for some head shapes. The table pads the attention's products (not the weights') up
    to the first row count whose probe passes on every shape, and gives up beyond its candidates."""
    monkeypatch.setattr(kernels, "_candidates", lambda dtype: [("torch", 2, 0)])
    monkeypatch.setattr(kernels, "_rows_invariant", lambda product, weight: True)
    monkeypatch.setattr(kernels, "median_us", lambda fn: 100.0)
    monkeypatch.setattr(kernels, "attention_is_layout_invariant", lambda dtype, rows, *heads: rows >= 8 or heads[1] > 2)
    plan = measure_kernel_table((torch.float32,))["float32"]
    assert (plan.min_rows, plan.attention_rows, plan.invariant) == (2, 8, True)
    assert "attention rows padded to 8" in plan.describe()
    monkeypatch.setattr(kernels, "attention_is_layout_invariant", lambda dtype, rows, *heads: heads[1] > 2)
    plan = measure_kernel_table((torch.float32,))["float32"]
    assert not plan.invariant and "attention" not in plan.describe()


def test_fp32_numpy_backend_stores_one_transposed_copy(monkeypatch):
    weight = torch.randn(16, 8)
    lin = Linear(weight, torch.randn(16), plan=KernelPlan("cpu", "float32", backend="numpy"))
    assert lin.weight is None and lin._weight_t.shape == (8, 16)
    x = torch.randn(5, 8)
    torch.testing.assert_close(lin(x), F.linear(x, weight, lin.bias), atol=1e-5, rtol=1e-5)
    padded = Linear(weight, plan=KernelPlan("cpu", "float32", backend="numpy", min_rows=2, chunk_rows=4))
    rows: list[int] = []
    real = np.matmul
    monkeypatch.setattr(np, "matmul", lambda a, b: rows.append(a.shape[0]) or real(a, b))
    torch.testing.assert_close(padded(x[:1]), F.linear(x[:1], weight), atol=1e-5, rtol=1e-5)
    assert rows == [2]  # a lone row padded like any backend's
    rows.clear()
    torch.testing.assert_close(padded(x, exact=True), F.linear(x, weight), atol=1e-5, rtol=1e-5)
    assert rows == [4, 4]  # exact calls in chunks too


def test_bf16_rows_are_identical_alone_and_in_a_batch_with_the_measured_plan():
    plan = kernel_table()["bfloat16"]
    if not plan.invariant:
        pytest.skip(f"no row count gives bit-identical bf16 rows on this CPU ({cpu_info.cpu_features().describe()})")
    weight = (torch.randn(1536, 576) / 24).bfloat16()
    lin = Linear(weight, plan=plan)
    x = torch.randn(40, 576).bfloat16()
    batch = lin(x, exact=True)  # as a verify forward calls it
    for i in range(40):
        assert torch.equal(lin(x[i : i + 1], exact=True)[0], batch[i])


def test_one_row_bf16_decoding_matches_transformers_in_bf16(tiny_llama):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 128, (12,), generator=torch.Generator().manual_seed(6))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        want = hf(ids[None]).logits[0].float()
    model = Transformer.load(tiny_llama, dtype=torch.bfloat16)
    cache = model.new_cache(16)
    got = []
    for i in range(12):  # one row per forward: the plain decoding path
        got.append(model.logits(model.forward(ids[i : i + 1], torch.tensor([i]), cache, i).hidden)[0])
    got = torch.stack(got)
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.03 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_chunks_can_be_switched_off_and_are_filed_apart(monkeypatch):
    monkeypatch.setenv("SPECBLOCK_KERNEL_CHUNKS", "off")
    assert all(chunk == 0 for _, _, chunk in kernels._candidates(torch.bfloat16))
    off = kernels._table_key()
    monkeypatch.setenv("SPECBLOCK_KERNEL_CHUNKS", "on")
    assert any(chunk for _, _, chunk in kernels._candidates(torch.bfloat16)) and kernels._table_key() != off
    monkeypatch.setenv("SPECBLOCK_KERNEL_CHUNKS", "maybe")
    with pytest.raises(InvalidSettingError, match="on or off"):
        kernels._candidates(torch.bfloat16)
