"""`specblock train`: one loop for both drafters, on one process or under torchrun (DDP).

A step draws `batch_size` sequences (and a crop of at most `window` positions of each, ending
inside the answer) from a generator seeded by (seed, step), so every run, resumed or
distributed, sees the same data in the same order. The batch is cut into micro-batches of
`micro_batch` sequences; the step's loss is their mean. Under torchrun each rank takes its
share of the micro-batches and DDP averages the gradients, so a 2-process step equals the
single-process step with the same micro-batches (tested).

Checkpoints (`OUT/checkpoint/`, train_state.py) are written every `checkpoint_every` steps; a
killed run resumes from the last. The settings and the schedule live in settings.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from specblock.drafters.checkpoint import save_drafter
from specblock.drafters.model_card import write_model_card
from specblock.drafters.eagle3_model import Eagle3Config, Eagle3Model
from specblock.drafters.specblock_model import SpecBlockConfig, SpecBlockModel
from specblock.errors import SpecBlockError
from specblock.target.config import ModelConfig
from specblock.training.dataset import Batch, Sequence, collate, load_manifest, load_sequences
from specblock.training.draft_vocab import DraftVocab
from specblock.training.eagle3_loss import eagle3_loss
from specblock.training.settings import TrainSettings, lr_at
from specblock.training.specblock_loss import LossReport, specblock_loss
from specblock.training.train_state import drop_log_after, load_training_state, save_training_state


def crop(seq: Sequence, window: int, gen: torch.Generator) -> Sequence:
    """At most `window` positions ending at a random point after the first answer token."""
    n = seq.tokens.numel()
    if n <= window:
        return seq
    answer = torch.nonzero(seq.answer_mask).flatten()
    first = int(answer[0]) if answer.numel() else n - 1
    low = min(n, max(window, first + 2))
    end = int(torch.randint(low, n + 1, (1,), generator=gen)) if low < n else n
    a = end - window
    return Sequence(seq.tokens[a:end], seq.answer_mask[a:end], seq.features[a:end], seq.topk_ids[a:end], seq.topk_logprobs[a:end])


def step_micro_batches(seqs: list[Sequence], vocab: DraftVocab, s: TrainSettings, step: int) -> list[Batch]:
    gen = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
    picks = torch.randint(0, len(seqs), (s.batch_size,), generator=gen).tolist()
    cropped = [crop(seqs[i], s.window, gen) for i in picks]
    return [collate(cropped[i : i + s.micro_batch], vocab) for i in range(0, s.batch_size, s.micro_batch)]


class TrainingObjective(torch.nn.Module):
    """The drafter plus its loss in `forward`, so DistributedDataParallel can wrap it."""

    def __init__(self, drafter, settings: TrainSettings) -> None:
        super().__init__()
        self.drafter = drafter
        self.settings = settings

    def forward(self, batch: Batch, step: int, index: int) -> LossReport:
        s = self.settings
        if s.method == "eagle3":
            return eagle3_loss(self.drafter, batch)
        # the block offsets depend on (step, micro-batch) only, so every layout draws the same
        gen = torch.Generator().manual_seed(s.seed * 7919 + step * 1009 + index)
        return specblock_loss(
            self.drafter, batch, gen, blocks=s.blocks, use_valid_prefix=s.valid_prefix, valid_floor=s.valid_floor
        )


def target_embeddings(model_dir: Path) -> torch.Tensor:
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return f.get_tensor("model.embed_tokens.weight").float()


def new_model(s: TrainSettings, target_cfg: ModelConfig, vocab: DraftVocab, embed: torch.Tensor):
    torch.manual_seed(s.seed)
    width = {"intermediate_size": s.intermediate_size} if s.intermediate_size else {}
    if s.method == "specblock":
        shift = {"layer_shift": s.layer_shift, "shift_slot0": s.shift_slot0}
        model = SpecBlockModel(SpecBlockConfig.for_target(target_cfg, vocab.size, **shift, **width))
    else:
        model = Eagle3Model(Eagle3Config.for_target(target_cfg, vocab.size, **width))
    model.embed_tokens = embed
    model.d2t = vocab.d2t.clone()
    model.t2d = vocab.t2d.clone()
    return model


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: str = "cpu") -> Distributed:
        """Under torchrun: gloo on the CPU, nccl on CUDA with one GPU per process (LOCAL_RANK)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = device.startswith("cuda")
        if cuda and world > 1:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world)


def wrap_objective(objective: TrainingObjective, ddp: Distributed) -> torch.nn.Module:
    """The objective itself on one process, wrapped in DistributedDataParallel under torchrun."""
    if ddp.world == 1:
        return objective
    # the frozen embeddings are a buffer: never broadcast them on every forward
    return torch.nn.parallel.DistributedDataParallel(objective, broadcast_buffers=False)


def accumulate_gradients(
    wrapped: torch.nn.Module, micro_batches: list[Batch], settings: TrainSettings, step: int, ddp: Distributed
) -> list[LossReport]:
    """Forward and backward this rank's share of the step's micro-batches; the gradients stay
    on the parameters (the caller clips, steps and zeroes them).

    Each micro-batch loss is divided by the micro-batches per rank and DDP averages over the
    ranks, so the gradient is the mean over all of the step's micro-batches whatever the
    number of processes. Under DDP all but the last micro-batch run inside `no_sync` (the
    forward too: DDP decides in the forward whether the next backward all-reduces), so the
    gradients are all-reduced once per step.
    """
    per_rank = len(micro_batches) // ddp.world
    mine = range(ddp.rank * per_rank, (ddp.rank + 1) * per_rank)
    reports = []
    for n, index in enumerate(mine):
        local = ddp.world > 1 and n < per_rank - 1
        with wrapped.no_sync() if local else contextlib.nullcontext():
            with settings.autocast():
                rep = wrapped(micro_batches[index].to(settings.device), step, index)
            (rep.loss / per_rank).backward()
        reports.append(rep)
    return reports


@torch.no_grad()
def evaluate(model, seqs: list[Sequence], vocab: DraftVocab, s: TrainSettings) -> dict:
    """Held-out per-depth greedy accuracy (teacher-forced) and the 4-deep chain tau estimate.

    chain_tau4 = 1 + sum over d = 1..4 of P(depths 1..d all right): the tau a greedy chain
    of 4 drafted tokens would reach, comparable between SpecBlock (block 1) and EAGLE-3 (TTT
    steps 0..3) because both are fed the true tokens.
    """
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    rights, total = [], 0
    for i in range(0, min(len(seqs), s.eval_sequences), s.micro_batch):
        batch = collate([crop(seqs[j], s.window, gen) for j in range(i, min(i + s.micro_batch, len(seqs)))], vocab)
        with s.autocast():
            if s.method == "eagle3":
                rep = eagle3_loss(model, batch.to(s.device), steps=4)
            else:
                rep = specblock_loss(model, batch.to(s.device), torch.Generator().manual_seed(0), blocks=1)
        rights.append(rep.slot_correct[0])
        total += rep.slot_total[0][0]
    model.train()
    if not rights:
        return {}
    acc = [sum(r[d] for r in rights) / max(1.0, total) for d in range(4)]
    chain, tau = 1.0, 1.0
    for a in acc:  # approximation: per-depth accuracies treated as conditional on the prefix
        chain *= a
        tau += chain
    return {"heldout_accuracy": [round(a, 4) for a in acc], "chain_tau4": round(tau, 4)}


def train(
    settings: TrainSettings,
    data_dir: Path,
    target_dir: Path,
    out: Path,
    report: Callable[[str, int, int], None] | None = None,
    log: Callable[[dict], None] | None = None,
) -> dict:
    settings.validate(int(os.environ.get("WORLD_SIZE", "1")))
    ddp = Distributed.from_env(settings.device)
    if ddp.world > 1 and settings.device.startswith("cuda"):  # each process its own GPU, whatever --device named
        settings = dataclasses.replace(settings, device=f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    manifest = load_manifest(data_dir)
    target_cfg = ModelConfig.from_dir(target_dir)
    if manifest["hidden_size"] != target_cfg.hidden_size or manifest["target_vocab_size"] != target_cfg.vocab_size:
        raise SpecBlockError(f"{data_dir} was prepared with another target (hidden size / vocabulary differ from {target_dir})")
    vocab = DraftVocab.load(Path(data_dir) / "draft_vocab.safetensors")
    train_seqs = load_sequences(data_dir, "train")
    heldout = load_sequences(data_dir, "heldout")
    model = new_model(settings, target_cfg, vocab, target_embeddings(target_dir)).to(settings.device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = load_training_state(out, model, opt, settings)
    objective = TrainingObjective(model, settings)
    wrapped = wrap_objective(objective, ddp)
    model.train()
    log_path = out / "train_log.jsonl"
    if ddp.rank == 0:
        drop_log_after(log_path, start)  # a killed run may have logged steps past its last checkpoint
    end = settings.stop_at or settings.max_steps
    if start > end:
        raise SpecBlockError(f"{out}'s checkpoint is at step {start}, past this run's end (step {end}); "
                             "use a later --stop-at / --max-steps or a new --out")  # fmt: skip
    t0 = time.time()
    for step in range(start, end):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, settings)
        micro = step_micro_batches(train_seqs, vocab, settings, step)
        reports = accumulate_gradients(wrapped, micro, settings, step, ddp)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if ddp.rank == 0:
            if report:
                report("train", done, end)
            if done % settings.log_every == 0 or done == end:
                entry = _log_entry(done, reports, float(grad_norm), lr_at(step, settings), time.time() - t0, settings)
                if done % settings.eval_every == 0 or done == end:
                    entry |= evaluate(model, heldout, vocab, settings)
                with open(log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
                if log:
                    log(entry)
            # every snapshot step is kept, the last one too: a finished run continued later keeps its end point
            if settings.snapshot_every and done % settings.snapshot_every == 0 or done == settings.stop_at:
                snapshot_meta = _drafter_meta(settings, data_dir, manifest) | {"snapshot_step": done}
                save_drafter(model, out / "snapshots" / f"step-{done:06d}", meta=snapshot_meta)
            if done % settings.checkpoint_every == 0 or done == end:
                save_training_state(out, model, opt, done, settings)
    summary = {"steps": settings.max_steps, "resumed_from": start, "wall_s_this_run": round(time.time() - t0, 1)}
    if end < settings.max_steps:  # stopped early: the drafter of that step is its snapshot, the run can go on
        if ddp.world > 1:
            dist.barrier()
        return summary | {"stopped_at": end}
    if ddp.rank == 0:
        meta = _drafter_meta(settings, data_dir, manifest)
        save_drafter(model, out / "drafter", meta=meta)
        summary |= evaluate(model, heldout, vocab, settings)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        target_name = manifest.get("settings", {}).get("target", str(target_dir))
        write_model_card(out / "drafter", target_name, manifest, summary, meta["training"])
    if ddp.world > 1:
        dist.barrier()
    return summary


def _drafter_meta(settings: TrainSettings, data_dir: Path, manifest: dict) -> dict:
    """What a saved drafter records about its training (and drafting-time switches)."""
    autocast = "bf16 autocast" if settings.autocast_dtype() else "float32"
    coverage = manifest.get("draft_vocab_coverage")
    meta = {"training": asdict(settings) | {"data": str(data_dir), "draft_vocab_coverage": coverage, "autocast": autocast}}
    if settings.method == "specblock" and settings.blocks == 1:
        meta["drafting"] = {"blocks": 1}  # the no-inheritance ablation drafts as it trained (M = 1)
    return meta


def _log_entry(step: int, reports: list[LossReport], grad_norm: float, lr: float, elapsed: float, s: TrainSettings) -> dict:
    n = len(reports)
    blocks = len(reports[0].slot_correct)
    acc = []
    for b in range(blocks):
        right = [sum(r.slot_correct[b][k] for r in reports) for k in range(len(reports[0].slot_correct[b]))]
        tot = [sum(r.slot_total[b][k] for r in reports) for k in range(len(reports[0].slot_total[b]))]
        acc.append([round(x / max(1.0, t), 4) for x, t in zip(right, tot)])
    return {
        "step": step,
        "loss": round(sum(float(r.loss.detach()) for r in reports) / n, 4),
        "draft_loss": round(sum(r.draft_loss for r in reports) / n, 4),
        "rank_loss": round(sum(r.rank_loss for r in reports) / n, 4),
        "slot_accuracy": acc,
        "grad_norm": round(grad_norm, 4),
        "lr": lr,
        "elapsed_s": round(elapsed, 1),
        "positions_per_step": s.batch_size * s.window,
    }
