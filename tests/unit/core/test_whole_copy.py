"""The whole copy a data-parallel GreenTrainer profiles (hizfo.core.distributed.skeleton / whole_copy), in one
process: the same weights in their own storage, tied weights still tied, the same losses and the same selection."""
from __future__ import annotations

import torch

from conftest import tiny
from hizfo.core.distributed import skeleton, whole_copy
from hizfo.core.methods import causal_lm_loss
from hizfo.core.partition import partition_model


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_the_skeleton_holds_no_weights_and_the_whole_copy_the_models_own(one_thread):
    model = tiny("tiny-opt").model
    shape = skeleton(model)
    assert all(p.is_meta for p in shape.parameters()) and all(b.is_meta for b in shape.buffers())
    model.train(False)
    whole = whole_copy(shape, model)
    mine, theirs = dict(whole.named_parameters()), dict(model.named_parameters())
    assert mine.keys() == theirs.keys()
    for name, p in mine.items():
        assert torch.equal(p, theirs[name]) and p.data_ptr() != theirs[name].data_ptr()   # own storage
    assert whole.get_output_embeddings().weight is whole.get_input_embeddings().weight     # still tied
    assert not whole.training
    batch = _batch(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(causal_lm_loss(whole, batch), causal_lm_loss(model, batch))


def test_a_selection_on_the_whole_copy_is_the_models_and_leaves_it_untouched(one_thread):
    model = tiny("tiny-opt").model
    model.train(False)
    shape = skeleton(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batch(model.config.vocab_size)
    on_copy = partition_model(whole_copy(shape, model), batch, 0.7, 1e-3, 0.0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    on_model = partition_model(model, batch, 0.7, 1e-3, 0.0)
    assert on_copy.fo == on_model.fo and on_copy.importance == on_model.importance
