"""MaskGIT family, image batches and the shared decoding helpers; a tiny train -> sample run for both image
families on a small Fashion-MNIST-shaped set built by prepare.py from IDX files written here."""
import gzip
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from conftest import run
from decoding import autoregressive_decode, cfg_logits, iterative_decode, masking_schedule, reveal_counts
from model import ModelConfig, build_model

K, GH, GW, NUM_CLASSES = 20, 3, 4, 5


def tiny_maskgit(**kw):
    args = dict(model_type='maskgit', n_layer=2, n_head=2, n_embd=32, codebook_size=K, grid_h=GH, grid_w=GW,
                cond_vocab_size=NUM_CLASSES, cond_len=1, block_size=GH * GW + 1)
    args.update(kw)
    torch.manual_seed(0)
    return build_model(ModelConfig(**args)).eval()


def test_mask_token_is_outside_the_codebook():
    model = tiny_maskgit()
    assert model.mask_id == K
    assert model.tok_emb.num_embeddings == K + 1 and model.head.out_features == K  # the head cannot emit it
    tokens = torch.randint(K, (2, GH * GW))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, :5] = True
    # what sits under the mask makes no difference: the model sees the mask token there
    other = tokens.clone()
    other[:, :5] = (other[:, :5] + 7) % K
    a, _, _ = model(tokens, mask, torch.zeros(2, 1, dtype=torch.long), compute_loss=False)
    b, _, _ = model(other, mask, torch.zeros(2, 1, dtype=torch.long), compute_loss=False)
    assert torch.equal(a, b)


def test_loss_only_on_masked_positions():
    model = tiny_maskgit(label_smoothing=0.0).train()
    tokens = torch.randint(K, (3, GH * GW))
    mask = torch.rand(3, GH * GW) < 0.4
    mask[:, 0] = True
    cond = torch.randint(NUM_CLASSES, (3, 1))
    logits, loss, metrics = model(tokens, mask, cond)
    logits.retain_grad()
    loss.backward()
    assert logits.grad[~mask].abs().max() == 0  # visible positions get no gradient at all
    assert logits.grad[mask].abs().max() > 0
    manual = torch.nn.functional.cross_entropy(logits[mask], tokens[mask])
    assert torch.allclose(loss, manual)
    assert abs(loss.item() - math.log(K)) < 0.3 and 'masked_acc' in metrics


@pytest.mark.parametrize('schedule', ['cosine', 'linear'])
@pytest.mark.parametrize('L,steps', [(49, 8), (49, 4), (49, 16), (12, 12), (256, 8), (5, 8)])
def test_reveal_counts_sum_to_grid(schedule, L, steps):
    counts = reveal_counts(torch.tensor([L, L // 2, 1]), steps, schedule)  # (steps, B)
    assert counts.shape == (steps, 3)
    assert counts.sum(0).tolist() == [L, L // 2, 1]
    for b, n in enumerate([L, L // 2, 1]):  # at least one per step while tokens remain
        remaining = n - torch.cumsum(counts[:, b], 0) + counts[:, b]
        assert ((counts[:, b] >= 1) | (remaining == 0)).all()
    if schedule == 'cosine' and steps <= L:  # cosine reveals few tokens first and many last
        assert counts[0, 0] <= counts[-1, 0]


def test_masking_schedule_ends():
    for name in ('cosine', 'linear'):
        assert masking_schedule(name, 0.0) == 1.0 and abs(float(masking_schedule(name, 1.0))) < 1e-12


@pytest.mark.parametrize('scheme', ['maskgit', 'roar'])
def test_decoding_leaves_no_masked_token(scheme):
    model = tiny_maskgit()
    cond = torch.arange(4)[:, None] % NUM_CLASSES
    L = GH * GW

    def predict(tokens, mask, dropped):
        return model(tokens, mask, None if dropped else cond, compute_loss=False)[0]
    start = torch.full((4, L), K)  # the mask id everywhere; the mask decides what is unknown
    mask = torch.ones(4, L, dtype=torch.bool)
    mask[0, :6] = False  # a partly given grid: those tokens must survive
    start[0, :6] = torch.arange(6)
    gen = torch.Generator().manual_seed(0)
    tokens, left, history = iterative_decode(predict, start, mask, steps=5, scheme=scheme, cfg_scale=2.0,
                                             generator=gen, return_history=True)
    assert not left.any() and (tokens < K).all() and tokens.shape == (4, L)
    assert torch.equal(tokens[0, :6], torch.arange(6))
    expected = reveal_counts(mask.sum(1), 5).cumsum(0)
    for s, (tok, m) in enumerate(history):  # the schedule's count revealed each step, never changed again
        assert torch.equal(mask.sum(1) - m.sum(1), expected[s])
        assert torch.equal(tok[~m], tokens[~m])


def test_confidence_picks_most_likely_and_roar_differs():
    model = tiny_maskgit()
    cond = torch.arange(4)[:, None] % NUM_CLASSES
    predict = lambda t, m, d: model(t, m, cond, compute_loss=False)[0]
    start, mask = torch.zeros(4, GH * GW, dtype=torch.long), torch.ones(4, GH * GW, dtype=torch.bool)
    # no noise (greedy tokens, choice temperature 0): step 1 reveals exactly the most confident positions
    _, _, hist = iterative_decode(predict, start, mask, steps=4, temperature=0, choice_temperature=0.0,
                                  return_history=True)
    n = reveal_counts(mask.sum(1), 4)[0]
    top = predict(start, mask, False).softmax(-1).max(-1).values.argsort(dim=1, descending=True)
    for b in range(4):
        assert set((~hist[0][1][b]).nonzero().flatten().tolist()) == set(top[b, :n[b]].tolist())
    # the order noise is real noise (a NaN once made it a fixed order): ROAR's order changes with the seed
    orders = []
    for seed in (0, 1):
        _, _, h = iterative_decode(predict, start, mask, steps=4, scheme='roar', return_history=True,
                                   generator=torch.Generator().manual_seed(seed))
        orders.append(torch.stack([m for _, m in h]))
    assert not torch.equal(orders[0], orders[1])


def test_icdf_sampling_matches_multinomial():
    from decoding import sample_logits, sample_logits_icdf
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0]).expand(20000, 5)
    gen = torch.Generator().manual_seed(0)
    for kw in (dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(temperature=1.0, top_p=0.8)):
        fast = torch.bincount(sample_logits_icdf(logits, generator=gen, **kw), minlength=5).float() / 20000
        slow = torch.bincount(sample_logits(logits, generator=gen, **kw)[:, 0], minlength=5).float() / 20000
        assert (fast - slow).abs().max() < 0.015, (kw, fast, slow)
        assert ((fast > 0) == (slow > 0)).all()  # the same ids are filtered out


def test_cfg_scale_one_is_the_conditional_path():
    c, u = torch.randn(3, 7, 11), torch.randn(3, 7, 11)
    assert torch.equal(cfg_logits(c, u, 1.0), c)
    assert torch.allclose(cfg_logits(c, u, 0.0), u, atol=1e-6)
    assert torch.allclose(cfg_logits(c, u, 3.0), u + 3.0 * (c - u), atol=1e-5)
    # the whole decoder: scale 1 gives exactly what plain conditional decoding gives, and never asks for the
    # unconditional logits
    model = tiny_maskgit()
    cond = torch.arange(3)[:, None]
    asked = []

    def predict(tokens, mask, dropped):
        asked.append(dropped)
        return model(tokens, mask, None if dropped else cond, compute_loss=False)[0]
    start, mask = torch.zeros(3, GH * GW, dtype=torch.long), torch.ones(3, GH * GW, dtype=torch.bool)
    a, _ = iterative_decode(predict, start, mask, steps=4, cfg_scale=1.0, generator=torch.Generator().manual_seed(1))
    assert asked == [False] * 4
    b, _ = iterative_decode(lambda t, m, d: model(t, m, cond, compute_loss=False)[0], start, mask, steps=4,
                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_autoregressive_decode_cache_matches_uncached():
    torch.manual_seed(0)
    gpt = build_model(ModelConfig(model_type='gpt', n_layer=2, n_head=2, n_embd=32, block_size=GH * GW,
                                  vocab_size=K + NUM_CLASSES + 1)).eval()
    prefix = (K + torch.arange(3))[:, None]
    uncond = torch.full_like(prefix, K + NUM_CLASSES)
    for scale in (1.0, 2.5):
        fast = autoregressive_decode(gpt, prefix, GH * GW, vocab_limit=K, temperature=0, cfg_scale=scale,
                                     uncond_prefix=uncond, kv_cache=True)
        slow = autoregressive_decode(gpt, prefix, GH * GW, vocab_limit=K, temperature=0, cfg_scale=scale,
                                     uncond_prefix=uncond, kv_cache=False)
        assert torch.equal(fast, slow) and fast.shape == (3, GH * GW) and (fast < K).all()
    # scale 1 is plain greedy decoding of the conditional model
    plain = gpt.generate(prefix, GH * GW, temperature=0, kv_cache=False)[:, 1:]
    mine = autoregressive_decode(gpt, prefix, GH * GW, temperature=0)
    assert torch.equal(plain, mine)

# -----------------------------------------------------------------------------
# data: a small Fashion-MNIST-shaped set through prepare.py


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def tiny_images(data_root, tmp_path_factory):
    """600 train / 120 test 28x28 images: class c is a bright square at a class-dependent place, plus noise."""
    src = tmp_path_factory.mktemp('idx')
    rng = np.random.default_rng(0)
    for split, n in (('train', 600), ('t10k', 120)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(labels):
            r, k = divmod(int(c), 5)
            images[i, 4 + 10 * r:12 + 10 * r, 1 + 5 * k:7 + 5 * k] = 230
        write_idx(src / f'{split}-images-idx3-ubyte.gz', images)
        write_idx(src / f'{split}-labels-idx1-ubyte.gz', labels)
    run([sys.executable, 'prepare.py', 'fashion_mnist', f'--input={src}', '--name=tiny_fmnist', '--tokenizer_seconds=8'],
        env_extra={'NANO4M_DATA': data_root})
    return 'tiny_fmnist'


def test_prepare_fashion_mnist_layout(tiny_images, data_root):
    d = os.path.join(data_root, tiny_images)
    meta = json.load(open(os.path.join(d, 'meta.json')))
    assert meta['kind'] == 'image' and meta['grid'] == [7, 7] and meta['num_classes'] == 10
    tokens = np.load(os.path.join(d, 'train_tokens.npy'))
    assert tokens.dtype == np.int16 and tokens.shape == (500, 49) and tokens.max() < meta['codebook_size']
    assert np.load(os.path.join(d, 'test_images.npy')).shape == (120, 28, 28)
    from data import decode_image_tokens
    images = decode_image_tokens(tiny_images, tokens[:4])
    assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8


@pytest.mark.parametrize('family', ['maskgit', 'gpt'])
def test_image_batches(tiny_images, family):
    from data import ImageTokenData
    data = ImageTokenData(tiny_images, family, 'cosine', cond_drop=0.3)
    gen = torch.Generator().manual_seed(3)
    batch = data.get_batch('train', 64, gen)
    if family == 'gpt':
        idx, targets = batch['idx'], batch['targets']
        assert idx.shape == targets.shape == (64, 49)
        K = data.meta['codebook_size']
        assert (idx[:, 0] >= K).all() and torch.equal(idx[:, 1:], targets[:, :-1])  # class first, then raster
        assert data.model_args['vocab_size'] == K + 10 + 1
    else:
        # exactly ceil(cos(pi/2 r) * L) masked per sample, r each sample's third keyed uniform (after the index and
        # the drop draw), under the one key the batch takes from the generator
        from masking import batch_key, keyed_uniform, sample_seeds
        key = batch_key(torch.Generator().manual_seed(3))
        r = keyed_uniform(sample_seeds(key, torch.arange(64)), 0, 3)[:, 2].float()
        expected = torch.ceil(torch.cos(0.5 * math.pi * r) * 49).long().clamp(1, 49)
        assert torch.equal(batch['mask'].sum(1), expected)
        assert batch['cond'].shape == (64, 1) and (batch['cond'] <= 10).all()
        assert (batch['cond'] == 10).any()  # some conditions dropped to 'no class'
        uni = ImageTokenData(tiny_images, family, 'uniform', cond_drop=0.0).get_batch('train', 256, gen)['mask'].sum(1)
        assert uni.min() >= 1 and uni.max() <= 49 and (uni == 49).any()
    # 2 ranks x 32 see exactly what 1 rank x 64 sees
    halves = [data.get_batch('train', 32, torch.Generator().manual_seed(3), rank=r, world_size=2) for r in (0, 1)]
    for key in batch:
        assert torch.equal(torch.cat([h[key] for h in halves]), batch[key])


TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--batch_size=16', '--eval_iters=2', '--log_interval=5',
        '--device=cpu', '--max_iters=20', '--eval_interval=20', '--warmup_iters=2', '--learning_rate=3e-3']


def test_two_ranks_train_exactly_like_one_rank_with_twice_the_batch(tiny_images, data_root, tmp_path):
    """MaskGIT's loss is a mean over masked tokens, whose number differs from sample to sample."""
    from test_fourm import ddp_matches_one_rank
    args = [sys.executable, 'train.py', 'config/fashion_mnist_maskgit_cpu.py', f'--dataset={tiny_images}',
            *[a for a in TINY if not a.startswith(('--batch_size', '--max_iters', '--eval_interval'))]]
    ddp_matches_one_rank(str(tmp_path), args, {'NANO4M_DATA': data_root}, batch_size=4)


@pytest.mark.parametrize('family,mode', [('maskgit', 'maskgit'), ('gpt', 'ar')])
def test_train_then_sample(tiny_images, data_root, tmp_path, family, mode):
    out = str(tmp_path / family)
    env = {'NANO4M_DATA': data_root}
    result = run([sys.executable, 'train.py', f'config/fashion_mnist_{family}_cpu.py', f'--out_dir={out}',
                  f'--dataset={tiny_images}', *TINY], env_extra=env)
    assert 'step 20: train loss' in result.stdout
    png = str(tmp_path / 'samples.png')
    extra = ['--steps=4', '--return_history=True', '--cfg_scale=2.0'] if mode == 'maskgit' else ['--cfg_scale=2.0']
    result = run([sys.executable, 'sample.py', f'--out_dir={out}', f'--mode={mode}', '--num_samples=3',
                  f'--image_out={png}', *extra], env_extra=env)
    from PIL import Image
    img = Image.open(png)
    assert img.size[1] > img.size[0]  # 10 rows (classes) of 3
    if mode == 'maskgit':
        assert os.path.exists(png.replace('.png', '_history.png'))
    wrong = run([sys.executable, 'sample.py', f'--out_dir={out}', f'--mode={"ar" if mode == "maskgit" else "maskgit"}'],
                env_extra=env, check=False)
    assert wrong.returncode != 0 and f'--mode={mode}' in wrong.stderr
