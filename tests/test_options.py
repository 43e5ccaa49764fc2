"""Architecture and optimizer options on the shared blocks, the LSTM and k-gram baselines, Muon."""
import copy
import math
import os
import sys

import pytest
import torch

from conftest import run
from model import Block, ModelConfig, apply_rope, build_model, num_params, rope_1d, rope_2d
from optim import Muon, configure_optimizer, hidden_matrices, newton_schulz


def tiny(**kw):
    args = dict(model_type='gpt', n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50, dropout=0.0)
    args.update(kw)
    torch.manual_seed(0)
    return build_model(ModelConfig(**args))


OPTIONS = [
    {},
    {'norm': 'rmsnorm'},
    {'norm_placement': 'post'},
    {'mlp': 'swiglu'},
    {'mlp': 'relu2'},
    {'pos': 'sincos'},
    {'pos': 'rope'},
    {'pos': 'none'},
    {'qk_norm': True},
    {'logit_softcap': 15.0},
    {'zero_init': True},
    {'attention': 'linear'},
    {'optimizer': 'muon'},
    {'pos': 'rope', 'norm': 'rmsnorm', 'mlp': 'relu2', 'qk_norm': True, 'zero_init': True, 'logit_softcap': 30.0,
     'optimizer': 'muon', 'bias': False},
    {'model_type': 'lstm'},
    {'model_type': 'kgram_mlp'},
    {'model_type': 'kgram_mlp', 'mlp': 'swiglu', 'norm': 'rmsnorm', 'optimizer': 'muon'},
]


@pytest.mark.parametrize('options', OPTIONS, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()) or 'default')
def test_option_trains_a_few_steps(options):
    model = tiny(**options).train()
    opt = configure_optimizer(model, 0.1, 3e-3, (0.9, 0.95), 'cpu')
    x = torch.randint(50, (4, 33))
    losses = []
    for _ in range(5):
        _, loss, _ = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # it learns something from the same batch


def test_options_in_bidirectional_and_cross_attention_blocks():
    """What the maskgit and 4m families use: boolean masks, cross-attention, rope on both sides."""
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, norm='rmsnorm', norm_placement='post', mlp='swiglu',
                         qk_norm=True, zero_init=True)
    torch.manual_seed(0)
    block = Block(config, cross=True)
    x, context = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    mask = torch.rand(6, 6) > 0.3
    mask |= torch.eye(6, dtype=torch.bool)
    rope = rope_2d(torch.arange(6) // 3, torch.arange(6) % 3, 16)  # a 2x3 grid
    context_rope = rope_1d(torch.arange(5), 16)
    y = block(x, mask=mask, context=context, context_mask=torch.ones(6, 5, dtype=torch.bool), rope=rope,
              context_rope=context_rope)
    assert y.shape == x.shape and torch.isfinite(y).all()


def scores(q, k, rope_q, rope_k):
    return (apply_rope(q, rope_q) * apply_rope(k, rope_k)).sum(-1)  # (B, nh, T) dot product per position


def test_rope_scores_depend_only_on_offsets():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    for i, j, shift in [(3, 1, 7), (0, 5, 11), (10, 10, 3)]:
        a = scores(q, k, rope_1d(torch.tensor([i]), 16), rope_1d(torch.tensor([j]), 16))
        b = scores(q, k, rope_1d(torch.tensor([i + shift]), 16), rope_1d(torch.tensor([j + shift]), 16))
        assert torch.allclose(a, b, atol=1e-5)
    other = scores(q, k, rope_1d(torch.tensor([4]), 16), rope_1d(torch.tensor([1]), 16))
    assert not torch.allclose(other, scores(q, k, rope_1d(torch.tensor([3]), 16), rope_1d(torch.tensor([1]), 16)))
    # 2-D axial: a shift of both (row, col) positions keeps the score; a different offset changes it
    r = lambda row, col: rope_2d(torch.tensor([row]), torch.tensor([col]), 16)
    assert torch.allclose(scores(q, k, r(2, 3), r(0, 1)), scores(q, k, r(5, 7), r(3, 5)), atol=1e-5)
    assert not torch.allclose(scores(q, k, r(2, 3), r(0, 1)), scores(q, k, r(3, 2), r(0, 1)))
    # norms are kept: a rotation
    assert torch.allclose(apply_rope(q, rope_1d(torch.tensor([9]), 16)).norm(), q.norm(), atol=1e-5)


@pytest.mark.parametrize('options', [{'pos': 'rope'}, {'pos': 'rope', 'qk_norm': True}, {'pos': 'sincos'},
                                     {'pos': 'none'}, {'attention': 'linear'}, {'attention': 'linear', 'pos': 'rope'},
                                     {'model_type': 'lstm'}, {'model_type': 'kgram_mlp'}],
                         ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
def test_kv_cache_matches_uncached(options):
    model = tiny(**options).eval()
    x = torch.randint(50, (2, 20))
    full, _, _ = model(x, x)  # (B, T, V), every position
    cache = model.new_kv_cache(2)
    prefill, _, _ = model(x[:, :12], kv_cache=cache)
    assert torch.allclose(prefill[:, -1], full[:, 11], atol=1e-4)
    for t in range(12, 16):  # one token at a time
        step, _, _ = model(x[:, t:t + 1], kv_cache=cache)
        assert torch.allclose(step[:, -1], full[:, t], atol=1e-4)
    chunk, _, _ = model(x[:, 16:20], kv_cache=cache)  # a multi-token chunk after a prefix
    assert torch.allclose(chunk[:, -1], full[:, 19], atol=1e-4)
    prompt = torch.randint(50, (3, 5))
    slow = model.generate(prompt, 20, temperature=0, kv_cache=False)
    fast = model.generate(prompt, 20, temperature=0, kv_cache=True)
    assert torch.equal(slow, fast)


def test_swiglu_is_parameter_matched_and_zero_init_is_identity():
    gelu, swiglu = tiny(n_embd=96), tiny(n_embd=96, mlp='swiglu')
    assert abs(num_params(swiglu) / num_params(gelu) - 1) < 0.02
    model = tiny(zero_init=True, pos='rope').eval()
    for block in model.blocks:
        assert (block.attn.out_proj.weight == 0).all() and (block.mlp.proj.weight == 0).all()
    x = torch.randint(50, (2, 8))
    logits, _, _ = model(x, x)  # every block is the identity: logits depend on the current token only
    expected = model.lm_head(model.norm_f(model.tok_emb(x)))
    assert torch.allclose(logits, expected, atol=1e-5)


def test_logit_softcap_bounds_logits():
    model = tiny(logit_softcap=2.0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # huge raw logits
    logits, _, _ = model(torch.randint(50, (2, 8)), torch.randint(50, (2, 8)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9


def test_muon_update_is_orthogonal():
    torch.manual_seed(0)
    for shape in [(16, 48), (48, 16)]:
        w = torch.nn.Parameter(torch.randn(shape))
        opt = Muon([{'params': [w], 'muon': True}], lr=0.1, momentum=0.0)
        before = w.detach().clone()
        u, _, vt = torch.linalg.svd(torch.randn(shape), full_matrices=False)
        w.grad = u @ torch.diag(torch.logspace(-1, 0, min(shape))) @ vt  # singular values from 0.1 to 1
        opt.step()
        update = (before - w.detach()) / (0.1 * max(1.0, shape[0] / shape[1]) ** 0.5)
        s = torch.linalg.svdvals(update)
        assert s.min() > 0.5 and s.max() < 1.3, s  # near-orthogonal: every singular value close to 1


def test_muon_orthogonalises_a_stack_per_matrix_and_takes_conv_kernels():
    """Muon runs one Newton-Schulz on the stack of same-shaped updates: each comes out as if alone, keeping its
    singular vectors. A conv kernel (out, in, kh, kw) is updated as the matrix (out, in*kh*kw)."""
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(3, 48, 16, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(3, 16, 16, generator=gen))
    G = U @ torch.diag(torch.logspace(-2, 0, 16)) @ V.mT  # (3, 48, 16): singular values 0.01 to 1
    stacked = newton_schulz(G)
    for k in range(3):
        assert torch.allclose(stacked[k], newton_schulz(G[k]), atol=1e-5)
        in_basis = U[k].mT @ stacked[k] @ V[k]  # diagonal: the same singular vectors, values near 1
        assert in_basis.diagonal().min() > 0.6 and in_basis.diagonal().max() < 1.25
        assert (in_basis - torch.diag(in_basis.diagonal())).abs().max() < 0.05
    convs = [torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=gen)) for _ in range(2)]
    before = [c.detach().clone() for c in convs]
    opt = Muon([{'params': convs, 'muon': True}], lr=0.1, momentum=0.0)
    for c in convs:
        c.grad = torch.randn(16, 8, 3, 3, generator=gen)
    opt.step()
    for c, b in zip(convs, before):
        expected = newton_schulz(c.grad.reshape(16, 72)).view(16, 8, 3, 3)
        assert torch.allclose((b - c.detach()) / 0.1, expected, atol=1e-5)


def test_newton_schulz_in_bf16_matches_fp32():
    """train.py runs Muon's Newton-Schulz in bf16 when it trains in bf16: the result must stay close to fp32's,
    singular values included."""
    gen = torch.Generator().manual_seed(0)
    for shape in [(24, 24), (48, 16), (16, 48)]:
        G = torch.randn(shape, generator=gen)
        exact, low = newton_schulz(G), newton_schulz(G, dtype=torch.bfloat16).float()
        assert ((low - exact).norm() / exact.norm()).item() < 0.05
        assert torch.allclose(torch.linalg.svdvals(low), torch.linalg.svdvals(exact), atol=0.05)


def test_muon_never_touches_embeddings_heads_or_norms():
    model = tiny(optimizer='muon')
    opt = configure_optimizer(model, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    muon = [g for g in opt.param_groups if g['muon']]
    assert len(muon) == 1 and muon[0]['lr_scale'] == pytest.approx(0.02 / 1e-3)
    muon_ids = {id(p) for p in muon[0]['params']}
    for name, p in model.named_parameters():
        is_hidden = name.startswith('blocks.') and p.dim() == 2
        assert (id(p) in muon_ids) == is_hidden, name
    assert id(model.tok_emb.weight) not in muon_ids and id(model.pos_emb.weight) not in muon_ids
    assert len(hidden_matrices(model)) == 2 * 4  # qkv, out, fc, proj per block
    # every parameter is in exactly one group
    all_ids = [id(p) for g in opt.param_groups for p in g['params']]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())


def test_muon_state_round_trips():
    def steps(model, opt, n, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            x = torch.randint(50, (2, 17), generator=gen)
            _, loss, _ = model(x[:, :-1], x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad()
    a = tiny(optimizer='muon').train()
    opt_a = configure_optimizer(a, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    steps(a, opt_a, 3, 0)
    b = tiny(optimizer='muon').train()
    b.load_state_dict(a.state_dict())
    opt_b = configure_optimizer(b, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # a copy, as a checkpoint on disk is
    steps(a, opt_a, 2, 1)
    steps(b, opt_b, 2, 1)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize('model_type', ['lstm', 'kgram_mlp'])
def test_baselines_overfit_a_tiny_batch(model_type):
    model = tiny(model_type=model_type).train()
    x = torch.randint(50, (4, 33))
    opt = configure_optimizer(model, 0.0, 1e-2, (0.9, 0.95), 'cpu')
    for _ in range(150):
        _, loss, _ = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.2, loss.item()


def test_train_resume_and_sample_with_options(shakespeare_char, data_root, tmp_path):
    """train.py and sample.py drive every option through config keys; Muon's schedule and state survive resume."""
    from test_train import train
    env = {'NANO4M_DATA': data_root}
    out = str(tmp_path / 'muon')
    options = ['--pos=rope', '--norm=rmsnorm', '--mlp=relu2', '--qk_norm=True', '--optimizer=muon', '--muon_lr=0.03',
               '--logit_softcap=30.0', '--lr_decay_iters=8', '--eval_interval=4']
    train(out, *options, '--max_iters=4', env=env)
    resumed = train(out, *options, '--max_iters=8', '--init_from=resume', env=env)
    assert 'iter 4: loss' in resumed.stdout and 'step 8: train loss' in resumed.stdout
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    muon_group = [g for g in ckpt['optimizer']['param_groups'] if g['muon']][0]
    assert muon_group['lr_scale'] == pytest.approx(0.03 / 3e-3)
    assert muon_group['lr'] == pytest.approx(1e-4 * 0.03 / 3e-3)  # the schedule's min_lr (config) times the scale
    sample = run([sys.executable, 'sample.py', f'--out_dir={out}', '--start=ROMEO:', '--num_samples=1',
                  '--max_new_tokens=20', '--device=cpu'], env_extra=env)
    assert 'ROMEO:' in sample.stdout and '20 tokens' in sample.stdout
    lstm = str(tmp_path / 'lstm')
    train(lstm, '--model_type=lstm', '--max_iters=3', '--eval_interval=3', env=env)
    sample = run([sys.executable, 'sample.py', f'--out_dir={lstm}', '--start=ROMEO:', '--num_samples=1',
                  '--max_new_tokens=20', '--device=cpu'], env_extra=env)
    assert '20 tokens' in sample.stdout
