"""The hardware-aware node budget (`--node-budget auto`, design §9).

A verify-latency profile T(n) (seconds for one target forward over a tree of n draft nodes
plus the root) is measured once per target, dtype, device and machine and cached under the
cache root. A drafter's calibration (its measured tau and drafting time at a few budgets,
stored in its config.json) then gives the expected tokens per second of each budget,
tau(n) / (T(n) + D(n)); `auto` takes the best, and that can be 0 (plain decoding through
the same engine) when no tree pays for its verify cost on this machine: on the 2-core CPU
this project measures on, verifying even one draft node costs 1.6-1.7 one-token forwards.
Without a calibration, `auto` takes the largest budget whose verify forward costs at most
1.5 one-token forwards (0 if none does). Drafting time D(n) is machine-specific too: when
`specblock profile` has measured the drafter on this machine (stored beside T(n) in the
profile), that measurement replaces the calibration's drafting times; tau stays the
calibration's, since it depends on the drafter and the text, not on the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from specblock.models.fetch import cache_root, file_sha256
from specblock.target.runner import TargetRunner
from specblock.tree import DraftTree

PROFILE_SIZES = (0, 1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 59, 64, 80, 96, 128)
PARITY_BUDGET = 59


def machine_key(kernels: str) -> str:
    """The CPU (model, instruction sets, generation), core count and the model's kernel choice
    (`Transformer.kernels`) a profile was measured with: another choice (a new candidate,
    `specblock profile`) times differently, so its profiles are measured again."""
    from specblock.target.cpu import cpu_features

    return f"{cpu_features().key()} x{os.cpu_count()} | {kernels}"


def profile_path(target_name: str, dtype: torch.dtype | str, device: str) -> Path:
    """Where T(n) is cached for a target in `dtype` (a torch dtype or a name such as 'int8')."""
    safe = str(target_name).strip("/").replace("/", "_") or "target"
    return cache_root() / "profiles" / f"{safe}-{str(dtype).removeprefix('torch.')}-{device.replace(':', '')}.json"


def measure_verify_latency(runner: TargetRunner, sizes=PROFILE_SIZES, context: int = 256, repeats: int = 5) -> dict[int, float]:
    """Median seconds of a verify forward over `n` draft nodes (+ root) after `context` tokens."""
    vocab = runner.model.cfg.vocab_size
    prompt = [(17 * i + 3) % vocab for i in range(context)]
    runner.prefill(prompt, context + max(sizes) + 2, capture=False)
    out: dict[int, float] = {}
    for n in sizes:
        tree = DraftTree()
        for i in range(n):  # a bushy tree: two children per node, as drafters build them
            tree.add((5 * i + 11) % vocab, (i - 1) // 2 if i > 0 else -1)
        times = []
        for _ in range(repeats + 1):
            _synchronize(runner.model.device)
            t0 = time.perf_counter()
            runner.verify(prompt[-1], tree, capture=True)
            _synchronize(runner.model.device)
            times.append(time.perf_counter() - t0)
        out[n] = sorted(times[1:])[len(times[1:]) // 2]
    return out


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the forward and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_or_measure(runner: TargetRunner, target_name: str, refresh: bool = False) -> dict[int, float]:
    """The cached profile for this target/dtype/device/machine, measuring it if missing."""
    model = runner.model
    path = profile_path(target_name, model.weights_key, str(model.device))
    if path.exists() and not refresh:
        saved = json.loads(path.read_text())
        if saved.get("machine") == machine_key(model.kernels):
            return {int(n): float(t) for n, t in saved["verify_s"].items()}
    latency = measure_verify_latency(runner)
    save_profile(path, str(target_name), model.kernels, latency)
    return latency


def save_profile(
    path: Path, target_name: str, kernels: str, latency: dict[int, float], draft_s: dict[str, dict[int, float]] | None = None
) -> None:  # fmt: skip
    """Write T(n) and any drafter latencies; drafter entries measured earlier on this machine
    with these kernels (`Transformer.kernels`) are kept."""
    drafters = dict(_read_drafter_latencies(path, kernels))
    drafters.update(draft_s or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    data = {"machine": machine_key(kernels), "target": target_name, "verify_s": latency, "draft_s": drafters}
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def drafter_key(method: str, source_dir: str | Path) -> str:
    """How a drafter's measured latency is filed in a profile: method, checkpoint directory
    and a fingerprint of its weights and drafting switches, so a checkpoint retrained or
    replaced in the same directory is measured again rather than matched to old timings."""
    path = Path(source_dir).resolve()
    weights = path / "model.safetensors"
    config = path / "config.json"
    drafting = json.loads(config.read_text()).get("drafting") if config.is_file() else None
    digest = hashlib.sha256(file_sha256(weights).encode() if weights.is_file() else b"")
    digest.update(json.dumps(drafting, sort_keys=True).encode())
    return f"{method}:{path}:{digest.hexdigest()[:16]}"


def _read_drafter_latencies(path: Path, kernels: str) -> dict[str, dict[int, float]]:
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    if saved.get("machine") != machine_key(kernels):
        return {}
    return {key: {int(n): float(t) for n, t in points.items()} for key, points in saved.get("draft_s", {}).items()}


def load_draft_latency(runner: TargetRunner, target_name: str, key: str) -> dict[int, float] | None:
    """The drafter's D(n) that `specblock profile` measured on this machine, if it did."""
    model = runner.model
    path = profile_path(target_name, model.weights_key, str(model.device))
    return _read_drafter_latencies(path, model.kernels).get(key)


def interpolate(points: dict[int, float], n: int) -> float:
    """Piecewise-linear in n through `points`, held flat beyond the first and last."""
    xs = sorted(points)
    if n <= xs[0]:
        return points[xs[0]]
    if n >= xs[-1]:
        return points[xs[-1]]
    for a, b in zip(xs, xs[1:]):
        if a <= n <= b:
            return points[a] + (points[b] - points[a]) * (n - a) / (b - a)
    raise AssertionError("unreachable")


def expected_tokens_per_s(verify_s: dict[int, float], calibration: dict, draft_s: dict[int, float] | None = None) -> dict[int, float]:
    """tau(n) / (T(n) + D(n)) at every profiled n the calibration reaches (n = 0: plain decoding)."""
    # no draft nodes: tau is exactly 1 and nothing is drafted (anchors the interpolation)
    tau = {0: 1.0} | {int(n): float(t) for n, t in zip(calibration["budgets"], calibration["tau"])}
    if draft_s:
        draft = {0: 0.0} | {int(n): float(s) for n, s in draft_s.items()}
    else:
        draft = {0: 0.0} | {int(n): float(ms) / 1000 for n, ms in zip(calibration["budgets"], calibration["draft_ms"])}
    return {n: interpolate(tau, n) / (verify_s[n] + interpolate(draft, n)) for n in sorted(verify_s) if 0 <= n <= max(tau)}


def auto_budget(verify_s: dict[int, float], calibration: dict | None, max_budget: int = 128, draft_s: dict[int, float] | None = None) -> int:
    """The budget with the highest expected tokens/s; see the module docstring. (One request:
    the batch rule at batch size 1.)"""
    return batch_budgets(verify_s, calibration, 1, max_budget, draft_s)[1]


def extrapolate(points: dict[int, float], n: int) -> float:
    """Like `interpolate`, but linear beyond the last point (a batch can verify more rows than
    the profile measured)."""
    xs = sorted(points)
    if n <= xs[-1] or len(xs) < 2:
        return interpolate(points, n)
    a, b = xs[-2], xs[-1]
    return points[b] + (points[b] - points[a]) * (n - b) / (b - a)


def batch_budgets(
    verify_s: dict[int, float], calibration: dict | None, max_batch: int, max_budget: int = 128,
    draft_s: dict[int, float] | None = None,
) -> dict[int, int]:  # fmt: skip
    """The node budget per request for each batch size B of the server (B = 1 is `auto_budget`).

    B requests with k nodes each verify B(k + 1) rows in one forward, about T(B(k+1) - 1) of
    the profile, and draft B times: the best k maximises B tau(k) / (T(B(k+1) - 1) + B D(k)).
    As the batch grows the forward's rows get dearer on a CPU, so k shrinks, often to 0 (the
    batch alone keeps the products busy). Without a calibration: the largest k whose forward
    costs at most 1.5 times the batch's plain-decoding forward."""
    table = {}
    for batch in range(1, max_batch + 1):
        rows_cost = {n: extrapolate(verify_s, batch * (n + 1) - 1) for n in sorted(verify_s) if 0 <= n <= max_budget}
        if not calibration:
            plain = rows_cost[min(rows_cost)]
            fitting = [n for n in rows_cost if n >= 1 and rows_cost[n] <= 1.5 * plain]
            table[batch] = max(fitting, default=0)
            continue
        # per-request speed at the batch's cost: tau(k) / (T_batch(k) / B + D(k)), the same ranking
        per_request = {n: t / batch for n, t in rows_cost.items()}
        speed = expected_tokens_per_s(per_request, calibration, draft_s)
        table[batch] = max(speed, key=lambda n: (speed[n], -n))  # ties (equal expected speed) go to the smaller tree
    return table
