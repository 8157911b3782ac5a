"""`craft.from_module`: an nn.Module trained by Craft's step equals the module trained by
torch.optim; tied weights, buffers, checkpoints and the module itself."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import craft
from craft import checkpoint, tree
from craft.interop.module import supervised_loss
from craft.optim import AdamW, Schedule, decay_mask

transformers = pytest.importorskip("transformers")

LR, BETAS, EPS, WD = 1e-3, (0.9, 0.95), 1e-8, 0.1
OPT = AdamW(beta1=BETAS[0], beta2=BETAS[1], eps=EPS, weight_decay=WD)
CONSTANT = Schedule(kind="constant", peak_lr=LR)
N_EMBD = 32


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=N_EMBD, vocab_size=100, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).float()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)
    )


def token_batches(n: int = 5) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 100, (4, 17), generator=gen) for _ in range(n)]
    return [{"inputs": x[:, :-1].clone(), "targets": x[:, 1:].clone()} for x in rows]


def image_batches(n: int = 5) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        {"inputs": torch.randn(8, 1, 8, 8, generator=gen), "targets": torch.randint(0, 10, (8,))}
        for _ in range(n)
    ]


def lm_criterion(out: Any, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.logits.flatten(0, 1), targets.flatten())


def train_with_craft(module: nn.Module, criterion: Any, batches: list, **options: Any) -> Any:
    params, apply = craft.from_module(module)
    step = craft.make_train_step(
        supervised_loss(apply, criterion), OPT, CONSTANT, clip_norm=None,
        compile=options.pop("compile", False), **options,
    )  # fmt: skip
    state = craft.init_state(params, OPT)
    for batch in batches:
        state, _ = step(state, batch)
    return state, apply


def train_with_torch(module: nn.Module, criterion: Any, batches: list) -> dict[str, torch.Tensor]:
    """The same steps through torch.optim.AdamW on a copy of the module. Craft's AdamW decays
    matrices only (not biases, norms or tables named `embedding`): the param groups say the
    same, from Craft's own mask."""
    ref = copy.deepcopy(module)
    named = dict(ref.named_parameters())
    params, _ = craft.from_module(module)
    mask = dict(zip(tree.to_dotted(params), decay_mask(params, OPT), strict=True))
    groups = [
        {"params": [named[n] for n in named if mask[n]], "weight_decay": WD},
        {"params": [named[n] for n in named if not mask[n]], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    for batch in batches:
        optimizer.zero_grad()
        criterion(ref(batch["inputs"]), batch["targets"]).backward()
        optimizer.step()
    return {name: p.detach() for name, p in named.items()}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed"


def test_params_are_a_nested_tree_of_copies() -> None:
    module = tiny_gpt2()
    params, _ = craft.from_module(module)
    block = params["transformer"]["h"]["0"]["attn"]["c_attn"]
    assert block["weight"].shape == (N_EMBD, 3 * N_EMBD)  # Conv1D keeps [in, out]
    assert list(tree.to_dotted(params)) == [n for n, _ in module.named_parameters()]
    wte = params["transformer"]["wte"]["weight"]
    assert not wte.requires_grad
    assert wte.data_ptr() != module.transformer.wte.weight.data_ptr()


def test_gpt2_trained_by_craft_equals_torch_optim() -> None:
    module = tiny_gpt2()
    before = snapshot(module)
    batches = token_batches()
    state, _ = train_with_craft(module, lm_criterion, batches)
    expected = train_with_torch(module, lm_criterion, batches)
    got = tree.to_dotted(state.params)
    assert list(got) == list(expected)
    for name, value in expected.items():
        if name.endswith("attn.c_attn.bias"):
            # The key bias's true gradient is zero (softmax ignores a shift shared by all keys):
            # what fp32 computes is rounding noise, ~1e-11, which AdamW divides by eps into steps
            # of ~lr * 1e-3 with arbitrary sign. Two correct AdamWs that round differently (an
            # ulp) compare noise there; the query and value biases get the strict bound.
            key = slice(N_EMBD, 2 * N_EMBD)
            torch.testing.assert_close(got[name][key], value[key], rtol=0, atol=1e-5)
            for part in (slice(0, N_EMBD), slice(2 * N_EMBD, None)):
                torch.testing.assert_close(got[name][part], value[part], rtol=0, atol=1e-6)
        else:
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)
    moved = (got["transformer.wte.weight"] - before["transformer.wte.weight"]).abs().max()
    assert moved > 1e-3  # the comparison is not of untrained params
    assert_unchanged(module, before)


def test_key_bias_gradient_is_rounding_noise() -> None:
    """Why the key bias gets a looser bound above: its gradient is ~0 in exact arithmetic."""
    module = tiny_gpt2()
    batch = token_batches(1)[0]
    lm_criterion(module(batch["inputs"]), batch["targets"]).backward()
    grad = module.transformer.h[0].attn.c_attn.bias.grad
    assert grad is not None
    assert grad[N_EMBD : 2 * N_EMBD].abs().max() < 1e-9
    assert grad[2 * N_EMBD :].abs().max() > 1e-4


def test_gpt2_tied_head_is_one_param_and_both_uses_see_it() -> None:
    module = tiny_gpt2()
    assert module.lm_head.weight is module.transformer.wte.weight
    state, apply = train_with_craft(module, lm_criterion, token_batches(2))
    names = list(tree.to_dotted(state.params))
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    wte = state.params["transformer"]["wte"]["weight"]
    x = token_batches(1)[0]["inputs"]
    out = apply(state.params, x, output_hidden_states=True)
    # The head reads the trained table: logits are the final hidden states times wte^T.
    torch.testing.assert_close(out.logits, out.hidden_states[-1] @ wte.T, rtol=1e-5, atol=1e-5)
    # ... and so does the input embedding: changing wte alone changes the first hidden state.
    other = tree.tree_map(torch.clone, state.params)
    other["transformer"]["wte"]["weight"].add_(1.0)
    hidden = apply(other, x, output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(hidden, out.hidden_states[0] + 1.0, rtol=1e-5, atol=1e-5)


def test_cnn_trained_by_craft_equals_torch_optim() -> None:
    module = tiny_cnn()
    before = snapshot(module)
    batches = image_batches()
    state, _ = train_with_craft(module, F.cross_entropy, batches)
    expected = train_with_torch(module, F.cross_entropy, batches)
    got = tree.to_dotted(state.params)
    assert list(got) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)
    assert (got["0.weight"] - before["0.weight"]).abs().max() > 1e-3
    assert_unchanged(module, before)


def test_adamw_math_equals_torch_optim_in_fp64() -> None:
    """Same formula, not only close numbers: decoupled decay, both moments bias-corrected, eps
    added after the bias-corrected square root. Tiny gradients make eps matter (adding it
    before the correction would differ by ~1e-3 here); what remains is Craft's fp32 lr and
    bias corrections."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, 20, generator=gen, dtype=torch.float64)
    grads = [torch.randn(50, 20, generator=gen, dtype=torch.float64) * 1e-8 for _ in range(5)]
    lr = 2.0**-10  # exact in fp32, which Craft's lr tensor is
    params = {"w": start.clone()}
    state = OPT.init(params)
    ref = start.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([ref], lr=lr, betas=BETAS, eps=EPS, weight_decay=WD)
    for grad in grads:
        OPT.update({"w": grad}, state, params, lr=lr)
        ref.grad = grad.clone()
        optimizer.step()
    moved = (ref.detach() - start).abs().max()
    assert moved > 1e-3
    torch.testing.assert_close(params["w"], ref.detach(), rtol=0, atol=1e-6)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    module = tiny_gpt2()
    state, apply = train_with_craft(module, lm_criterion, token_batches(2))
    path = checkpoint.save(tmp_path, dict(state._asdict()), step=2, meta={"from": "module"})
    params, _ = craft.from_module(module)
    loaded, meta = checkpoint.load(path, params, prefix="params")
    assert meta == {"from": "module"}
    for name, value in tree.to_dotted(state.params).items():
        assert torch.equal(tree.to_dotted(loaded)[name], value)
    x = token_batches(1)[0]["inputs"]
    assert torch.equal(apply(loaded, x).logits, apply(state.params, x).logits)


@pytest.mark.slow  # compiles the forward, its backward and the update: ~15 s on 2 cores
def test_compiled_step_trains_a_module() -> None:
    module = tiny_cnn()
    before = snapshot(module)
    batches = image_batches(3)
    compiled, _ = train_with_craft(module, F.cross_entropy, batches, compile=True)
    eager, _ = train_with_craft(module, F.cross_entropy, batches)
    for a, b in zip(tree.leaves(compiled.params), tree.leaves(eager.params), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert_unchanged(module, before)


def norm_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(256, 10),
    )  # fmt: skip


def test_running_statistics_in_train_mode_are_refused() -> None:
    module = norm_cnn()
    with pytest.raises(ValueError, match=r"train mode .* running statistics .*\(1\).*eval\(\)"):
        craft.from_module(module)
    params, apply = craft.from_module(module.eval())
    module.train()  # later: apply checks again
    with pytest.raises(ValueError, match=r"module\.eval"):
        apply(params, torch.zeros(2, 1, 8, 8))


def test_eval_mode_buffers_are_kept_and_untouched() -> None:
    module = norm_cnn().eval()
    module[1].running_mean.fill_(0.5)  # a visible statistic: apply must use it
    before = snapshot(module)
    state, apply = train_with_craft(module, F.cross_entropy, image_batches(2))
    assert "running_mean" not in str(list(tree.to_dotted(state.params)))
    x = image_batches(1)[0]["inputs"]
    reference = copy.deepcopy(module)
    for name, value in tree.to_dotted(state.params).items():
        reference.get_parameter(name).data.copy_(value)
    torch.testing.assert_close(apply(state.params, x), reference(x), rtol=0, atol=0)
    assert_unchanged(module, before)


class Counter(nn.Module):
    """Writes a buffer in forward: the kind of change from_module cannot keep."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.linear(x)


def test_a_buffer_written_in_forward_is_reported() -> None:
    params, apply = craft.from_module(Counter())
    with pytest.raises(RuntimeError, match=r"wrote to its buffers \['calls'\]"):
        apply(params, torch.zeros(2, 3))


def test_every_param_must_be_given() -> None:
    params, apply = craft.from_module(tiny_cnn())
    del params["4"]["bias"]
    with pytest.raises(RuntimeError, match=r"4\.bias"):
        apply(params, torch.zeros(2, 1, 8, 8))


def test_a_criterion_may_give_its_own_weight() -> None:
    module = tiny_gpt2()
    params, apply = craft.from_module(module)

    def padded(out: Any, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = out.logits.flatten(0, 1)
        loss = F.cross_entropy(logits, targets.flatten(), ignore_index=-1)
        return loss, {"weight": (targets >= 0).sum()}

    batch = token_batches(1)[0]
    batch["targets"][:, -4:] = -1
    loss, aux = supervised_loss(apply, padded)(params, batch, rng=None)
    assert aux["weight"].item() == 4 * 12
    plain_loss, plain = supervised_loss(apply, lm_criterion)(params, token_batches(1)[0])
    assert plain["weight"].item() == 4 * 16 and loss.ndim == plain_loss.ndim == 0


def test_not_a_module_is_refused() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        craft.from_module(lambda x: x)  # type: ignore[arg-type]
