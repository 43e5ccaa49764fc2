"""μP: the standard model at the base width, flat activations across widths, learning-rate multipliers that reach
the optimizer through train.py's schedule, exact resume, and the sweep's table."""
import os

import pytest
import torch

from model import ModelConfig, build_model, width_dims
from optim import configure_optimizer
from speedrun import coord_check, mup_basins, mup_table
from test_robustness import events
from test_train import train

MODS = ({'name': 'rgb', 'kind': 'image', 'vocab_size': 16, 'num_tokens': 16, 'grid': [4, 4], 'levels': [4, 4]},
        {'name': 'caption', 'kind': 'sequence', 'vocab_size': 20, 'num_tokens': 8, 'grid': [1, 8]})


def gpt(**kw):
    return build_model(ModelConfig(**{'model_type': 'gpt', 'n_layer': 2, 'n_head': 4, 'n_embd': 64, 'vocab_size': 65,
                                      'block_size': 32, **kw}))


def fourm(**kw):
    return build_model(ModelConfig(**{'model_type': '4m', 'n_layer': 1, 'n_layer_dec': 1, 'n_head': 2, 'n_embd': 32,
                                      'modalities': MODS, 'grid_conv': 2, **kw}))


def fourm_batch(g):
    B = 4
    return dict(enc_tokens=torch.randint(0, 16, (B, 6), generator=g), enc_pos=torch.randint(0, 16, (B, 6), generator=g),
                enc_mod=torch.zeros(B, 6, dtype=torch.long), enc_pad=torch.zeros(B, 6, dtype=torch.bool),
                dec_pos=torch.randint(0, 8, (B, 5), generator=g), dec_mod=torch.ones(B, 5, dtype=torch.long),
                dec_pad=torch.zeros(B, 5, dtype=torch.bool), targets=torch.randint(0, 20, (B, 5), generator=g))


def train_steps(build, batch_fn, steps=3, **kw):
    torch.manual_seed(0)
    model = build(**kw)
    opt = configure_optimizer(model, 0.1, 3e-3, (0.9, 0.95), 'cpu')
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        _, loss, _ = model(**batch_fn(g))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model.state_dict(), losses


@pytest.mark.parametrize('family', ['gpt', '4m'])
def test_mup_at_the_base_width_is_the_standard_model_bit_for_bit(family):
    """Catches: an attention scale written as sqrt(base)/head_dim (one ulp off at the base width), a base-width twin
    that draws random numbers and shifts the init, a multiplier other than 1 at the base width, and an optimizer
    group split that changes the update."""
    def gpt_batch(g):
        x = torch.randint(0, 65, (4, 33), generator=g)
        return {'idx': x[:, :-1], 'targets': x[:, 1:]}
    build, batch_fn, width = (gpt, gpt_batch, 64) if family == 'gpt' else (fourm, fourm_batch, 32)
    standard, standard_losses = train_steps(build, batch_fn)
    mup, mup_losses = train_steps(build, batch_fn, mup=True, mup_base_width=width)
    assert mup_losses == standard_losses
    assert all(torch.equal(standard[k], mup[k]) for k in standard)
    # and away from the base width it is a different model (the flag does something)
    other, _ = train_steps(build, batch_fn, mup=True, mup_base_width=width // 2)
    assert any(not torch.equal(standard[k], other[k]) for k in standard)


def test_hidden_matrices_are_found_by_shape_in_every_family():
    """Catches classifying by ndim (embeddings and heads would get the hidden 1/m) or by module type only (a VLM's
    patch projection, whose input side is fixed, would too)."""
    dims = width_dims(gpt())
    hidden = {n for n, d in dims.items() if d == 2}
    assert hidden == {f'blocks.{i}.{m}.weight' for i in range(2)
                      for m in ('attn.qkv_proj', 'attn.out_proj', 'mlp.fc', 'mlp.proj')}
    assert dims['tok_emb.weight'] == 1 and dims['pos_emb.weight'] == 1 and dims['blocks.0.norm1.weight'] == 1
    dims = width_dims(fourm())
    assert dims['context_proj.weight'] == 2 and dims['grid_mixer.convs.0.weight'] == 2
    assert dims['head.weight'] == 1 and dims['tok_emb.weight'] == 1 and dims['grid_mixer.convs.0.bias'] == 1
    vlm = build_model(ModelConfig(model_type='vlm', n_layer=1, n_head=2, n_embd=32, vocab_size=30, block_size=64,
                                  image_size=8, in_channels=3, patch_size=2, grid_h=4, grid_w=4))
    dims = width_dims(vlm)
    assert dims['vision.patch_in.weight'] == 1 and dims['projector.weight'] == 2


def test_coordinate_check_flat_under_mup_growing_under_sp():
    """After a few Adam steps at one learning rate, mean |activation| per layer at width 256 over width 32: ~1 for
    every layer under μP, far above 1 for the blocks and the logits under SP. Catches a missing 1/m on the hidden
    learning rates (blocks grow), a missing output multiplier (logits grow), and a wrong attention scale."""
    g = torch.Generator().manual_seed(0)
    batches = [(x[:, :-1], x[:, 1:]) for x in (torch.randint(0, 65, (8, 33), generator=g) for _ in range(5))]
    args = dict(model_type='gpt', n_layer=2, n_head=4, vocab_size=65, block_size=32, mup_base_width=32)
    result = coord_check(args, (32, 256), batches, lr=1e-2)
    ratio = {p: {k: result[p][256][-1][k] / result[p][32][-1][k] for k in result[p][32][-1]} for p in result}
    assert set(ratio['mup']) == {'embeddings', 'block 1', 'block 2', 'logits'}
    assert all(0.67 < r < 1.5 for r in ratio['mup'].values()), ratio['mup']
    assert ratio['sp']['block 1'] > 4 and ratio['sp']['block 2'] > 4 and ratio['sp']['logits'] > 1.8, ratio['sp']
    # at step 0 (init) the embeddings are the same under both: μP leaves them alone
    assert result['mup'][256][0]['embeddings'] == result['sp'][256][0]['embeddings']


def test_muon_keeps_its_learning_rate_under_mup():
    """Muon's orthogonalised update is already width-independent: its hidden matrices keep muon_lr, and only what
    AdamW trains gets μP's 1/m."""
    model = gpt(n_embd=128, mup=True, mup_base_width=32, optimizer='muon', muon_lr=0.02)
    opt = configure_optimizer(model, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    muon = [g for g in opt.param_groups if g['muon']]
    assert len(muon) == 1 and muon[0]['lr'] == 0.02 and len(muon[0]['params']) == 8
    assert all(g.get('lr_scale', 1.0) in (1.0, 20.0) for g in opt.param_groups)  # no 1/4 group: nothing left for it
    with pytest.raises(ValueError, match='--mup_base_width'):
        gpt(mup=True)


def test_mup_learning_rates_reach_the_optimizer_and_resume_is_exact(shakespeare_char, data_root, tmp_path):
    """Through train.py at width 64 on base 16 (m = 4): the hidden matrices' group runs at the schedule's lr x 1/4 with
    weight decay x 4, the others at the schedule's lr; a split run (10 + 10 iterations) gives the straight run's losses
    and weights exactly."""
    env = {'NANO4M_DATA': data_root}
    common = ['--n_embd=64', '--mup=True', '--mup_base_width=16', '--deterministic=True', '--eval_interval=10',
              '--lr_decay_iters=20', '--learning_rate=1e-2', '--min_lr=1e-3', '--max_iters=20']
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    printed = train(straight, *common, env=env).stdout
    assert 'muP: width 64 = 4 x base width 16' in printed
    train(split, *common[:-1], '--max_iters=10', env=env)
    train(split, *common, '--init_from=resume', env=env)
    a = {e['iter']: e['loss'] for e in events(straight)}
    b = {e['iter']: e['loss'] for e in events(split)}
    assert sorted(a) == sorted(b) == list(range(20)) and all(a[i] == b[i] for i in range(20))
    ckpt_a = torch.load(os.path.join(straight, 'ckpt.pt'), weights_only=True)
    ckpt_b = torch.load(os.path.join(split, 'ckpt.pt'), weights_only=True)
    assert all(torch.equal(ckpt_a['model'][k], ckpt_b['model'][k]) for k in ckpt_a['model'])
    groups = ckpt_b['optimizer']['param_groups']
    hidden = [g for g in groups if g.get('lr_scale', 1.0) != 1.0]
    assert len(hidden) == 1 and len(hidden[0]['params']) == 8  # 2 layers x (qkv, out, fc, proj)
    plain = [g for g in groups if g.get('lr_scale', 1.0) == 1.0]
    assert hidden[0]['lr_scale'] == 0.25 and hidden[0]['weight_decay'] == pytest.approx(0.4)
    assert all(g['lr'] == pytest.approx(1e-3) for g in plain)  # the schedule's last lr, min_lr
    assert hidden[0]['lr'] == pytest.approx(1e-3 / 4)


def test_mup_table_finds_each_widths_best_and_the_transfer(tmp_path):
    """A hand-made sweep: under SP the best learning rate moves 2 steps, under μP none; a diverged run (None) is
    never a width's best; the transfer line prices width 128's best at width 512."""
    rows = []
    for param, best_at in (('sp', {128: -9, 512: -11}), ('mup', {128: -9, 512: -9})):
        for width, best in best_at.items():
            for lr in (-11, -10, -9, -8):
                loss = 2.0 + 0.1 * abs(lr - best) - (0.05 if width == 512 else 0.0)
                rows.append(dict(param=param, width=width, log2_lr=lr, seed=1337, iters=10, final_val=loss))
            rows.append(dict(param=param, width=width, log2_lr=-7, seed=1337, iters=10, final_val=None))
    basins = mup_basins(rows)
    assert basins['sp'][512][-7] == float('inf') and basins['mup'][512][-9] == pytest.approx(1.95)
    table = mup_table(rows, str(tmp_path / 'basins.png'), base_width=128)
    sp, mup = table.split('**mup**')
    assert 'best lr moves 2 step(s)' in sp and 'best lr moves 0 step(s)' in mup
    assert 'wider never worse at its best: True' in mup
    assert "width 128's best lr 2^-9 at width 512: 2.1500, against its own best (2^-11) 1.9500: +0.2000" in sp
    assert os.path.getsize(tmp_path / 'basins.png') > 1000
