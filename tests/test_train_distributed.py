"""`specblock train` on tiny prepared data: a 2-process torchrun step equals the single-process
step, a killed run resumes to the same weights, and trained drafters decode losslessly with
drafts accepted.

The target is tiny_llama's recipe (same seed and shapes) with its vocabulary cut to the
character tokenizer's 74 ids: tiny_llama's other 54 ids have no text, so its greedy answers
would not survive the text round trip of `data prepare`, and a drafter could not learn to
predict the continuations it then meets when decoding.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import CHARS, SPECIALS, build_tiny_model
from safetensors.torch import load_file

from specblock import SpecGenerator
from specblock.errors import SpecBlockError
from specblock.target.config import ModelConfig
from specblock.training import train_state
from specblock.training.conversations import Conversation
from specblock.training.dataset import load_sequences
from specblock.training.draft_vocab import DraftVocab
from specblock.training.prepare import PrepareSettings, prepare
from specblock.training.trainer import (
    Distributed,
    TrainingObjective,
    TrainSettings,
    accumulate_gradients,
    new_model,
    step_micro_batches,
    target_embeddings,
    train,
    wrap_objective,
)

TEXT_IDS = len(SPECIALS) + len(CHARS)  # ids with a character (0-2 special)
EOS = 2
WINDOW = 48
TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls on a busy 2-core machine run ~50x faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("text_llama"), "llama", seed=0, vocab=TEXT_IDS)


def greedy_conversations(gen: SpecGenerator, count: int, seed: int = 0) -> list[Conversation]:
    """Random-letter prompts answered with the target's own greedy continuation (exact ids)."""
    rng = random.Random(seed)
    out: list[Conversation] = []
    while len(out) < count:
        prompt = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(20))
        ids = gen.generate(input_ids=gen.tokenizer.encode(prompt), max_new_tokens=40).token_ids
        ended = ids[-1] == EOS
        ids = ids[:-1] if ended else ids
        cut = next((i for i, t in enumerate(ids) if t < len(SPECIALS)), len(ids))  # <unk> / <|im_start|>
        if cut < 24:
            continue
        ended, ids = ended and cut == len(ids), ids[:cut]
        answer = gen.tokenizer.hf.decode(ids)
        assert gen.tokenizer.hf(answer, add_special_tokens=False).input_ids == ids
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        out.append(Conversation(f"c{len(out)}", "test", messages, {} if ended else {"finish_reason": "length"}))
    return out


@pytest.fixture(scope="module")
def tiny_data(target, tmp_path_factory) -> tuple[Path, list[Conversation]]:
    """12 answered conversations (10 train, 2 held out) prepared with a 48-token window."""
    gen = SpecGenerator.load(str(target), "vanilla", dtype="float32")
    conversations = greedy_conversations(gen, 12)
    out = tmp_path_factory.mktemp("prepared")
    settings = PrepareSettings(target=str(target), window=WINDOW, top_k=20, vocab_size=60, shard_size=4, holdout=2)
    prepare(gen.target, gen.tokenizer, conversations, out, settings, eos_id=EOS)
    return out, conversations


def step_gradients(data: Path, target: Path, methods: list[str], steps: int = 2) -> dict[str, torch.Tensor]:
    """Each method's gradients of steps 0..steps-1 (batch 4, micro-batch 1), built as train() does.

    Runs on one process or, under torchrun, on each rank (DDP). Under DDP each gradient bucket
    must be all-reduced once per step (the micro-batches before the last run in `no_sync`), and
    the second step catches parameters the loss leaves unused (DDP then fails in its forward).
    """
    ddp = Distributed.from_env()
    vocab = DraftVocab.load(data / "draft_vocab.safetensors")
    seqs = load_sequences(data, "train")
    grads = {}
    for method in methods:
        s = TrainSettings(method=method, batch_size=4, micro_batch=1, window=WINDOW)
        s.validate(ddp.world)
        model = new_model(s, ModelConfig.from_dir(target), vocab, target_embeddings(target))
        wrapped = wrap_objective(TrainingObjective(model, s), ddp)
        reduced: list[int] = []  # indices of the gradient buckets DDP all-reduces
        if ddp.world > 1:
            wrapped.register_comm_hook(reduced, count_and_allreduce)
        model.train()
        for step in range(steps):
            reduced.clear()
            accumulate_gradients(wrapped, step_micro_batches(seqs, vocab, s, step), s, step, ddp)
            assert len(reduced) == len(set(reduced)), f"{method}: a bucket was all-reduced more than once in a step"
            for name, p in model.named_parameters():
                assert p.grad is not None, f"{method}: {name} gets no gradient"
                grads[f"{method}/{step}/{name}"] = p.grad.detach().clone()
            model.zero_grad(set_to_none=True)
    return grads


def count_and_allreduce(reduced: list[int], bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    reduced.append(bucket.index())
    return allreduce_hook(None, bucket)


TORCHRUN_SCRIPT = """
import os
import sys
import torch
import torch.distributed as dist
from pathlib import Path
from safetensors.torch import save_file

sys.path.insert(0, {tests!r})
from test_train_distributed import step_gradients

torch.set_num_threads(1)
grads = step_gradients(Path(sys.argv[1]), Path(sys.argv[2]), ["specblock", "eagle3"])
if dist.get_rank() == 0:
    save_file(grads, sys.argv[3])
dist.barrier()
dist.destroy_process_group()
# Skip interpreter teardown: Gloo's worker threads can still hold tensors there and abort the
# process (seen on a loaded 2-core machine, "terminate called without an active exception").
sys.stdout.flush()
os._exit(0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_step_equals_the_single_process_step(tiny_data, target, tmp_path):
    data, _ = tiny_data
    script = tmp_path / "ddp_step.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(TESTS_DIR)))
    result_path = tmp_path / "ddp_grads.safetensors"
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(script), str(data), str(target), str(result_path),
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    two = load_file(str(result_path))
    one = step_gradients(data, target, ["specblock", "eagle3"])
    assert set(two) == set(one)
    for method in ("specblock", "eagle3"):
        keys = [k for k in one if k.startswith(method + "/")]
        assert keys
        for k in keys:
            scale = float(one[k].norm())
            assert float((two[k] - one[k]).norm()) <= 1e-5 * scale + 1e-9, k
        total = torch.cat([one[k].flatten() for k in keys]).norm()
        assert float(total) > 0  # the comparison is not between two zero gradients


def weights_and_moments(out: Path) -> dict[str, torch.Tensor]:
    ckpt = out / "checkpoint"
    return load_file(str(ckpt / "weights.safetensors")) | load_file(str(ckpt / "optimizer.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


class Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tiny_data, target, tmp_path, method):
    data, _ = tiny_data
    s = TrainSettings(
        method=method, max_steps=4, batch_size=4, micro_batch=2, window=WINDOW, warmup_steps=2,
        checkpoint_every=2, log_every=1, eval_every=100, eval_sequences=2, snapshot_every=2,
    )  # fmt: skip
    train(s, data, target, tmp_path / "whole")
    whole = weights_and_moments(tmp_path / "whole")
    snapshots = sorted(p.name for p in (tmp_path / "whole" / "snapshots").iterdir())
    assert snapshots == ["step-000002", "step-000004"]  # the last step's too, beside OUT/drafter

    def kill_during_step_3(stage: str, done: int, total: int) -> None:
        if done == 3:  # step 3 is done but not checkpointed: the last checkpoint is step 2's
            raise Killed

    with pytest.raises(Killed):
        train(s, data, target, tmp_path / "killed", report=kill_during_step_3)
    assert '"step": 2' in (tmp_path / "killed" / "checkpoint" / "state.json").read_text()
    snapshot = load_file(str(tmp_path / "whole" / "snapshots" / "step-000002" / "model.safetensors"))
    at_step_2 = load_file(str(tmp_path / "killed" / "checkpoint" / "weights.safetensors"))
    for name, weight in at_step_2.items():  # the snapshot is the step-2 drafter (in fp16)
        assert torch.equal(snapshot[name], weight.half()), name
    assert not (tmp_path / "killed" / "drafter").exists()
    summary = train(s, data, target, tmp_path / "killed")
    assert summary["resumed_from"] == 2
    assert_same(weights_and_moments(tmp_path / "killed"), whole)
    assert (tmp_path / "killed" / "drafter" / "model.safetensors").is_file()

    # a run stopped at step 3 (schedule of 4 steps, checkpoints every 2) keeps that step's
    # drafter and checkpoint, and goes on to the uninterrupted weights
    stopped = train(replace(s, stop_at=3, snapshot_every=0), data, target, tmp_path / "stopped")
    assert stopped["stopped_at"] == 3 and not (tmp_path / "stopped" / "drafter").exists()
    assert sorted(p.name for p in (tmp_path / "stopped" / "snapshots").iterdir()) == ["step-000003"]
    assert train(s, data, target, tmp_path / "stopped")["resumed_from"] == 3
    assert_same(weights_and_moments(tmp_path / "stopped"), whole)
    with pytest.raises(SpecBlockError, match="past this run's end"):
        train(replace(s, stop_at=2), data, target, tmp_path / "stopped")

    # a finished 2-step run continued to 4 steps (the warm-up's rates do not depend on max_steps)
    train(replace(s, max_steps=2), data, target, tmp_path / "longer")
    assert train(s, data, target, tmp_path / "longer")["resumed_from"] == 2
    assert_same(weights_and_moments(tmp_path / "longer"), whole)


def test_a_kill_between_the_checkpoint_renames_resumes_from_the_previous_one(tiny_data, target, tmp_path, monkeypatch):
    data, _ = tiny_data
    s = TrainSettings(method="eagle3", max_steps=4, batch_size=2, micro_batch=2, window=WINDOW, warmup_steps=2,
                      checkpoint_every=2, eval_every=100, eval_sequences=2)  # fmt: skip
    train(s, data, target, tmp_path / "whole")
    real_replace = os.replace

    def die_before_step_4_takes_its_place(src, dst) -> None:
        # the step-4 save has moved step 2's checkpoint aside and is about to rename its own into place
        if Path(src).name == "checkpoint.tmp" and '"step": 4' in (Path(src) / "state.json").read_text():
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_before_step_4_takes_its_place)
    run = tmp_path / "killed"
    with pytest.raises(Killed):
        train(s, data, target, run)
    monkeypatch.undo()
    assert not (run / "checkpoint").exists()
    assert '"step": 2' in (run / "checkpoint.old" / "state.json").read_text()
    assert train(s, data, target, run)["resumed_from"] == 2
    assert_same(weights_and_moments(run), weights_and_moments(tmp_path / "whole"))
    assert not (run / "checkpoint.old").exists() and not (run / "checkpoint.tmp").exists()


def test_a_run_resumed_from_a_finished_tmp_keeps_it_until_the_next_save_is_whole(tiny_data, target, tmp_path, monkeypatch):
    data, _ = tiny_data
    s = TrainSettings(method="eagle3", max_steps=4, batch_size=2, micro_batch=2, window=WINDOW, warmup_steps=2,
                      checkpoint_every=2, eval_every=100, eval_sequences=2)  # fmt: skip
    train(s, data, target, tmp_path / "whole")
    run = tmp_path / "run"
    train(replace(s, max_steps=2), data, target, run)
    os.replace(run / "checkpoint", run / "checkpoint.tmp")  # what a kill inside an older version's save left

    def die_writing_weights(*args, **kwargs) -> None:
        raise Killed

    monkeypatch.setattr(train_state, "save_file", die_writing_weights)
    with pytest.raises(Killed):  # the step-4 save dies after it cleared its temporary folder
        train(s, data, target, run)
    monkeypatch.undo()
    assert train(s, data, target, run)["resumed_from"] == 2
    assert_same(weights_and_moments(run), weights_and_moments(tmp_path / "whole"))


def test_resuming_with_other_settings_is_refused(tiny_data, target, tmp_path):
    data, _ = tiny_data
    s = TrainSettings(method="eagle3", max_steps=2, batch_size=2, micro_batch=2, window=WINDOW, checkpoint_every=1)
    train(s, data, target, tmp_path / "out")
    with pytest.raises(SpecBlockError, match="window"):
        train(replace(s, max_steps=3, window=32), data, target, tmp_path / "out")
    with pytest.raises(SpecBlockError, match="intermediate_size"):
        train(replace(s, max_steps=3, intermediate_size=24), data, target, tmp_path / "out")
    # checkpoints from before `shift_slot0` existed: a SpecBlock run projected slot 0, so only True
    # resumes it; the setting does not concern EAGLE-3 or a run without the shift
    legacy_runs = {"eagle3": replace(s), "specblock": replace(s, method="specblock"),
                   "noshift": replace(s, method="specblock", layer_shift=False)}  # fmt: skip
    for name, settings in legacy_runs.items():
        run = tmp_path / f"legacy-{name}"
        train(settings, data, target, run)
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        del state["settings"]["shift_slot0"]
        (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    assert train(replace(s, max_steps=3), data, target, tmp_path / "legacy-eagle3")["resumed_from"] == 2
    noshift = replace(legacy_runs["noshift"], max_steps=3)  # without projections slot 0's treatment is moot
    assert train(noshift, data, target, tmp_path / "legacy-noshift")["resumed_from"] == 2
    legacy = replace(s, method="specblock", max_steps=3)
    with pytest.raises(SpecBlockError, match="shift_slot0"):
        train(legacy, data, target, tmp_path / "legacy-specblock")
    assert train(replace(legacy, shift_slot0=True), data, target, tmp_path / "legacy-specblock")["resumed_from"] == 2
    # checkpoints from before `valid_floor` existed trained with the design's plain slot mean (0)
    floor0 = replace(s, method="specblock", valid_floor=0.0)
    train(floor0, data, target, tmp_path / "legacy-floor")
    state = json.loads((tmp_path / "legacy-floor" / "checkpoint" / "state.json").read_text())
    del state["settings"]["valid_floor"]
    (tmp_path / "legacy-floor" / "checkpoint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(SpecBlockError, match="valid_floor"):
        train(replace(floor0, max_steps=3, valid_floor=1.0), data, target, tmp_path / "legacy-floor")
    assert train(replace(floor0, max_steps=3), data, target, tmp_path / "legacy-floor")["resumed_from"] == 2
    # the trainer builds the form it was asked for, and the drafter says which
    assert json.loads((tmp_path / "legacy-specblock" / "drafter" / "config.json").read_text())["shift_slot0"] is True
    train(replace(legacy, max_steps=1), data, target, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "drafter" / "config.json").read_text())["shift_slot0"] is False


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
def test_a_compact_drafter_has_the_asked_mlp_width_and_loads(tiny_data, target, tmp_path, method):
    data, _ = tiny_data
    s = TrainSettings(method=method, max_steps=1, batch_size=2, micro_batch=2, window=WINDOW, intermediate_size=24)
    train(s, data, target, tmp_path / "out")
    generator = SpecGenerator.load(str(target), method, drafter=tmp_path / "out" / "drafter", node_budget=4, dtype="float32")
    assert generator.drafter.model.cfg.intermediate_size == 24 != ModelConfig.from_dir(target).intermediate_size


def trained_drafter_run(method: str, data: Path, target: Path, out: Path) -> dict:
    s = TrainSettings(
        method=method, max_steps=60, batch_size=4, micro_batch=2, window=WINDOW, lr=3e-3, warmup_steps=5,
        log_every=20, eval_every=1000, checkpoint_every=1000, eval_sequences=2,
    )  # fmt: skip
    return train(s, data, target, out)


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
def test_a_trained_drafter_decodes_losslessly_with_drafts_accepted(tiny_data, target, tmp_path, method):
    data, conversations = tiny_data
    trained_drafter_run(method, data, target, tmp_path / "out")
    card = (tmp_path / "out" / "drafter" / "README.md").read_text()  # the model card beside the weights
    assert f"# {method} drafter for" in card and "fingerprint" in card and "chain tau" in card and "MLP width" in card
    vanilla = SpecGenerator.load(str(target), "vanilla", dtype="float32")
    drafted = SpecGenerator.load(str(target), method, drafter=tmp_path / "out" / "drafter", node_budget=8, dtype="float32")
    new_tokens = forwards = 0
    for conv in conversations[:4]:  # training prompts
        ids = vanilla.tokenizer.encode(messages=conv.messages[:1])
        want = vanilla.generate(input_ids=ids, max_new_tokens=32)
        got = drafted.generate(input_ids=ids, max_new_tokens=32)
        assert got.token_ids == want.token_ids
        new_tokens += got.new_tokens
        forwards += got.iterations
    tau = new_tokens / forwards
    print(f"{method}: tau {tau:.3f} over 4 training prompts")
    assert tau > 1.1
