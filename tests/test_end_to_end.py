"""Tests meant to fail on a plausible bug: stop-token early stopping, exact 4m resume, eval.py --mode=4m end to
end, dec_attn='all' (unit and end to end), and FLOPs per token against a count by hand."""
import json
import os
import re
import sys

import pytest
import torch

from conftest import run
from test_fourm import synth, train_args  # noqa: F401  (synth is a fixture)


class StubCausal:
    """A causal 'model' whose greedy choice is scripted per row and step: script[row][step]."""

    def __init__(self, script, prompt_len):
        self.script, self.prompt_len, self.calls = script, prompt_len, 0
        self.config = type('C', (), {'block_size': 64})()

    def __call__(self, idx, kv_cache=None):
        self.calls += 1
        step = idx.size(1) - self.prompt_len
        logits = torch.zeros(idx.size(0), idx.size(1), 10)
        for r, row in enumerate(self.script):
            logits[r, -1, row[step]] = 5.0
        return logits, None, {}


def test_stop_token_freezes_a_row_and_ends_when_all_stopped():
    from decoding import generate_causal
    # stop token 0: row 0 stops at step 1 and would go on with 5s, row 1 stops at step 3
    stub = StubCausal([[3, 0, 5, 5, 5, 5, 5, 5], [4, 4, 4, 0, 6, 6, 6, 6]], prompt_len=2)
    out = generate_causal(stub, torch.ones(2, 2, dtype=torch.long), 8, temperature=0, stop_token=0, kv_cache=False)
    assert out[:, 2:].tolist() == [[3, 0, 0, 0], [4, 4, 4, 0]]  # bug caught: a stopped row keeps generating (5s)
    assert stub.calls == 4  # bug caught: generation runs all 8 steps after every row stopped
    # a row that never stops keeps the others going, to max_new_tokens
    stub = StubCausal([[3, 0, 5, 5, 5], [4, 4, 4, 4, 4]], prompt_len=2)
    out = generate_causal(stub, torch.ones(2, 2, dtype=torch.long), 5, temperature=0, stop_token=0, kv_cache=False)
    assert out[:, 2:].tolist() == [[3, 0, 0, 0, 0], [4, 4, 4, 4, 4]]  # bug caught: stopping on the first row's stop


def test_gpt_flops_per_token_by_hand():
    from model import ModelConfig, build_model, flops_per_token
    V, T, L, C = 50, 16, 2, 32
    model = build_model(ModelConfig(model_type='gpt', n_layer=L, n_head=2, n_embd=C, vocab_size=V, block_size=T,
                                    bias=False))
    # tied embedding/head V*C; per block: 2 norms (C each), qkv 3C*C, out C*C, fc 4C*C, proj 4C*C; final norm C.
    # position embeddings (T*C) are lookups, not matmuls: not in N
    N = V * C + L * (2 * C + 3 * C * C + C * C + 4 * C * C + 4 * C * C) + C
    assert N == 26336
    # bug caught: counting pos_emb, forgetting the tied head, or attention as 6*L*C*T
    assert flops_per_token(model, T) == 6 * N + 12 * L * C * T


def test_fourm_flops_per_token_by_hand():
    from model import ModelConfig, build_model, flops_per_token
    C, L, Ld = 32, 2, 1
    mods = [{'name': 'a', 'num_tokens': 4, 'vocab_size': 8, 'grid': [2, 2], 'kind': 'image'},
            {'name': 'b', 'num_tokens': 3, 'vocab_size': 5, 'grid': [1, 3], 'kind': 'sequence'}]
    model = build_model(ModelConfig(model_type='4m', n_layer=L, n_layer_dec=Ld, n_head=2, n_embd=C, modalities=mods))
    # with biases: an encoder block = 2 norms (2C each) + qkv (3C^2+3C) + out (C^2+C) + fc (4C^2+4C) + proj (4C^2+C)
    enc_block = 2 * 2 * C + 3 * C * C + 3 * C + C * C + C + 4 * C * C + 4 * C + 4 * C * C + C
    # a decoder block adds a norm (2C), cross q (C^2+C), kv (2C^2+2C) and out (C^2+C)
    kv = 2 * C * C + 2 * C
    dec_block = enc_block + 2 * C + (C * C + C) + kv + (C * C + C)
    head = (8 + 5) * C  # one head over both vocabularies, no bias
    enc = L * enc_block + (C * C + C) + Ld * kv  # encoder, context_proj, and the decoder's kv projections of inputs
    dec = Ld * dec_block + head - Ld * kv
    T = 16
    n_in = n_tgt = T / 2
    attention = 12 * C * (L * n_in * n_in + Ld * n_tgt * (n_tgt + n_in))
    # bug caught: 6N over all parameters for every token (~2x), or the decoder kv projection counted per target
    assert flops_per_token(model, T) == pytest.approx((6 * (enc * n_in + dec * n_tgt) + attention) / T)
    assert flops_per_token(model, T) < 6 * sum(p.numel() for p in model.parameters()) + 12 * (L + Ld) * C * T


def test_dec_attn_all_sees_other_targets_but_ar_keys_stay_causal():
    from model import decoder_attention
    # targets: modality 0 (image) at positions 0, 1; modality 1 (autoregressive) at positions 0, 1, 2
    dec_mod = torch.tensor([[0, 0, 1, 1, 1]])
    dec_pos = torch.tensor([[0, 1, 0, 1, 2]])
    pad = torch.zeros(1, 5, dtype=torch.bool)
    is_ar = torch.tensor([False, True])
    m = decoder_attention(dec_mod, dec_pos, pad, is_ar, dec_attn='modality')[0]
    a = decoder_attention(dec_mod, dec_pos, pad, is_ar, dec_attn='all')[0]
    assert not m[0, 1:].tolist()[1:].count(True) and m[0, 1]  # modality: image query sees its own modality only
    assert a[0, 1] and not a[0, 2:].any()  # all: image query sees image keys; AR keys hidden from other modalities
    assert a[2, 0] and a[2, 1]  # all: an AR query sees the image targets (bug caught: 'all' ignored)
    assert a[3, 2] and a[3, 3] and not a[3, 4]  # AR keys causal within the sequence (bug caught: peeking ahead)
    pad[0, 1] = True
    assert not decoder_attention(dec_mod, dec_pos, pad, is_ar, dec_attn='all')[0][:, 1].any()  # padding never seen


def events(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, 'metrics.jsonl'))]


def test_fourm_resume_is_exact(synth, data_root, tmp_path):
    env = {'NANO4M_DATA': data_root}
    common = ['--deterministic=True', '--log_interval=1', '--eval_interval=4', '--lr_decay_iters=8']
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    run(train_args(straight, *common, '--max_iters=8'), env_extra=env)
    run(train_args(split, *common, '--max_iters=4'), env_extra=env)
    run(train_args(split, *common, '--max_iters=8', '--init_from=resume'), env_extra=env)
    a = {e['iter']: e['loss'] for e in events(straight) if e['event'] == 'train'}
    b = {e['iter']: e['loss'] for e in events(split) if e['event'] == 'train'}
    assert sorted(a) == sorted(b) and max(a) >= 7, (sorted(a), sorted(b))
    # bug caught: the masking generator / data RNG / optimizer state not restored -> second-half losses differ
    assert all(a[i] == b[i] for i in a), [(i, a[i], b[i]) for i in a if a[i] != b[i]]
    wa = torch.load(os.path.join(straight, 'ckpt.pt'), weights_only=True)['model']
    wb = torch.load(os.path.join(split, 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_dec_attn_all_trains_and_chains(synth, data_root, tmp_path):
    out = str(tmp_path / 'all')
    env = {'NANO4M_DATA': data_root}
    run(train_args(out, '--max_iters=4', '--dec_attn=all'), env_extra=env)
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['model_config']['dec_attn'] == 'all'  # bug caught: the option not saved, resumed as 'modality'
    result = run([sys.executable, 'sample.py', '--mode=chain', f'--out_dir={out}', '--device=cpu', '--num_samples=2',
                  '--chain=caption->rgb->depth@steps=2'], env_extra=env)
    assert len([f for f in os.listdir(os.path.join(out, 'chain')) if f.endswith('.png')]) == 2, result.stdout


@pytest.fixture(scope='module')
def tiny_clevr_e2e(data_root):
    run([sys.executable, 'prepare.py', 'clevr', '--num_train=48', '--num_val=8', '--tokenizer_seconds=1',
         '--name=tiny_clevr_e2e'], env_extra={'NANO4M_DATA': data_root})
    return 'tiny_clevr_e2e'


def test_eval_4m_end_to_end(tiny_clevr_e2e, data_root, tmp_path):
    out = str(tmp_path / 'clevr4m')
    env = {'NANO4M_DATA': data_root}
    run([sys.executable, 'train.py', 'config/nano4m_cpu.py', f'--dataset={tiny_clevr_e2e}', f'--out_dir={out}',
         '--n_layer=1', '--n_layer_dec=1', '--n_head=2', '--n_embd=32', '--batch_size=4', '--eval_iters=1',
         '--max_iters=3', '--eval_interval=3', '--log_interval=1', '--dtype=float32', '--compile=False',
         '--device=cpu', '--warmup_iters=1'], env_extra=env)
    result = run([sys.executable, 'eval.py', '--mode=4m', f'--out_dir={out}', '--num_scenes=8'], env_extra=env)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if 'val scenes' in line)
    assert '8 val scenes' in header and 'prior' in header and 'bound' in header
    miou = next(line for line in lines if line.startswith('rgb -> semseg pixel mIoU'))
    absrel = next(line for line in lines if line.startswith('rgb -> depth pixel abs-rel'))
    m = [float(x) for x in re.findall(r'\d+\.\d+', miou.split(')')[-1])]
    d = [float(x) for x in re.findall(r'\d+\.\d+', absrel.split(')')[-1])]
    assert len(m) == 3 and all(0 <= x <= 1 for x in m), miou  # model, prior, bound
    assert len(d) == 3 and all(0 <= x < 10 for x in d), absrel
    # the token-grid bound decodes the ground-truth tokens: it beats the untrained model and the prior
    assert m[2] >= max(m[0], m[1]) - 1e-6 and d[2] <= min(d[0], d[1]) + 1e-6, (miou, absrel)
    assert any(line.strip().startswith('semseg IoU,') for line in lines)
