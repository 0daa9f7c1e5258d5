"""The importance profile on FSDP2's shards (hizfo/core/profiling.py): two processes (gloo on CPU, one thread each)
profile a sharded OPT, each its rows of the batch, and get one process's importance up to summation order, the same
selection on both ranks, and every weight back bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.spawn import spawn_gloo

pytestmark = pytest.mark.distributed
WORLD = 2


def _model():
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=96, hidden_size=16, num_hidden_layers=2, ffn_dim=40, num_attention_heads=2,
                       max_position_embeddings=32, word_embed_proj_dim=16, dropout=0.0, attention_dropout=0.0)
    model = OPTForCausalLM(config)
    model.train(False)
    return model


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(4, 96, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[3, 9:] = 0                                             # a padded row: the ranks' token counts differ
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _rank(rank: int, decay: float, out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from hizfo.core.distributed import full_parameters, skeleton
    from hizfo.core.partition import partition_model
    whole = partition_model(_model(), _batch(), 0.5, 1e-3, decay)         # plain tensors: one process's profile
    model = _model()
    shape = skeleton(model)
    mesh = init_device_mesh("cpu", (WORLD,))
    for block in model.model.decoder.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    before = {n: t.clone() for n, t in full_parameters(model).items()}
    sharded = partition_model(model, _batch(), 0.5, 1e-3, decay, shape=shape)
    after = full_parameters(model)
    out[rank] = {"whole": whole.importance, "sharded": sharded.importance, "fo": (whole.fo, sharded.fo),
                 "back": all(torch.equal(after[n], before[n]) for n in before)}


def _spawn(decay: float, folder: Path) -> dict:
    import torch.multiprocessing as mp
    with mp.Manager() as manager:
        out = manager.dict()
        spawn_gloo(_rank, (decay, out), WORLD, folder)
        return dict(out)


@pytest.mark.parametrize("decay, tolerance", [(0.0, 1e-5), (0.1, 2e-2)])
def test_two_ranks_profile_their_shards_as_one_process_profiles_the_whole(tmp_path: Path, decay: float,
                                                                           tolerance: float):
    """No decay: each element's code is one process's, so only the gradients' and sums' order differs (measured
    ~1e-7 of the largest |I|). Decay: code_top is the whole tensor's, but the dither draws per shard (zero-mean
    noise of at most one code unit per element)."""
    out = _spawn(decay, tmp_path)
    assert out[0]["sharded"] == out[1]["sharded"]                 # one importance on every rank: one selection
    for rank in range(WORLD):
        whole, sharded = out[rank]["whole"], out[rank]["sharded"]
        assert whole.keys() == sharded.keys()
        gap = max(abs(whole[n] - sharded[n]) for n in whole)      # both scaled by their max |I| (= 1)
        assert gap < tolerance, gap
        assert out[rank]["fo"][0] == out[rank]["fo"][1]
        assert out[rank]["back"], "the profile left a shard moved"


@pytest.mark.subprocess
@pytest.mark.parametrize("method, extra", [("hizfo", []), ("greentrainer", ["task.options.n_train=32",
                                                                            "method.max_steps=6"])])
def test_a_two_process_run_profiles_on_the_shards_when_asked(tmp_path, method, extra):
    """profile_shards=true: the run's profiles (GreenTrainer's re-selection at epoch 2 too) go through the shards
    and the run ends with an ok record whose partition every rank shared."""
    import json
    from tests.distributed.test_data_parallel import torchrun
    proc = torchrun(2, ["run.py", f"method={method}", "profile_shards=true", "method.max_steps=4",
                        "task.options.n_eval=8", "num_threads=1", "logger=none", f"results_dir={tmp_path / 'runs'}",
                        f"hydra.run.dir={tmp_path / 'out'}", *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(each of 2 processes up to " in proc.stderr
    (path,) = (tmp_path / "runs").rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["partition"]["fo_names"]
    assert record["provenance"]["world_size"] == 2
