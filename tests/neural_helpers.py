"""Random SpecBlock / EAGLE-3 drafters shaped for a tiny test target."""

from __future__ import annotations

import torch
from conftest import randomise_

from specblock.drafters.eagle3_model import Eagle3Config, Eagle3Model
from specblock.drafters.specblock_model import SpecBlockConfig, SpecBlockModel
from specblock.target.transformer import Transformer
from specblock.training.draft_vocab import DraftVocab


def tiny_vocab(target: Transformer, size: int = 96) -> DraftVocab:
    """The `size` lowest ids plus EOS: a draft vocabulary smaller than the target's."""
    counts = torch.zeros(target.cfg.vocab_size, dtype=torch.long)
    counts[:size] = torch.arange(size, 0, -1)
    return DraftVocab.from_counts(counts, size, always=[2])


def random_specblock(target: Transformer, seed: int = 0, std: float = 0.2, **overrides) -> SpecBlockModel:
    torch.manual_seed(seed)
    vocab = tiny_vocab(target)
    model = SpecBlockModel(SpecBlockConfig.for_target(target.cfg, vocab.size, **overrides))
    randomise_(model, std)
    model.embed_tokens = target.embed.float()
    model.d2t, model.t2d = vocab.d2t, vocab.t2d
    return model.eval()


def random_eagle3(target: Transformer, seed: int = 0, std: float = 0.2, **overrides) -> Eagle3Model:
    """`overrides`: Eagle3Config fields, e.g. a compact `intermediate_size`."""
    torch.manual_seed(seed)
    vocab = tiny_vocab(target)
    model = Eagle3Model(Eagle3Config.for_target(target.cfg, vocab.size, **overrides))
    randomise_(model, std)
    model.embed_tokens = target.embed.float()
    model.d2t, model.t2d = vocab.d2t, vocab.t2d
    return model.eval()

