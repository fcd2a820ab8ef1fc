"""A drafter wrapper that adapts the wrapped SpecBlock / EAGLE-3 drafter while it serves.

It forwards `begin` / `propose` / `observe` to the wrapped drafter and, on the side, files
every verification into the feedback buffer. After each window of `window_tokens` generated
tokens the bandit decides whether to update the drafter and which part; the update runs
right there, between two iterations, so its wall time lands in the request's tokens/s.
Verification never depends on the drafter's weights, so the output stays exactly the
target's (greedy: token for token, the tests check it).

An update is judged twice, offline (no target forward). Right away, on the newest window
(held out of its training data): an update that lowered the reach there is undone. Then at
the end of the next window, text it could not have been fitted to (the window it was
chosen on was also the one that made it look good): the reach with the new and with the
old weights on that window's positions. That second, independent measurement is the gain
the bandit is told, and an update that loses there is undone too. On a shifted stream the
first check alone overstated the gain (the translation stream of issue 5: held-out reach
doubled while the live tau stayed flat), and the bandit kept paying for updates. Reach is
also optimistic about the live tree, so its change is scaled to a live tau change by the
ratio of live tau to reach measured on the stream's own windows (`ReachToTau`).

After an update in the middle of a request, the wrapped drafter's cache (K/V of every
position, computed with the old weights) is rebuilt from the buffered features with one
forward, as if the committed text were a new prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specblock.adapt.bandit import SKIP, CostAwareBandit, ReachToTau, WindowStats, seconds_saved
from specblock.adapt.buffer import FeedbackBuffer
from specblock.adapt.updates import OnlineUpdater, UpdateSettings, arm_names, reach_change_bound
from specblock.budget import interpolate
from specblock.drafters.base import Drafter, PrefillFeedback, VerifyFeedback
from specblock.drafters.checkpoint import save_drafter
from specblock.errors import InvalidSettingError
from specblock.tree import DraftTree

POLICIES = ("bandit", "always", "never")


@dataclass
class PendingUpdate:
    """A kept update waiting for the next window's verdict."""

    arm: str
    old: list[torch.Tensor]  # the arm's parameters before the update
    old_optimizer: list[dict | None]  # and their AdamW moments
    event: dict  # the window event of the update, completed when it is settled
    cost_s: float  # the update's own wall time so far


@dataclass
class AdaptSettings:
    policy: str = "bandit"  # "always" pulls the whole-drafter arm every window; "never" only collects
    window_tokens: int = 256
    horizon_windows: float = 4.0  # an update's gain is amortised over this many coming windows
    buffer_positions: int = 16384
    noise_margin: float = 0.15
    shift_drop: float = 0.25
    exploration: float = 1.0
    rollback: bool = True  # undo an update that lowered the reach on held-out or next-window text
    min_heldout: int = 32  # fewer draftable held-out positions give too noisy a gain: no update
    gain_confidence: float = 1.0  # the gain counted is the mean reach change minus this many standard errors
    heldout_context: int = 32  # positions before the held-out window when its reach is measured (>= 2)
    update: UpdateSettings = field(default_factory=UpdateSettings)

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidSettingError(f"adaptation policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if self.window_tokens < 8 or self.horizon_windows <= 0:
            raise InvalidSettingError("adaptation window must be at least 8 tokens and the horizon positive")
        if self.min_heldout < 1 or self.gain_confidence < 0:
            raise InvalidSettingError("min_heldout must be >= 1 and gain_confidence >= 0")
        if self.heldout_context < 2:  # a slot-0 prediction of token j comes from position j - 2
            raise InvalidSettingError("heldout_context must be >= 2, or the window's first positions go unmeasured")


class AdaptiveDrafter(Drafter):
    needs_features = True

    def __init__(self, inner: Drafter, node_budget: int, settings: AdaptSettings | None = None, source: str | Path | None = None) -> None:
        if not hasattr(inner, "model") or not inner.needs_features:
            raise InvalidSettingError("online adaptation applies to the trained drafters (specblock, eagle3)")
        self.s = settings or AdaptSettings()
        self.s.validate()
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.calibration = getattr(inner, "calibration", None)
        self.source = None if source is None else Path(source).resolve()
        self.buffer = FeedbackBuffer(self.s.buffer_positions)
        self.updater = OnlineUpdater(self.model, self.s.update, node_budget)
        self.bandit = CostAwareBandit(
            arm_names(self.model), reference_tau=reference_tau(self.calibration, node_budget),
            horizon_tokens=self.s.horizon_windows * self.s.window_tokens, noise_margin=self.s.noise_margin,
            shift_drop=self.s.shift_drop, exploration=self.s.exploration,
        )  # fmt: skip
        self.reach_to_tau = ReachToTau()  # live tau per unit of reach, measured on this stream
        self.events: list[dict] = []  # one per window: what the bandit saw, chose and measured
        self.update_s = 0.0  # updates, their evaluation and cache rebuilds
        self.bookkeeping_s = 0.0  # buffering and bandit decisions
        self._reset_window()
        self._pending: PendingUpdate | None = None
        self._max_length = 0
        self._features_like: torch.Tensor | None = None
        self._last = time.perf_counter()

    @property
    def forwards(self) -> int:
        return self.inner.forwards

    @forwards.setter
    def forwards(self, value: int) -> None:  # the base class initialises it; the wrapped drafter counts
        pass

    def _reset_window(self) -> None:
        self._tokens = self._iterations = 0
        self._seconds = 0.0

    # -- the drafter interface -------------------------------------------------------
    def fork(self) -> Drafter:
        raise InvalidSettingError(
            "an adapting drafter learns from one request stream at a time; serve concurrent requests without --adapt"
        )

    def begin(self, prefill: PrefillFeedback) -> None:
        t0 = time.perf_counter()
        self.buffer.start_request(prefill)
        self._max_length = prefill.max_length
        self._features_like = prefill.features  # the target's dtype and device, for rebuilds
        self.bookkeeping_s += time.perf_counter() - t0
        self.inner.begin(prefill)
        self._last = time.perf_counter()

    def propose(self, sequence: list[int], budget: int) -> DraftTree:
        return self.inner.propose(sequence, budget)

    def observe(self, feedback: VerifyFeedback) -> None:
        self.inner.observe(feedback)
        t0 = time.perf_counter()
        updates_before = self.update_s
        self._seconds += t0 - self._last
        self._tokens += len(feedback.tokens)  # accepted drafts + the target's own next token
        self._iterations += 1
        self.buffer.add_verification(feedback)
        if self._tokens >= self.s.window_tokens:
            self._end_window(feedback.next_token)
        # update time is counted in update_s only
        self.bookkeeping_s += time.perf_counter() - t0 - (self.update_s - updates_before)
        self._last = time.perf_counter()

    # -- adaptation ------------------------------------------------------------------
    def _end_window(self, root: int) -> None:
        window = WindowStats(self._tokens, self._iterations, self._seconds)
        self._reset_window()
        shifted = self.bandit.observe_window(window)
        if shifted:  # the share of reach that turns into live tau is a property of the text too
            self.reach_to_tau = ReachToTau()
        # after a reset too: the verdict is measured on the new text
        measured = None if self._pending is None else self._settle(window, root)
        arm = {"bandit": None, "always": "whole", "never": SKIP}[self.s.policy] or self.bandit.choose(window)
        event = {"window": len(self.events), "tau": round(window.tau, 3), "tokens_per_s": round(window.tokens / max(window.seconds, 1e-9), 2),
                 "shift": shifted, "arm": arm}  # fmt: skip
        self.events.append(event)
        if arm == SKIP:
            return
        train, heldout = self.buffer.split(recent=self.s.window_tokens, context=self.s.heldout_context)
        if not train or not heldout:
            event["arm"] = SKIP
            event["why"] = "no older feedback to train on yet"
            return
        t0 = time.perf_counter()
        before = measured if measured is not None else self.updater.reach(heldout)
        count = before.numel()
        if count < self.s.min_heldout:
            self.update_s += time.perf_counter() - t0
            event["arm"] = SKIP
            event["why"] = f"{count} draftable held-out positions (< {self.s.min_heldout})"
            return
        if measured is None:  # these weights generated this window (after a verdict: counted there, or swapped back)
            self.reach_to_tau.add(window.tau, float(before.mean()))
        old = self.updater.arm_weights(arm)
        old_optimizer = self.updater.optimizer_state(arm)
        self.updater.update(arm, train)
        # paired: the same positions before and after
        delta, delta_low = reach_change_bound(before, self.updater.reach(heldout), self.s.gain_confidence)
        rolled_back = self.s.rollback and delta < 0
        if rolled_back:  # the old weights are back, and the cache was computed with them
            self.updater.load_arm_weights(arm, old)
            self.updater.load_optimizer_state(arm, old_optimizer)
            event["rolled_back"] = True
        else:
            self._rebuild_cache(root)
        cost = time.perf_counter() - t0
        self.update_s += cost
        event.update(reach_before=round(float(before.mean()), 4), reach_after=round(float(before.mean()) + delta, 4),
                     reach_change_low=round(delta_low, 4), heldout=count, cost_s=round(cost, 4))  # fmt: skip
        if rolled_back:  # it changed nothing: it only cost its time
            event["gain_s"] = 0.0
            self._record(arm, 0.0, cost)
        else:  # the bandit hears of it once the next window has judged it
            self._pending = PendingUpdate(arm, old, old_optimizer, event, cost)

    def _settle(self, window: WindowStats, root: int) -> torch.Tensor:
        """Judge the pending update on the window just generated, which it never trained on:
        reach with the new weights vs the old ones, paired per position. The lower
        confidence bound of the change, scaled to live tau by `reach_to_tau` and converted
        to seconds, is the arm's reward. With fewer than `min_heldout` draftable positions
        the update stays and the arm is credited no gain. Returns the reach of the weights
        left in place on this window, which the next update's first check reuses."""
        pending, self._pending = self._pending, None
        t0 = time.perf_counter()
        _, heldout = self.buffer.split(recent=self.s.window_tokens, context=self.s.heldout_context)
        after = self.updater.reach(heldout)
        in_place = after  # the reach of the weights this settle leaves
        gain, event = 0.0, pending.event
        if after.numel() < self.s.min_heldout:  # too little evidence either way: keep it, claim no gain
            event.update(next_heldout=after.numel(), next_why=f"< {self.s.min_heldout} draftable positions")
        else:
            self.reach_to_tau.add(window.tau, float(after.mean()))  # the new weights generated this window
            new = self.updater.arm_weights(pending.arm)
            self.updater.load_arm_weights(pending.arm, pending.old)
            before = self.updater.reach(heldout)
            delta, delta_low = reach_change_bound(before, after, self.s.gain_confidence)
            if self.s.rollback and delta < 0:
                self._rebuild_cache(root)  # the old weights stay
                self.updater.load_optimizer_state(pending.arm, pending.old_optimizer)
                event["rolled_back_next"] = True
                in_place = before
            else:
                self.updater.load_arm_weights(pending.arm, new)
                live = self.reach_to_tau.factor * delta_low
                gain = seconds_saved(window.tau, live, window.iteration_s, self.bandit.horizon_tokens)
            event.update(next_heldout=after.numel(), next_reach_old=round(float(before.mean()), 4),
                         next_reach_new=round(float(after.mean()), 4), next_change_low=round(delta_low, 4),
                         live_per_reach=round(self.reach_to_tau.factor, 4))  # fmt: skip
        spent = time.perf_counter() - t0
        self.update_s += spent
        event.update(gain_s=round(gain, 4), cost_s=round(pending.cost_s + spent, 4), next_tau=round(window.tau, 3))
        self._record(pending.arm, gain, pending.cost_s + spent)
        return in_place

    def _record(self, arm: str, gain_s: float, cost_s: float) -> None:
        if self.s.policy == "bandit":
            self.bandit.record(arm, gain_s, cost_s)

    def _rebuild_cache(self, root: int) -> None:
        """Recompute the wrapped drafter's cache with the new weights from the buffered request."""
        seg = self.buffer.current
        prompt = list(seg.tokens)
        like = self._features_like
        features = torch.stack(seg.features).to(dtype=like.dtype, device=like.device)
        self.inner.begin(PrefillFeedback(prompt, features, root, self._max_length))

    def summary(self) -> dict:
        """What adaptation did so far, for reports."""
        pulls: dict[str, int] = {}
        for e in self.events:
            pulls[e["arm"]] = pulls.get(e["arm"], 0) + 1
        undone = sum(1 for e in self.events if e.get("rolled_back") or e.get("rolled_back_next"))
        return {
            "policy": self.s.policy, "heldout_context": self.s.heldout_context, "windows": len(self.events), "pulls": pulls, "rolled_back": undone,
            "unjudged_update": None if self._pending is None else self._pending.arm,  # the stream ended first
            "resets": self.bandit.resets,
            "update_s": round(self.update_s, 4), "bookkeeping_s": round(self.bookkeeping_s, 4),
            "reference_tau": self.bandit.reference_tau,
            "live_per_reach": round(self.reach_to_tau.factor, 4), "live_per_reach_pairs": self.reach_to_tau.pairs,
        }  # fmt: skip

    def save(self, out: str | Path) -> Path:
        """Write the adapted weights as a new drafter checkpoint (never over the source one)."""
        out = Path(out).resolve()
        if self.source is not None and out == self.source:
            raise InvalidSettingError(f"refusing to overwrite the original drafter {out}: save the adapted one elsewhere")
        if out.exists() and any(out.iterdir()):
            raise InvalidSettingError(f"{out} already exists and is not empty: choose a new directory")
        meta = {"adapted_from": None if self.source is None else str(self.source), "adaptation": self.summary()}
        if self.calibration:
            meta["calibration"] = self.calibration  # measured before adaptation; say so
            meta["calibration_note"] = "measured on the drafter before online adaptation"
        save_drafter(self.model, out, meta=meta)
        return out


def reference_tau(calibration: dict | None, node_budget: int) -> float | None:
    """The drafter's in-domain tau at `node_budget`, interpolated from its calibration."""
    if not calibration:
        return None
    return interpolate(dict(zip(calibration["budgets"], calibration["tau"])), node_budget)
