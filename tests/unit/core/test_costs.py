"""The cost model: forward/backward totals vs FlopCounterMode, tensor order, tied weights, unreadable modules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hizfo.core.costs import cost_arrays, tensor_costs
from hizfo.errors import ConfigError
from tests.conftest import tiny

FAMILIES = ["tiny-opt", "tiny-qwen2", "tiny-bloom"]
B, N = 2, 64


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    model = tiny(request.param).model
    # FlopCounterMode does not count PyTorch's CPU SDPA kernel; eager attention runs the same products as matmuls
    model.set_attn_implementation("eager")
    return request.param, model


@pytest.mark.slow
def test_forward_total_matches_flop_counter(family_model) -> None:
    name, model = family_model
    model.eval()
    fp, _, _ = cost_arrays(tensor_costs(model, B, N))
    ids = torch.randint(3, model.config.vocab_size, (B, N))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, use_cache=False)
    ratio = 2 * int(fp.sum()) / counter.get_total_flops()  # FLOPs = 2·MACs
    assert abs(ratio - 1) < 0.10, f"{name}: cost model / FlopCounterMode = {ratio:.3f}"
    # the residue is elementwise work (biases, norms) that the counter ignores: a few tenths of a percent
    assert abs(ratio - 1) < 0.02, f"{name}: cost model / FlopCounterMode = {ratio:.3f}"


def test_backward_total_matches_flop_counter(family_model) -> None:
    name, model = family_model
    model.eval()
    costs = tensor_costs(model, B, N)
    _, dw, dy = cost_arrays(costs)
    # the embedding's dense V·D gradient term is no matmul; the counter cannot see it
    embedding = sum(c.numel for c in costs if c.kind == "embedding.weight")
    ids = torch.randint(3, model.config.vocab_size, (B, N))
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    model.zero_grad(set_to_none=True)
    ratio = 2 * int(dw.sum() + dy.sum() - embedding) / counter.get_total_flops()
    assert abs(ratio - 1) < 0.10, f"{name}: backward cost model / FlopCounterMode = {ratio:.3f}"


def test_every_unique_tensor_once_in_computation_order(family_model) -> None:
    name, model = family_model
    costs = tensor_costs(model, B, N)
    names = [c.name for c in costs]
    unique = [n for n, _ in model.named_parameters(remove_duplicate=True)]
    assert sorted(names) == sorted(unique) and len(names) == len(set(names))
    position = {n: i for i, n in enumerate(names)}
    embedding = next(n for n in names if "embed_tokens" in n or "word_embeddings.weight" in n)
    last_block = {"tiny-opt": "model.decoder.layers.1.", "tiny-qwen2": "model.layers.1.",
                  "tiny-bloom": "transformer.h.1."}[name]
    first_block = last_block.replace(".1.", ".0.")
    final_norm = {"tiny-opt": "model.decoder.final_layer_norm.weight", "tiny-qwen2": "model.norm.weight",
                  "tiny-bloom": "transformer.ln_f.weight"}[name]
    # index 0 nearest the output: final norm, then the last block, ..., the first block, the embeddings
    assert names[0].startswith(final_norm.rsplit(".", 1)[0])
    assert position[final_norm] < min(position[n] for n in names if n.startswith(last_block))
    assert max(position[n] for n in names if n.startswith(last_block)) < \
        min(position[n] for n in names if n.startswith(first_block))
    assert names[-1] == embedding  # the tied embedding sits at its deepest use
    # inside a block, in real execution order (not registration order)
    down, up, attn_out, attn_norm = {
        "tiny-opt": ("fc2", "fc1", "self_attn.out_proj", "self_attn_layer_norm"),
        "tiny-qwen2": ("mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj", "input_layernorm"),
        "tiny-bloom": ("mlp.dense_4h_to_h", "mlp.dense_h_to_4h", "self_attention.dense", "input_layernorm"),
    }[name]
    chain = [position[last_block + part + ".weight"] for part in (down, up, attn_out, attn_norm)]
    assert chain == sorted(chain)
    # bias before weight: the bias is added after the product, nearer the output
    for c in costs:
        if c.name.endswith(".bias"):
            assert position[c.name] + 1 == position[c.name[:-4] + "weight"]


def test_cost_conventions(family_model) -> None:
    name, model = family_model
    costs = {c.name: c for c in tensor_costs(model, B, N)}
    order = list(costs)
    tokens, vocab, hidden = B * N, model.config.vocab_size, model.config.hidden_size
    embedding = costs[order[-1]]
    # tied embedding: the head's forward and weight gradient plus the lookup's dense V·D gradient (GreenTrainer)
    assert embedding.t_fp == tokens * vocab * hidden
    assert embedding.t_dw == tokens * vocab * hidden + vocab * hidden and embedding.t_dy == 0
    # the LM head's backward sits on index 0
    head = costs[order[0]]
    assert head.t_dy >= tokens * vocab * hidden
    for c in costs.values():
        if c.kind == "linear.bias":
            assert c.t_dy == 0 or "v_proj" in c.name or "query_key_value" in c.name
    # the attention score/value products (4·B·N²·Dq) on the v projection (its bias, if any, comes first)
    v_prefix = {"tiny-opt": "model.decoder.layers.0.self_attn.v_proj", "tiny-qwen2": "model.layers.0.self_attn.v_proj",
                "tiny-bloom": "transformer.h.0.self_attention.query_key_value"}[name]
    v = costs[v_prefix + ".bias"]
    assert v.t_dy == 4 * tokens * N * hidden  # Dq = hidden for all three
    # grouped k/v heads (Qwen2): k and v projections are narrower than q
    if name == "tiny-qwen2":
        q, k = costs["model.layers.0.self_attn.q_proj.weight"], costs["model.layers.0.self_attn.k_proj.weight"]
        assert k.t_dw * 2 == q.t_dw == tokens * hidden * hidden
        assert costs["model.layers.0.input_layernorm.weight"].t_dw == tokens * hidden  # RMSNorm: B·N·D


@pytest.mark.slow
def test_frozen_tensors_fold_into_the_next_trainable_one() -> None:
    model = tiny("tiny-opt").model
    full = tensor_costs(model, B, N)
    frozen = {"model.decoder.layers.1.fc1.weight", "model.decoder.layers.1.fc1.bias"}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    try:
        part = tensor_costs(model, B, N)
        everything = tensor_costs(model, B, N, trainable_only=False)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    assert [c.name for c in everything] == [c.name for c in full]
    assert [c.name for c in part] == [c.name for c in full if c.name not in frozen]
    assert sum(c.t_fp for c in part) == sum(c.t_fp for c in full)
    # the cost to reach any tensor below the frozen ones is unchanged: Σ_{j≤d} t_dy_j
    prefix_full = dict(zip([c.name for c in full], np.cumsum([c.t_dy for c in full])))
    prefix_part = dict(zip([c.name for c in part], np.cumsum([c.t_dy for c in part])))
    below = "model.decoder.layers.1.final_layer_norm.weight"
    assert prefix_part[below] == prefix_full[below]


@pytest.mark.slow
def test_tied_weights_appear_once() -> None:
    model = tiny("tiny-opt").model
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    names = [c.name for c in tensor_costs(model, 1, 8)]
    assert "lm_head.weight" not in names and names.count("model.decoder.embed_tokens.weight") == 1


def test_untied_head_is_its_own_tensor_nearest_the_output() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config)
    costs = tensor_costs(model, 2, 8)
    assert costs[0].name == "lm_head.weight" and costs[0].t_dw == costs[0].t_dy == 16 * 50 * 32
    assert costs[-1].name == "model.embed_tokens.weight" and costs[-1].t_fp == 0


class _Scaler(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.gain


def test_unknown_module_is_a_config_error_naming_it() -> None:
    model = tiny("tiny-opt").model
    model.model.decoder.layers[0].fc2 = nn.Sequential(nn.Linear(512, 128), _Scaler(128))
    with pytest.raises(ConfigError, match=r"'model\.decoder\.layers\.0\.fc2\.1' \(_Scaler\).*fc2\.1\.gain"):
        tensor_costs(model, 1, 8)


def test_bad_batch_shape_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        tensor_costs(tiny("tiny-opt").model, 0, 8)


def test_post_layer_norm_opt_on_meta_device() -> None:
    # OPT-350M's layout (post-LN, project_in/out, no final norm), built on the meta device: no memory used
    from transformers import AutoModelForCausalLM, OPTConfig
    config = OPTConfig(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4, vocab_size=100,
                       word_embed_proj_dim=32, do_layer_norm_before=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = [c.name for c in tensor_costs(model, 4, 16)]
    assert len(names) == 2 * 16 + 4 and names[0] == "model.decoder.project_out.weight"
    block = "model.decoder.layers.1."
    # post-LN: fc2 → final_layer_norm and out_proj → self_attn_layer_norm
    assert names[1:3] == [block + "final_layer_norm.bias", block + "final_layer_norm.weight"]
    assert names.index(block + "self_attn_layer_norm.weight") < names.index(block + "self_attn.out_proj.bias")
    assert set(names[-3:]) == {"model.decoder.project_in.weight", "model.decoder.embed_positions.weight",
                               "model.decoder.embed_tokens.weight"}


@pytest.mark.slow
def test_costing_leaves_the_model_and_rng_untouched() -> None:
    model = tiny("tiny-opt").model.train()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    rng = torch.get_rng_state()
    tensor_costs(model, 2, 8)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(rng, torch.get_rng_state())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) and type(after[n]) is torch.Tensor for n in before)


def test_gpt2_conv1d_and_fused_qkv() -> None:
    # a family the project does not ship, read from module types alone (HF Conv1D, fused c_attn)
    from transformers import AutoModelForCausalLM, GPT2Config
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=128)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    costs = tensor_costs(model, B, N)
    fp, _, _ = cost_arrays(costs)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.randint(0, 100, (B, N)), use_cache=False)
    assert abs(2 * int(fp.sum()) / counter.get_total_flops() - 1) < 0.02
    by_name = {c.name: c for c in costs}
    assert by_name["transformer.h.0.attn.c_attn.bias"].t_dy == 4 * B * N * N * 64
    assert costs[-1].name == "transformer.wte.weight"  # tied to lm_head, first used at the input
