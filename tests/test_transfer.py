"""train.py --init_from=<out_dir>: a fine-tune from another run's weights, including a 4M trained on fewer
modalities (FourM.load_pretrained moves each modality's rows to where it sits in the larger model)."""
import json
import math
import os
import sys

import pytest
import torch

from conftest import run
from test_fourm import train_args, write_synthetic

# ---------------------------------------------------------------------------------------------------------------
# FourM.load_pretrained

SPECS = {  # two FSQ modalities (digit rows), a plain image and a sequence; x is the new one, with its own levels
    'a': {'name': 'a', 'kind': 'image', 'vocab_size': 6, 'num_tokens': 4, 'grid': [2, 2], 'levels': [2, 3]},
    'b': {'name': 'b', 'kind': 'image', 'vocab_size': 4, 'num_tokens': 4, 'grid': [2, 2], 'levels': [2, 2]},
    'c': {'name': 'c', 'kind': 'sequence', 'vocab_size': 7, 'num_tokens': 5, 'grid': [1, 5]},
    'x': {'name': 'x', 'kind': 'image', 'vocab_size': 9, 'num_tokens': 4, 'grid': [2, 2], 'levels': [3, 3]},
}


def fourm(names, seed, **kw):
    from model import ModelConfig, build_model
    torch.manual_seed(seed)
    config = dict(model_type='4m', n_layer=1, n_layer_dec=1, n_head=2, n_embd=16, block_size=16, grid_conv=2,
                  modalities=tuple(SPECS[n] for n in names))
    return build_model(ModelConfig(**{**config, **kw})).eval()


def random_batch(names, model, gen, B=4, n_in=6, n_tgt=5):
    """Random (modality, position, token) slots of the modalities `names`, with some padding; modality ids are the
    model's own."""
    def slots(n):
        which = torch.randint(len(names), (B, n), generator=gen)
        mod = torch.tensor([model.modality_id(name) for name in names])[which]
        pos = (torch.rand(B, n, generator=gen) * torch.tensor([SPECS[k]['num_tokens'] for k in names])[which]).long()
        tok = (torch.rand(B, n, generator=gen) * torch.tensor([SPECS[k]['vocab_size'] for k in names])[which]).long()
        pad = torch.rand(B, n, generator=gen) < 0.2
        return tok, pos, mod, pad
    enc_tokens, enc_pos, enc_mod, enc_pad = slots(n_in)
    targets, dec_pos, dec_mod, dec_pad = slots(n_tgt)
    return dict(enc_tokens=enc_tokens, enc_pos=enc_pos, enc_mod=enc_mod, enc_pad=enc_pad, dec_pos=dec_pos,
                dec_mod=dec_mod, dec_pad=dec_pad, targets=targets.masked_fill(dec_pad, -1))


def own_logits(model, batch, logits):
    """Each target's logits over its own modality's vocabulary, comparable across models: (B, N, max vocab)."""
    out = torch.zeros(*logits.shape[:2], 9)
    for b, n in zip(*torch.nonzero(~batch['dec_pad'], as_tuple=True)):
        m = int(batch['dec_mod'][b, n])
        offset, size = int(model.vocab_offset[m]), model.config.modalities[m]['vocab_size']
        out[b, n, :size] = logits[b, n, offset:offset + size]
    return out


@pytest.mark.parametrize('order', [('a', 'x', 'b', 'c'), ('c', 'b', 'x', 'a'), ('b', 'c', 'a')])
def test_load_pretrained_gives_the_small_models_logits(order):
    """A 4M on [a, b, c] loaded into one on `order` (x new, inserted before b so its digit rows shift b's, or
    a permutation) gives the same logits and loss on batches of a, b, c only. Catches row-offset bugs in tok_emb,
    head, digit_emb and the modality embeddings, and weights left at their init (all random, head included)."""
    small = fourm(['a', 'b', 'c'], seed=0)
    for p in small.parameters():  # the head and the last GridMixer conv start at zero: make every weight count
        torch.nn.init.normal_(p, std=0.3)
    small.digit_emb.weight.data[0].zero_()  # the zero row of ids without digits, as built
    large = fourm(order, seed=1)
    fresh = {k: v.clone() for k, v in large.state_dict().items()}
    new = large.load_pretrained(small.state_dict(), small.config.modalities)
    assert new == [n for n in order if n == 'x']
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = random_batch(['a', 'b', 'c'], small, gen)
        relabel = torch.tensor([large.modality_id(n) for n in small.names])  # small's modality ids -> large's
        moved = {**batch, 'enc_mod': relabel[batch['enc_mod']], 'dec_mod': relabel[batch['dec_mod']]}
        with torch.no_grad():
            logits_s, loss_s, _ = small(**batch)
            logits_l, loss_l, _ = large(**moved)
        assert torch.allclose(own_logits(small, batch, logits_s), own_logits(large, moved, logits_l), atol=1e-5, rtol=0)
        assert abs(loss_s.item() - loss_l.item()) < 1e-5
    if 'x' in order:  # x's rows keep their fresh init
        state, i = large.state_dict(), large.modality_id('x')
        tok = slice(int(large.vocab_offset[i]), int(large.vocab_offset[i]) + SPECS['x']['vocab_size'])
        digit_rows = large.digit_ids[tok].unique()  # x's digit_emb rows (x has levels, so no zero row among them)
        for key, rows in (('tok_emb.weight', tok), ('head.weight', tok), ('enc_mod_emb.weight', i),
                          ('dec_mod_emb.weight', i), ('digit_emb.weight', digit_rows)):
            assert torch.equal(state[key][rows], fresh[key][rows]), key
        assert len(digit_rows) == 6 and fresh['head.weight'][tok].eq(0).all()  # (the head starts at zero)


def test_load_pretrained_refuses_what_does_not_fit():
    small = fourm(['a', 'b', 'c'], seed=0)
    with pytest.raises(ValueError, match="'c'"):  # a saved modality the new model lacks
        fourm(['a', 'b'], seed=1).load_pretrained(small.state_dict(), small.config.modalities)
    retokenized = tuple({**m, 'vocab_size': 5} if m['name'] == 'b' else m for m in small.config.modalities)
    with pytest.raises(ValueError, match="'b' has vocab_size=5 in the checkpoint but vocab_size=4 here"):
        fourm(['a', 'b', 'c'], seed=1).load_pretrained(small.state_dict(), retokenized)
    with pytest.raises(ValueError, match=r"is \(\d+, 16\) in the checkpoint, \(\d+, 32\) in this model"):  # n_embd
        fourm(['a', 'b', 'c'], seed=1, n_embd=32).load_pretrained(small.state_dict(), small.config.modalities)

# ---------------------------------------------------------------------------------------------------------------
# train.py --init_from=<out_dir>


@pytest.fixture(scope='module')
def synth(data_root):
    return write_synthetic(data_root, name='transfer4m')


def fine_tune_args(out, *extra):
    return train_args(out, '--dataset=transfer4m', '--learning_rate=1e-2', '--dirichlet_alphas=(1.0,)', *extra)


@pytest.fixture(scope='module')
def source(synth, data_root, tmp_path_factory):
    """A 4M trained on rgb and caption only (depth held out)."""
    out = str(tmp_path_factory.mktemp('transfer') / 'source')
    run(fine_tune_args(out, "--train_modalities=('rgb','caption')", '--max_iters=40', '--eval_interval=40',
                       '--log_interval=40'), env_extra={'NANO4M_DATA': data_root})
    return out


def evals(out):
    return [e for e in map(json.loads, open(os.path.join(out, 'metrics.jsonl'))) if e['event'] == 'eval']


def test_fine_tune_with_a_new_modality_starts_from_the_source_weights(source, data_root, tmp_path):
    from common import load_model
    env = {'NANO4M_DATA': data_root}
    out, scratch = str(tmp_path / 'fine'), str(tmp_path / 'scratch')
    result = run(fine_tune_args(out, f'--init_from={source}', '--max_iters=4', '--eval_interval=4'), env_extra=env)
    assert f"init_from {source} (step 40): 2 of 3 modalities loaded; new: depth" in result.stdout
    assert 'iter 0: loss' in result.stdout and 'iter 40' not in result.stdout  # a fresh start, not a resume
    run(fine_tune_args(scratch, '--eval_only=True'), env_extra=env)
    first, base = evals(out)[0], evals(scratch)[0]  # step 0, on the same eval batches
    assert first['iter'] == 0 and abs(first['lr'] - 1e-2 / 3) < 1e-9  # the warm-up's first lr (warmup_iters=2)
    # the source learned the caption (1.29 after its 40 steps); a scratch model predicts uniformly (log 13)
    assert first['val/loss_caption'] < base['val/loss_caption'] - 0.5
    # depth is new: its head rows are still zero (uniform over 8 tokens), not another modality's
    assert abs(first['val/loss_depth'] - math.log(8)) < 1e-4 and abs(base['val/loss_depth'] - math.log(8)) < 1e-4
    # a checkpoint of the fine-tune's own: iteration, best val loss and optimizer all started fresh
    model, ckpt = load_model(out)
    assert model.names == ['rgb', 'depth', 'caption'] and ckpt['config']['init_from'] == source
    assert ckpt['iter_num'] == 4 and ckpt['best_val_loss'] == min(e['val/loss'] for e in evals(out))
    assert all(int(s['step']) == 4 for s in ckpt['optimizer']['state'].values())


@pytest.mark.parametrize('extra, expected', [
    (['--n_embd=48'], "has n_embd=32 but this config asks for 48: use the source run's architecture (--n_embd=32)"),
    (["--train_modalities=('rgb','depth')"], "was trained on caption, which this run's train_modalities ('rgb', "
                                             "'depth') leave out: every modality of the source must take part "
                                             "(--train_modalities=\"('rgb','depth','caption')\")"),
])
def test_incompatible_source_is_a_one_line_error(source, data_root, tmp_path, extra, expected):
    r = run(fine_tune_args(str(tmp_path / 'x'), f'--init_from={source}', *extra), env_extra={'NANO4M_DATA': data_root},
            check=False)
    assert r.returncode != 0 and r.stderr.strip() == f"init_from error: {source} {expected}"


def test_retokenized_modality_and_missing_checkpoint_are_one_line_errors(source, data_root, tmp_path):
    """The source's rgb had another vocabulary (a retokenized modality: its rows mean other codes now), and a
    --init_from without a ckpt.pt (a typo, or a run not trained yet)."""
    ckpt = torch.load(os.path.join(source, 'ckpt.pt'), weights_only=True)
    ckpt['model_config']['modalities'] = tuple({**m, 'vocab_size': 16} if m['name'] == 'rgb' else m
                                               for m in ckpt['model_config']['modalities'])
    os.makedirs(tmp_path / 'retok')
    torch.save(ckpt, tmp_path / 'retok' / 'ckpt.pt')
    env = {'NANO4M_DATA': data_root}
    r = run(fine_tune_args(str(tmp_path / 'x'), f'--init_from={tmp_path / "retok"}'), env_extra=env, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith('init_from error:')
    assert "'rgb' has vocab_size=16 in the checkpoint but vocab_size=8 here" in lines[0]
    assert '--init_from=scratch' in lines[0]
    missing = str(tmp_path / 'not_trained')
    r = run(fine_tune_args(str(tmp_path / 'x'), f'--init_from={missing}'), env_extra=env, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and 'ckpt.pt does not exist' in lines[0]
    assert f'python train.py <config> --out_dir={missing}' in lines[0]
