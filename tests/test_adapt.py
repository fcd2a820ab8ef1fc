"""Online adaptation in the engine: the buffer holds what `data prepare` would compute, the
output stays exactly vanilla's while the drafter updates mid-request, and the updates do
teach the drafter (tau rises on text it keeps seeing)."""

import json

import pytest
import torch

from specblock.adapt.bandit import SKIP, seconds_saved
from specblock.adapt.buffer import FeedbackBuffer
from specblock.adapt.drafter import AdaptiveDrafter, AdaptSettings
from specblock.adapt.updates import UpdateSettings, arm_names, arm_parameters
from specblock.drafters.checkpoint import load_drafter, save_drafter
from specblock.drafters.eagle3 import Eagle3Drafter
from specblock.drafters.specblock import SpecBlockDrafter
from specblock.drafters.vanilla import VanillaDrafter
from specblock.errors import InvalidSettingError
from specblock.target.transformer import Transformer

from helpers import run_decode
from neural_helpers import random_eagle3, random_specblock
from test_decoding import prompts


def adaptive(model: Transformer, method: str, policy: str = "always", window: int = 16, lr: float = 3e-3, **kw) -> AdaptiveDrafter:
    net = random_specblock(model) if method == "specblock" else random_eagle3(model)
    inner = SpecBlockDrafter(net) if method == "specblock" else Eagle3Drafter(net)
    update = UpdateSettings(steps=kw.pop("steps", 2), batch=2, window=32, lr=lr)
    settings = AdaptSettings(policy=policy, window_tokens=window, update=update, min_heldout=1, **kw)
    return AdaptiveDrafter(inner, node_budget=8, settings=settings)


def test_buffer_matches_a_full_target_forward(tiny_llama):
    """Position j holds the target's features after token j and its distribution over token j+1."""
    model = Transformer.load(tiny_llama)
    drafter = adaptive(model, "specblock", policy="never")
    prompt = prompts(1, seed=3)[0]
    out, _ = run_decode(model, drafter, prompt, max_new_tokens=30, node_budget=8)
    seg = drafter.buffer.current
    n = len(seg)
    assert seg.tokens == (prompt + out)[:n] and n > len(prompt) + 10
    full = model.forward(torch.tensor(seg.tokens), torch.arange(n), model.new_cache(n), 0, capture=True)
    logprobs = torch.log_softmax(model.logits(full.hidden), -1)
    torch.testing.assert_close(torch.stack(seg.features).float(), full.features, atol=2e-2, rtol=1e-2)
    known = [j for j in range(n) if seg.known[j]]
    assert known == list(range(len(prompt), n))  # the prefill keeps no per-position distributions
    for j in known:
        assert int(seg.topk_ids[j][0]) == int(logprobs[j].argmax())
    seq = seg.to_sequence()
    # loss targets: generated tokens whose distribution is stored (the first generated one is not)
    assert seq.answer_mask.tolist() == [j > len(prompt) for j in range(n)]


def test_buffer_split_and_capacity():
    buf = FeedbackBuffer(capacity=64)
    from specblock.drafters.base import PrefillFeedback, VerifyFeedback

    def feed(prompt_len: int, verifies: int, per: int) -> None:
        buf.start_request(PrefillFeedback(list(range(prompt_len)), torch.zeros(prompt_len, 6), 1, 100))
        for _ in range(verifies):
            buf.add_verification(VerifyFeedback([1] * per, 0, torch.zeros(per, 6), torch.randn(per, 30), 1, [], None))

    feed(4, 3, 4)  # 16 positions; loss positions: 12 generated minus the first = 11
    assert buf.current.answer_positions() == 11 and buf.total_answer == 11
    train, heldout = buf.split(recent=5)
    assert int(heldout[0].answer_mask.sum()) == 5 and int(train[0].answer_mask.sum()) == 6
    assert not (heldout[0].answer_mask & train[0].answer_mask).any()
    _, short = buf.split(recent=5, context=2)  # the held-out window keeps 2 positions before it
    assert len(short[0].tokens) == 5 + 2 and short[0].answer_mask.tolist() == [False] * 2 + [True] * 5
    feed(4, 10, 5)  # 54 more positions: over capacity, the oldest request goes
    assert len(buf.segments) == 1 and len(buf) == 54
    feed(60, 1, 4)  # one request longer than the buffer keeps its newest positions
    assert len(buf) == 64 and len(buf.segments) == 1


@pytest.mark.parametrize("method", ["specblock", "eagle3"])
def test_greedy_output_equals_vanilla_while_the_drafter_updates(tiny_llama, method):
    model = Transformer.load(tiny_llama)
    drafter = adaptive(model, method, policy="always", window=12)
    for prompt in prompts(3, seed=21):
        want, _ = run_decode(model, VanillaDrafter(), prompt, max_new_tokens=48)
        got, _ = run_decode(model, drafter, prompt, max_new_tokens=48, node_budget=8)
        assert got == want
    updated = [e for e in drafter.events if e["arm"] == "whole"]
    assert len(updated) >= 4 and drafter.update_s > 0  # it did update, mid-request included


def test_updates_teach_the_drafter_the_text_it_keeps_seeing(tiny_llama):
    """The same request again and again: the adapted drafter's tau climbs; a frozen one's stays."""
    model = Transformer.load(tiny_llama)
    prompt = prompts(1, seed=5)[0]
    frozen = adaptive(model, "specblock", policy="never", window=16)
    learning = adaptive(model, "specblock", policy="always", window=16, steps=4, rollback=False)
    taus = {"never": [], "always": []}
    for _ in range(6):
        for name, d in (("never", frozen), ("always", learning)):
            _, stats = run_decode(model, d, prompt, max_new_tokens=48, node_budget=8)
            taus[name].append(stats.new_tokens / stats.target_forwards)
    assert taus["never"][0] == taus["never"][-1]
    assert taus["always"][-1] > taus["always"][0] + 0.5, taus
    measured = [e for e in learning.events if "reach_before" in e]  # the first window has nothing older to learn from
    assert measured[-1]["reach_after"] > measured[0]["reach_before"]


def test_an_update_right_after_a_verdict_reuses_its_reach(tiny_llama):
    """The next-window check has just measured the reach of the weights in place on the
    newest window: the following update's first check takes it instead of measuring again."""
    model = Transformer.load(tiny_llama)
    drafter = adaptive(model, "specblock", policy="always", window=16, heldout_context=5)
    calls, contexts = [], []
    reach, split = drafter.updater.reach, drafter.buffer.split
    drafter.updater.reach = lambda heldout: (calls.append(1), reach(heldout))[1]
    drafter.buffer.split = lambda recent, context: (contexts.append(context), split(recent, context))[1]
    run_decode(model, drafter, prompts(1, seed=6)[0], max_new_tokens=96, node_budget=8)
    events, expected, reused = drafter.events, 0, 0
    for i, e in enumerate(events):
        if "next_heldout" in e:  # judged at the end of window i + 1
            expected += 2 if "next_reach_old" in e else 1
        if "reach_before" in e:
            after_verdict = i > 0 and "next_heldout" in events[i - 1]
            expected += 1 if after_verdict else 2
            if after_verdict:
                prev = events[i - 1]
                left = prev["next_reach_old"] if prev.get("rolled_back_next") else prev["next_reach_new"]
                assert e["reach_before"] == left
                reused += 1
    assert reused >= 2 and len(calls) == expected
    assert contexts and set(contexts) == {5}  # both checks measure the same positions with the set context


def test_arms_touch_only_their_parameters(tiny_llama):
    model = Transformer.load(tiny_llama)
    drafter = adaptive(model, "specblock", policy="never")
    net = drafter.model
    assert arm_names(net) == ["rank_head", "head_last_layer", "whole"]
    head = {id(p) for p in arm_parameters(net, "rank_head")}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    prompt = prompts(1, seed=8)[0]
    run_decode(model, drafter, prompt, max_new_tokens=40, node_budget=8)
    train, _ = drafter.buffer.split(recent=8)
    drafter.updater.update("rank_head", train)
    for name, p in net.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (id(p) in head), name


def test_undoing_an_update_restores_its_adam_moments(tiny_llama):
    model = Transformer.load(tiny_llama)
    drafter = adaptive(model, "specblock", policy="never")
    run_decode(model, drafter, prompts(1, seed=9)[0], max_new_tokens=40, node_budget=8)
    train, _ = drafter.buffer.split(recent=8)
    updater, head = drafter.updater, arm_parameters(drafter.model, "rank_head")
    updater.update("rank_head", train)
    saved = updater.optimizer_state("rank_head")
    updater.update("rank_head", train)
    assert not torch.equal(updater.optimizer.state[head[0]]["exp_avg"], saved[0]["exp_avg"])
    updater.load_optimizer_state("rank_head", saved)
    for p, state in zip(head, saved):
        for key, value in state.items():
            assert torch.equal(updater.optimizer.state[p][key], value), key


def test_bandit_policy_skips_without_headroom_and_save_never_overwrites(tiny_llama, tmp_path):
    model = Transformer.load(tiny_llama)
    net = random_specblock(model)
    source = tmp_path / "source"
    save_drafter(net, source)
    inner = SpecBlockDrafter(net)
    inner.calibration = {"budgets": [4, 8, 16], "tau": [1.0, 1.0, 1.0], "draft_ms": [1, 1, 1]}
    drafter = AdaptiveDrafter(inner, 8, AdaptSettings(policy="bandit", window_tokens=16), source=source)
    for prompt in prompts(2, seed=9):
        run_decode(model, drafter, prompt, max_new_tokens=40, node_budget=8)
    # tau can only be >= 1 = the reference: no headroom, nothing is worth an update
    assert drafter.events and all(e["arm"] == SKIP for e in drafter.events)
    with pytest.raises(InvalidSettingError, match="overwrite the original"):
        drafter.save(source)
    out = drafter.save(tmp_path / "adapted")
    meta = json.loads((out / "config.json").read_text())
    assert meta["adapted_from"] == str(source.resolve()) and meta["adaptation"]["policy"] == "bandit"
    load_drafter(out, model.cfg, model.embed.float(), method="specblock")
    with pytest.raises(InvalidSettingError, match="not empty"):
        drafter.save(out)


def test_adaptation_refuses_model_free_drafters():
    with pytest.raises(InvalidSettingError, match="trained drafters"):
        AdaptiveDrafter(VanillaDrafter(), 8)
    with pytest.raises(InvalidSettingError, match="policy"):
        AdaptSettings(policy="sometimes").validate()
    with pytest.raises(InvalidSettingError, match="heldout_context"):
        AdaptSettings(heldout_context=1).validate()


class ScriptedReach:
    """Stands in for `OnlineUpdater.reach`: the drafter's reach depends only on whether its
    weights are the original ones, so the test decides what each check measures. It notes
    the feedback clock (loss positions ever buffered) at each call."""

    def __init__(self, drafter: AdaptiveDrafter, original: float, updated_now: float, updated_next: float) -> None:
        self.drafter = drafter
        self.original = [p.detach().clone() for p in drafter.model.parameters()]
        self.values = {"original": original, "updated_now": updated_now, "updated_next": updated_next}
        self.clock: list[int] = []

    def __call__(self, heldout) -> torch.Tensor:
        self.clock.append(self.drafter.buffer.total_answer)
        same = all(torch.equal(p, q) for p, q in zip(self.drafter.model.parameters(), self.original))
        if same:
            return torch.full((40,), self.values["original"])
        # call 2 is the in-window check right after the update; later ones judge the next window
        return torch.full((40,), self.values["updated_now" if len(self.clock) == 2 else "updated_next"])


@pytest.mark.parametrize("next_value, kept", [(0.0, False), (0.75, True)])
def test_an_update_is_judged_on_the_next_window_and_undone_if_it_loses_there(tiny_llama, next_value, kept):
    """The in-window check says the update helps (0.5 -> 1.0 reach); the next window, which
    it never saw, decides: the bandit is told that verdict, and a loss restores the weights
    (and rebuilds the drafter's cache for them)."""
    model = Transformer.load(tiny_llama)
    drafter = adaptive(model, "specblock", policy="bandit", window=16)
    drafter.bandit.reference_tau = 10.0  # plenty of headroom: the first arm is tried
    script = ScriptedReach(drafter, original=0.5, updated_now=1.0, updated_next=next_value)
    drafter.updater.reach = script
    drafter.reach_to_tau.add(tau=1.5, mean_reach=1.0)  # an earlier window: live tau is half the reach
    begins = []
    inner_begin = drafter.inner.begin
    drafter.inner.begin = lambda prefill: (begins.append(1), inner_begin(prefill))[1]
    original = [p.detach().clone() for p in drafter.model.parameters()]
    prompt = prompts(1, seed=4)[0]
    want, _ = run_decode(model, VanillaDrafter(), prompt, max_new_tokens=80)
    # the bandit would keep trying arms; stop it after the first update is settled
    decisions = []
    choose = drafter.bandit.choose
    drafter.bandit.choose = lambda w: (decisions.append(w), choose(w) if len(decisions) == 2 else SKIP)[1]
    got, _ = run_decode(model, drafter, prompt, max_new_tokens=80, node_budget=8)
    assert got == want
    update = next(e for e in drafter.events if e["arm"] != SKIP)
    assert update["arm"] == "rank_head" and update["reach_after"] == 1.0
    # before / after the update, then new / old weights a whole window later
    assert len(script.clock) == 4 and script.clock[0] == script.clock[1] and script.clock[2] >= script.clock[1] + 8
    assert script.clock[2] == script.clock[3]
    stats = drafter.bandit.stats["rank_head"]
    assert stats.pulls == 1  # recorded once, when settled
    unchanged = all(torch.equal(p, q) for p, q in zip(drafter.model.parameters(), original))
    # AdamW's moments go with the weights: an undone first update leaves none behind
    moments = [p in drafter.updater.optimizer.state for p in arm_parameters(drafter.model, "rank_head")]
    assert all(moments) if kept else not any(moments)
    if kept:
        assert update["next_change_low"] == 0.25 and not unchanged and not update.get("rolled_back_next")
        chosen_on, judged_on = decisions[1], decisions[2]  # the update's window and the next one
        # reach measured with the weights that generated the window: 0.5 (old) then 0.75 (new)
        lives = 0.5 + max(0.0, chosen_on.tau - 1) + max(0.0, judged_on.tau - 1)
        factor = min(1.0, lives / (1.0 + 0.5 + 0.75))
        assert update["live_per_reach"] == pytest.approx(factor, abs=1e-4)
        # the next window's tau and cost convert the scaled reach change to seconds
        want_gain = seconds_saved(judged_on.tau, factor * 0.25, judged_on.iteration_s, drafter.bandit.horizon_tokens)
        assert stats.mean_gain == pytest.approx(want_gain) and stats.mean_gain > 0
        assert len(begins) == 2  # the request, the rebuild after the update
    else:
        assert stats.mean_gain == 0 and unchanged and update["rolled_back_next"]
        assert len(begins) == 3  # ... and the rebuild for the restored weights
    assert drafter.summary()["unjudged_update"] is None


@pytest.mark.parametrize("shift", [False, True])
def test_a_detected_shift_forgets_the_live_tau_per_reach(tiny_llama, shift):
    """The share of reach that turns into live tau belongs to the text: a shift starts it afresh."""
    model = Transformer.load(tiny_llama)
    drafter = adaptive(model, "specblock", policy="never", window=16)
    drafter.reach_to_tau.add(tau=1.2, mean_reach=1.0)
    drafter.bandit.observe_window = lambda window: shift
    run_decode(model, drafter, prompts(1, seed=5)[0], max_new_tokens=40, node_budget=8)
    assert len(drafter.events) >= 1 and all(e["shift"] == shift for e in drafter.events)
    assert drafter.reach_to_tau.pairs == (0 if shift else 1)
    assert drafter.reach_to_tau.factor == pytest.approx(1.0 if shift else 0.2)
