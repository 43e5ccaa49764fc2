"""The 4m family: multimodal masking invariants, padding safety, a tiny train -> chain run, deterministic chained
generation, and a 2-process torchrun step. Runs on a small synthetic multimodal dataset (no rendering)."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from conftest import run

WORDS = ['<pad>', '<eos>'] + [f'w{i}' for i in range(8)]


def save_multimodal(root, name, splits, image_vocab):
    """splits {split: {'rgb': (n, 16), 'depth': (n, 16), 'caption': (n, 6)}} -> data/<name>/ with its meta.json: two
    4x4 image modalities of vocabulary image_vocab and a 6-word caption."""
    d = os.path.join(root, name)
    for split, arrays in splits.items():
        os.makedirs(os.path.join(d, split), exist_ok=True)
        for mod, arr in arrays.items():
            np.save(os.path.join(d, split, f'{mod}.npy'), arr.astype(np.int16))
    image = {'kind': 'image', 'num_tokens': 16, 'vocab_size': image_vocab, 'grid': [4, 4], 'tokenizer': None}
    meta = {'kind': 'multimodal', 'train_scenes': len(splits['train']['rgb']), 'val_scenes': len(splits['val']['rgb']),
            'modalities': {'rgb': image, 'depth': image, 'caption': {
                'kind': 'sequence', 'num_tokens': 6, 'vocab_size': len(WORDS), 'grid': [1, 6], 'words': WORDS}}}
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    return name


def write_synthetic(root, name='synth4m', num_train=512, num_val=64):
    """Three aligned modalities with learnable relations: 'rgb' a random 4x4 grid (vocab 8), 'depth' = rgb + 1
    mod 8, and a 'caption' of 6 words naming the first 5 rgb tokens, then <eos>."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (('train', num_train), ('val', num_val)):
        rgb = rng.integers(0, 8, (n, 16))
        caption = np.concatenate([rgb[:, :5] + 2, np.ones((n, 1), dtype=np.int64)], axis=1)
        splits[split] = {'rgb': rgb, 'depth': (rgb + 1) % 8, 'caption': caption}
    return save_multimodal(root, name, splits, image_vocab=8)


@pytest.fixture(scope='module')
def synth(data_root):
    return write_synthetic(data_root)


def make_data(name, **config):
    from data import FourMData
    return FourMData(name, config)


def test_masking_budgets_disjoint_and_padding(synth):
    data = make_data(synth, input_budget=(1, 20), target_budget=(3, 12), dirichlet_alphas=(1.0, 0.2))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        b = data.get_batch('train', 16, gen)
        assert b['enc_tokens'].shape == (16, 20) and b['targets'].shape == (16, 12)  # padded to the largest budget
        n_in, n_tgt = (~b['enc_pad']).sum(1), (~b['dec_pad']).sum(1)
        assert ((1 <= n_in) & (n_in <= 20)).all() and ((3 <= n_tgt) & (n_tgt <= 12)).all()
        assert ((b['targets'] == -1) == b['dec_pad']).all()
        for i in range(16):
            ins = {(int(m), int(p)) for m, p, pad in zip(b['enc_mod'][i], b['enc_pos'][i], b['enc_pad'][i]) if not pad}
            tgts = {(int(m), int(p)) for m, p, pad in zip(b['dec_mod'][i], b['dec_pos'][i], b['dec_pad'][i]) if not pad}
            assert len(ins) == n_in[i] and len(tgts) == n_tgt[i]  # no position twice
            assert not ins & tgts  # inputs and targets disjoint


def write_coded(root, name='coded4m', num_train=40):
    """Tokens that say where they come from: image token = 64 * scene + 16 * modality + position (vocab 4096, so
    each is unique), and a caption per scene of 1 + scene % 5 words (word ids from the scene and position), then
    <eos> and <pad>. A batch token can then be checked against its (scene, modality, position)."""
    s = np.arange(num_train)[:, None]
    p = np.arange(16)[None]
    caption = np.zeros((num_train, 6), dtype=np.int64)  # <pad>
    for i in range(num_train):
        n = 1 + i % 5
        caption[i, :n] = [2 + (3 * i + j) % 8 for j in range(n)]
        caption[i, n] = 1  # <eos>
    arrays = {'rgb': 64 * s + p, 'depth': 64 * s + 16 + p, 'caption': caption}
    save_multimodal(root, name, {'train': arrays, 'val': arrays}, image_vocab=4096)
    return name, caption


@pytest.fixture(scope='module')
def coded(data_root):
    return write_coded(data_root)


@pytest.mark.parametrize('seq_masking', ['random', 'span'])
def test_batch_holds_the_right_tokens(coded, seq_masking):
    """Every input and target token is the scene row's token at its (modality, position); all tokens of a sample
    come from one scene; span-masked captions reconstruct that scene's caption."""
    from masking import span_reconstruct
    name, caption = coded
    data = make_data(name, seq_masking=seq_masking, input_budget=(4, 12), target_budget=(4, 12), input_drop=0.2,
                     dirichlet_alphas=(0.3, 1.0, (1.0, 1.0, 0.0)))
    cap = data.names.index('caption')
    b = data.get_batch('train', 64, 123)
    scenes_seen, reconstructed = set(), 0
    for i in range(64):
        real_in, real_tgt = ~b['enc_pad'][i], ~b['dec_pad'][i]
        mods = torch.cat([b['enc_mod'][i][real_in], b['dec_mod'][i][real_tgt]])
        pos = torch.cat([b['enc_pos'][i][real_in], b['dec_pos'][i][real_tgt]])
        tok = torch.cat([b['enc_tokens'][i][real_in], b['targets'][i][real_tgt]])
        image = mods != cap
        assert image.any()  # (the caption can hold at most 6 of the >= 4 + 4 tokens)
        scene = int(tok[image][0]) // 64
        scenes_seen.add(scene)
        assert (tok[image] == 64 * scene + 16 * mods[image] + pos[image]).all()  # right scene, modality, position
        if seq_masking == 'random':
            assert (tok[~image] == torch.from_numpy(caption[scene])[pos[~image]]).all()
        else:
            inp = b['enc_tokens'][i][real_in & (b['enc_mod'][i] == cap)].tolist()
            tgt = b['targets'][i][real_tgt & (b['dec_mod'][i] == cap)].tolist()
            first_sentinel = data.specs[cap]['vocab_size'] - data.specs[cap]['num_sentinels']
            if inp and tgt and inp[-1] == 1 and tgt[-1] == 1:  # neither cut by its budget
                real = caption[scene][:list(caption[scene]).index(1)].tolist()
                assert span_reconstruct(inp, tgt, first_sentinel, 1) == real
                reconstructed += 1
    assert len(scenes_seen) > 10  # scenes are drawn, not one scene for all
    if seq_masking == 'span':
        assert reconstructed > 0


def text_dataset(root, name='tinytext', n=5000):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for split in ('train', 'val'):
        (np.arange(n) % 65000).astype(np.uint16).tofile(os.path.join(d, f'{split}.bin'))
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump({'kind': 'text', 'tokenizer': 'char', 'chars': [], 'vocab_size': 65000, 'train_tokens': n,
                   'val_tokens': n}, f)
    return name


def image_dataset(root, name='tinyimg', n=50):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        np.save(os.path.join(d, f'{split}_tokens.npy'), rng.integers(0, 16, (n, 16)).astype(np.int16))
        np.save(os.path.join(d, f'{split}_labels.npy'), rng.integers(0, 10, n))
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump({'kind': 'image', 'grid': [4, 4], 'codebook_size': 16, 'num_classes': 10,
                   'tokenizer': {'type': 'fsq', 'file': 'none.pt'}}, f)
    return name


@pytest.mark.parametrize('kind', ['4m', '4m_span', 'maskgit', 'gpt', 'text'])
def test_ranks_see_slices_of_one_global_batch(synth, data_root, kind):
    """world_size x b == 1 x (world_size b), for 2 and 8 ranks, with a generator or an int key; and each rank
    builds its own slice only, so the ranks' batches differ."""
    from data import ImageTokenData, TextData
    if kind.startswith('4m'):
        data = make_data(synth, input_budget=(1, 20), target_budget=(1, 20), input_drop=0.2,
                         seq_masking='span' if kind == '4m_span' else 'random')
    elif kind == 'text':
        data = TextData(text_dataset(data_root), block_size=8)
    else:
        data = ImageTokenData(image_dataset(data_root), kind, 'cosine', cond_drop=0.3)
    for world_size in (2, 8):
        for key in (lambda: torch.Generator().manual_seed(4), lambda: 12345):
            whole = data.get_batch('train', 3 * world_size, key())
            parts = [data.get_batch('train', 3, key(), rank=r, world_size=world_size) for r in range(world_size)]
            for k in whole:
                assert torch.equal(whole[k], torch.cat([p[k] for p in parts])), k
            first = next(iter(whole))
            assert not torch.equal(parts[0][first], parts[1][first])
    other = data.get_batch('train', 6, 12346)
    assert any(not torch.equal(other[k], whole[k][:6]) for k in other)  # another key, another batch


def test_input_drop_hands_the_budget_to_the_other_modalities(synth):
    """Fixed budgets: with input_drop, a sample's input budget goes to the modalities not dropped, so there is no
    input padding unless every modality is dropped (the unconditional case, about p^3 of the samples)."""
    data = make_data(synth, input_budget=(6, 6), target_budget=(6, 6), input_drop=0.5)  # 6: any modality holds it
    b = data.get_batch('train', 512, 7)
    n_in = (~b['enc_pad']).sum(1)
    assert set(n_in.tolist()) <= {0, 6}
    share = (n_in == 0).float().mean().item()
    assert 0.05 < share < 0.22  # 1/8 of the samples; dropping after the split would pad far more of them
    assert ((~b['dec_pad']).sum(1) == 6).all()  # targets are never dropped


def test_masking_distribution(synth):
    """Over many samples: a symmetric alpha gives equal mean input counts; a tiny alpha puts a sample's inputs in
    one modality; alpha 0 never gets tokens; Gamma and Dirichlet draws have the right means."""
    from masking import dirichlet_weights, GAMMA_CANDIDATES, keyed_uniform, log_gamma, sample_seeds
    K = 2 * GAMMA_CANDIDATES + 1
    data = make_data(synth, input_budget=(8, 8), target_budget=(4, 4), dirichlet_alphas=((1.0, 1.0, 0.0),))
    b = data.get_batch('train', 3000, 1)
    cap = data.names.index('caption')
    real = ~b['enc_pad']
    per_mod = torch.stack([((b['enc_mod'] == m) & real).sum(1).float() for m in range(3)], 1)
    assert abs(per_mod[:, 0].mean() - per_mod[:, 1].mean()) < 0.3 and per_mod[:, cap].sum() == 0
    assert per_mod[:, 0].std() > 1.5  # a Dirichlet split varies (an even split would give 4 and 4 every time)
    tiny = make_data(synth, input_budget=(6, 6), target_budget=(4, 4), dirichlet_alphas=(0.001,))  # 6: any one holds it
    b = tiny.get_batch('train', 1000, 2)
    mods_per_sample = [len(set(b['enc_mod'][i][~b['enc_pad'][i]].tolist())) for i in range(1000)]
    assert np.mean([n == 1 for n in mods_per_sample]) > 0.97
    seeds = sample_seeds(3, torch.arange(20000))
    for a in (0.05, 0.3, 1.0, 5.0):
        alpha = torch.full((20000, 1), a, dtype=torch.float64)
        g = log_gamma(alpha, keyed_uniform(seeds, int(a * 100), K).view(-1, 1, K)).exp()
        assert abs(g.mean().item() - a) < 4 * math.sqrt(a / 20000) and abs(g.var().item() - a) < 0.15 * a
    alpha = torch.tensor([[0.3, 1.0, 3.0]], dtype=torch.float64).expand(20000, 3)
    w = dirichlet_weights(alpha, keyed_uniform(seeds, 7, 3 * K).view(-1, 3, K))
    assert torch.allclose(w.sum(1), torch.ones(20000, dtype=torch.float64))
    assert torch.allclose(w.mean(0), alpha[0] / alpha[0].sum(), atol=0.01)


def test_split_budget():
    from masking import split_budget
    def split(budget, weights, available):
        n = len(budget)
        return split_budget(torch.tensor(budget), torch.tensor(weights, dtype=torch.float64),
                            torch.tensor(available), torch.rand(n, len(weights[0]))).tolist()
    assert split([10], [[1.0, 1.0, 0.0]], [[3, 20, 20]]) == [[3, 7, 0]]  # a full modality's share goes to the others
    assert split([30], [[1.0, 1.0, 0.0]], [[3, 20, 20]]) == [[3, 20, 7]]  # weight 0 takes only what no one else can
    assert split([12], [[1.0, 2.0, 3.0]], [[9, 9, 0]]) == [[4, 8, 0]]  # nothing available: nothing taken
    assert split([99], [[1.0, 1.0, 1.0]], [[2, 3, 4]]) == [[2, 3, 4]]  # more budget than tokens: all of them
    assert split([1], [[1.0, 1.0, 1.0]], [[0, 0, 0]]) == [[0, 0, 0]]
    torch.manual_seed(0)
    n, M = 2000, 5
    budget, avail = torch.randint(0, 40, (n,)), torch.randint(0, 12, (n, M))
    weights = torch.rand(n, M, dtype=torch.float64) * (torch.rand(n, M) > 0.3)
    counts = split_budget(budget, weights, avail, torch.rand(n, M))
    assert (counts <= avail).all() and (counts >= 0).all()
    assert torch.equal(counts.sum(1), torch.minimum(budget, avail.sum(1)))
    # where nothing is capped, every count is within one token of its exact proportional share
    free = (avail >= budget[:, None]).all(1) & (weights.sum(1) > 0)
    exact = budget[:, None] * weights / weights.sum(1, keepdim=True)
    assert ((counts - exact).abs()[free] < 1).all()


def test_span_batch_matches_the_scalar_reference():
    """span_mask_batch draws span masks as span_mask does (counts, number of spans, inside the real length), and
    span_corrupt_batch gives span_corrupt's input and target ids for the same masks."""
    from masking import (keyed_sort_keys, sample_seeds, span_corrupt, span_corrupt_batch, span_mask, span_mask_batch,
                         span_reconstruct)
    B, N, first_sentinel, eos = 3000, 20, 100, 1
    g = torch.Generator().manual_seed(0)
    length = torch.randint(0, N + 1, (B,), generator=g)
    k = (torch.rand(B, generator=g) * (length + 1)).long()
    seq = torch.randint(2, 50, (B, N), generator=g)
    mask = span_mask_batch(length, k, keyed_sort_keys(sample_seeds(5, torch.arange(B)), 0, 2 * N + 2), 4)
    inp, in_len, tgt, tgt_len = span_corrupt_batch(seq, mask, length, first_sentinel, eos)
    assert torch.equal(mask.sum(1), k) and not (mask & (torch.arange(N) >= length[:, None])).any()
    starts = (mask & ~torch.cat([torch.zeros(B, 1, dtype=torch.bool), mask[:, :-1]], 1)).sum(1)
    expected = torch.where(k > 0, torch.round(k / 3).clamp_min(1).long(), 0)
    expected = torch.minimum(expected, torch.minimum(torch.minimum(k, length - k + 1), torch.tensor(4)))
    assert torch.equal(starts, expected)  # as many spans as span_mask makes (spans never touch)
    for i in range(B):
        n = int(length[i])
        ref_inp, ref_tgt = span_corrupt(seq[i, :n].tolist(), mask[i, :n].numpy(), first_sentinel, eos)
        assert inp[i, :in_len[i]].tolist() == ref_inp and tgt[i, :tgt_len[i]].tolist() == ref_tgt
        assert span_reconstruct(ref_inp, ref_tgt, first_sentinel, eos) == seq[i, :n].tolist()
    # in distribution too: how often each position is masked, and how the spans are split, as in span_mask
    keys = keyed_sort_keys(sample_seeds(6, torch.arange(B)), 0, 2 * N + 2)
    batch = span_mask_batch(torch.full((B,), N), torch.full((B,), 7), keys, 4)
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(np.stack([span_mask(N, 7, rng, 4) for _ in range(B)]))
    assert ((batch.float().mean(0) - ref.float().mean(0)).abs() < 0.04).all()
    last = lambda m: (m.long().cumsum(1) * m).argmax(1).float()  # the last masked position
    assert abs(last(batch).mean() - last(ref).mean()) < 0.3 and abs(last(batch).std() - last(ref).std()) < 0.3


def test_keyed_randomness():
    from masking import batch_key, hash32, keyed_uniform, make_key, sample_seeds
    x = torch.arange(0, 2 ** 32, 2 ** 20 - 3)
    h = hash32(x)
    assert (h >= 0).all() and (h < 2 ** 32).all() and len(set(h.tolist())) == len(x)  # a bijection: no collisions
    assert hash32(12345) == int(hash32(torch.tensor(12345)))  # Python ints and tensors agree
    u = keyed_uniform(sample_seeds(make_key(1, 2, 3), torch.arange(4000)), 0, 5)
    assert (u >= 0).all() and (u < 1).all() and abs(u.mean() - 0.5) < 0.01
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05 and abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.05
    assert len({make_key(1, i, j) for i in range(50) for j in range(4)}) == 200
    assert batch_key(torch.Generator().manual_seed(0)) == batch_key(torch.Generator().manual_seed(0)) < 2 ** 62


def test_prefetcher_gives_the_batches_get_batch_gives(synth):
    from data import BatchPrefetcher
    from masking import make_key
    data = make_data(synth, input_budget=(1, 20), target_budget=(1, 20), seq_masking='span')
    keys = [make_key(0, i) for i in range(6)]
    for source in (keys, lambda i: keys[i]):
        pre = BatchPrefetcher(data, 'train', 4, source, rank=1, world_size=2, ahead=2)
        for key in keys:
            batch, direct = pre.next(), data.get_batch('train', 4, key, rank=1, world_size=2)
            assert all(torch.equal(batch[k], direct[k]) for k in direct)
        assert pre.wait >= 0 and pre.count == 6
        if source is keys:
            with pytest.raises(StopIteration):
                pre.next()
        pre.close()
    broken = BatchPrefetcher(data, 'nosuchsplit', 4, keys)
    with pytest.raises(FileNotFoundError):  # the thread's error reaches the caller
        broken.next()
    broken.close()


def test_dirichlet_alpha_to_zero_gives_modalities_nothing(synth):
    # alpha exactly 0 for caption: never an input nor a target
    data = make_data(synth, input_budget=(1, 30), target_budget=(1, 30), dirichlet_alphas=((1.0, 1.0, 0.0),))
    b = data.get_batch('train', 64, torch.Generator().manual_seed(2))
    cap = data.names.index('caption')
    assert not ((b['enc_mod'] == cap) & ~b['enc_pad']).any() and not ((b['dec_mod'] == cap) & ~b['dec_pad']).any()
    # alpha -> 0 for all: a budget that one modality can hold goes to exactly one modality
    data = make_data(synth, input_budget=(1, 3), target_budget=(1, 3), dirichlet_alphas=(1e-4,))
    b = data.get_batch('train', 64, torch.Generator().manual_seed(3))
    for i in range(64):
        assert len(set(b['enc_mod'][i][~b['enc_pad'][i]].tolist())) == 1
        assert len(set(b['dec_mod'][i][~b['dec_pad'][i]].tolist())) == 1


def test_global_batch_is_split_across_ranks(synth):
    data = make_data(synth, input_budget=(1, 20), target_budget=(1, 20))
    whole = data.get_batch('train', 8, torch.Generator().manual_seed(4))
    halves = [data.get_batch('train', 4, torch.Generator().manual_seed(4), rank=r, world_size=2) for r in (0, 1)]
    for k in whole:
        assert torch.equal(whole[k], torch.cat([h[k] for h in halves]))


def tiny_model(data, **kw):
    from model import ModelConfig, build_model
    torch.manual_seed(0)
    args = dict(model_type='4m', n_layer=2, n_layer_dec=2, n_head=2, n_embd=32, **data.model_args)
    args.update(kw)
    return build_model(ModelConfig(**args))


@pytest.mark.parametrize('grid_conv', [0, 2])
def test_padding_is_ignored_by_loss_and_attention(synth, grid_conv):
    data = make_data(synth, input_budget=(1, 10), target_budget=(1, 10))
    model = tiny_model(data, grid_conv=grid_conv).eval()
    zero_init = [model.head.weight] + ([model.grid_mixer.convs[-1].weight] if grid_conv else [])
    for p in zero_init:  # these start at zero; make the outputs depend on the inputs
        torch.nn.init.normal_(p, std=0.5)
    b = data.get_batch('train', 8, torch.Generator().manual_seed(5))
    b['enc_pad'][0, 1:] = True  # sample 0 sees a single input token
    b['dec_pad'][0, 1:] = True
    b['targets'][0, 1:] = -1
    logits, loss, metrics = model(**b)
    assert torch.isfinite(loss) and torch.isfinite(logits.logsumexp(-1)).all()  # no NaN anywhere, padding included
    # changing what sits in the padded slots changes nothing for the real tokens
    b2 = {k: v.clone() for k, v in b.items()}
    b2['enc_tokens'][b['enc_pad']] = 3
    b2['enc_pos'][b['enc_pad']] = 5
    b2['dec_pos'][b['dec_pad']] = 2
    logits2, loss2, _ = model(**b2)
    real = ~b['dec_pad']
    assert torch.allclose(logits[real], logits2[real], atol=1e-5) and torch.allclose(loss, loss2)
    # an unconditional sample (no visible token at all) is still finite
    b['enc_pad'][1] = True
    assert torch.isfinite(model(**b)[1])


def test_loss_is_mean_over_modalities_of_per_modality_means(synth):
    data = make_data(synth, input_budget=(5, 5), target_budget=(1, 20))
    model = tiny_model(data)
    b = data.get_batch('train', 8, torch.Generator().manual_seed(6))
    logits, loss, metrics = model(**b)
    per = [v for v in metrics.values() if torch.isfinite(v)]
    assert len(metrics) == 3 and abs(loss.item() - sum(per).item() / len(per)) < 1e-5
    # at init (zero head) each modality's loss is log of its own vocabulary size: per-modality softmax
    assert abs(metrics['loss_rgb'].item() - np.log(8)) < 1e-4


def test_grid_mixer_starts_as_a_no_op_and_stays_local(synth):
    """GridMixer (grid_conv) starts as the plain 4M (its last conv is zero); the visible tokens of the aligned
    image modalities are averaged per cell; after k 3x3 convs a token reaches only cells within k rows/columns."""
    from model import GridMixer
    data = make_data(synth, input_budget=(1, 10), target_budget=(1, 10))
    plain, mixed = tiny_model(data), tiny_model(data, grid_conv=2)
    assert (mixed.grid_cell[:, 0] >= 0).tolist() == [True, True, False]  # rgb, depth on the 4x4 grid; not the caption
    plain.load_state_dict({k: v for k, v in mixed.state_dict().items() if not k.startswith('grid_mixer')})
    b = data.get_batch('train', 4, torch.Generator().manual_seed(7))
    assert torch.equal(plain(**b)[0], mixed(**b)[0])
    torch.manual_seed(0)
    mixer = GridMixer(8, 2, (6, 6))
    torch.nn.init.normal_(mixer.convs[-1].weight)
    x = torch.randn(1, 3, 8)
    on = torch.tensor([[True, True, False]])
    pos = torch.tensor([[7, 7, 35]])  # two tokens on cell (1, 1), one off the grid
    out = mixer(x, on, pos)
    mean = mixer(((x[:, :1] + x[:, 1:2]) / 2), torch.tensor([[True]]), torch.tensor([[7]]))
    assert torch.allclose(out, mean, atol=1e-5)  # averaged per cell; the off-grid token counts for nothing
    reach = (out - mixer(x, on & False, pos)).abs().sum(-1).view(6, 6) > 0
    rows, cols = torch.nonzero(reach, as_tuple=True)
    assert rows.max() <= 3 and cols.max() <= 3 and reach[3, 3]  # (1, 1) + 2 cells at most


def test_fsq_codes_share_digit_embeddings():
    """An FSQ modality's ids map to one digit-embedding row per digit (mixed radix, first level fastest);
    other modalities add nothing, and codes sharing a digit share that row."""
    from model import ModelConfig, build_model
    mods = ({'name': 'rgb', 'kind': 'image', 'vocab_size': 6, 'num_tokens': 4, 'grid': [2, 2], 'levels': [2, 3]},
            {'name': 'semseg', 'kind': 'image', 'vocab_size': 3, 'num_tokens': 4, 'grid': [2, 2]})
    model = build_model(ModelConfig(model_type='4m', n_layer=1, n_head=2, n_embd=16, block_size=8, modalities=mods))
    # code 5 = digits (5 % 2, 5 // 2) = (1, 2): rows 1 + 1 and 1 + 2 + 2; semseg ids (6, 7, 8) use the zero row
    assert model.digit_ids[5].tolist() == [2, 5] and model.digit_ids[0].tolist() == [1, 3]
    assert model.digit_ids[6:].eq(0).all() and model.digit_emb.weight[0].eq(0).all()
    assert model.digit_emb.num_embeddings == 1 + 2 + 3
    # without an FSQ modality there is no digit table at all
    plain = build_model(ModelConfig(model_type='4m', n_layer=1, n_head=2, n_embd=16, block_size=8, modalities=mods[1:]))
    assert plain.digit_emb is None


def test_iterative_decode_schemes_fill_everything():
    from decoding import iterative_decode, reveal_counts
    assert reveal_counts(torch.tensor([16]), 4, 'linear')[:, 0].tolist() == [4, 4, 4, 4]
    assert reveal_counts(torch.tensor([3]), 8, 'cosine')[:, 0].sum() == 3
    for scheme in ('maskgit', 'roar'):
        out, mask = iterative_decode(lambda tokens, mask, dropped: torch.randn(2, 10, 5), torch.full((2, 10), -1),
                                     torch.ones(2, 10, dtype=torch.bool), steps=4, scheme=scheme)
        assert (out >= 0).all() and not mask.any()


def train_args(out, *extra):
    return [sys.executable, 'train.py', 'config/nano4m_cpu.py', '--dataset=synth4m', f'--out_dir={out}', '--train_modalities=()',
            '--n_layer=1', '--n_layer_dec=1', '--n_head=2', '--n_embd=32', '--batch_size=8', '--eval_iters=2',
            '--log_interval=5', '--eval_interval=20', '--input_budget=(1,16)', '--target_budget=(1,16)',
            '--dirichlet_alphas=(1.0,0.1,(5.0,0.05,0.05))',  # the CPU config's per-modality entry, for 3 modalities
            '--dtype=float32', '--compile=False', '--device=cpu', '--warmup_iters=2', *extra]


def test_two_ranks_train_exactly_like_one_rank_with_twice_the_batch(synth, data_root, tmp_path):
    """4M's loss is a mean per modality; with budgets (1, 16) every micro-batch has other counts per modality."""
    ddp_matches_one_rank(str(tmp_path), train_args(str(tmp_path / 'unused')), {'NANO4M_DATA': data_root}, batch_size=4)


def ddp_matches_one_rank(out_dir, base_args, env, batch_size, accum=2):
    """Train 1 rank x (2b, accum micro-steps) and 2 ranks x (b, accum micro-steps each); both must end with the same
    weights: the same samples, and every micro-batch weighted by its share of the optimizer step's loss tokens
    (not averaged per micro-batch or per rank, which differ whenever the masked/target counts differ)."""
    one, two = os.path.join(out_dir, 'one'), os.path.join(out_dir, 'two')
    common = ['--max_iters=3', '--eval_interval=3', '--deterministic=True', '--dropout=0.0']
    run([*base_args, f'--out_dir={one}', *common, f'--batch_size={2 * batch_size}',
         f'--gradient_accumulation_steps={accum}'], env_extra=env)
    run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *base_args[1:],
         f'--out_dir={two}', *common, f'--batch_size={batch_size}', f'--gradient_accumulation_steps={2 * accum}'],
        env_extra=env)
    wa = torch.load(os.path.join(one, 'ckpt.pt'), weights_only=True)['model']
    wb = torch.load(os.path.join(two, 'ckpt.pt'), weights_only=True)['model']
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < 1e-5, worst


def test_tiny_train_then_chain_is_deterministic(synth, data_root, tmp_path):
    out = str(tmp_path / 'run')
    env = {'NANO4M_DATA': data_root}
    result = run(train_args(out, '--max_iters=20'), env_extra=env)
    assert 'loss_rgb' in result.stdout and 'val/loss_caption' in result.stdout
    events = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert 'val/loss_depth' in events[-1] and 'loss_depth' in [e for e in events if e['event'] == 'train'][-1]

    def chain(*extra):
        return run([sys.executable, 'sample.py', '--mode=chain', f'--out_dir={out}', '--device=cpu', '--seed=7',
                    '--num_samples=2', *extra], env_extra=env)  # a later --seed overrides this one
    for name in ('first', 'again'):
        chain('--chain=caption->rgb->depth@scheme=roar,steps=4', '--sample_idx=3', f'--chain_dir={out}/{name}')
    pngs = sorted(f for f in os.listdir(os.path.join(out, 'first')) if f.endswith('.png'))
    assert len(pngs) == 2
    for f in os.listdir(os.path.join(out, 'first')):  # same seed: the same tokens, pictures and text
        assert open(os.path.join(out, 'first', f), 'rb').read() == open(os.path.join(out, 'again', f), 'rb').read()
    chain('--chain=caption->rgb->depth@scheme=roar,steps=4', '--sample_idx=3', '--seed=8',
                      f'--chain_dir={out}/other')
    assert any(open(os.path.join(out, 'first', f), 'rb').read() != open(os.path.join(out, 'other', f), 'rb').read()
               for f in pngs)
    user = chain('--chain=caption->rgb', '--caption=w1 w2 w3')
    assert 'w1 w2 w3' in user.stdout
    bad = run([sys.executable, 'sample.py', '--mode=chain', f'--out_dir={out}', '--device=cpu',
               '--chain=caption->rgb', '--caption=w1 bogus'], env_extra=env, check=False)
    assert bad.returncode != 0 and "'bogus'" in bad.stderr and 'vocabulary' in bad.stderr
    unknown = run([sys.executable, 'sample.py', '--mode=chain', f'--out_dir={out}', '--device=cpu',
                   '--chain=caption->edges'], env_extra=env, check=False)  # a modality the model never saw
    assert unknown.returncode != 0 and "'edges'" in unknown.stderr and 'rgb' in unknown.stderr
    assert 'Traceback' not in unknown.stderr
    text_first = chain('--chain=rgb->caption', '--sample_idx=0')
    assert 'caption' in text_first.stdout


def test_torchrun_two_ranks_4m(synth, data_root, tmp_path):
    out = str(tmp_path / 'ddp')
    result = run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                  *train_args(out, '--max_iters=3', '--gradient_accumulation_steps=2')[1:]],
                 env_extra={'NANO4M_DATA': data_root})
    assert '"world_size": 2' in result.stdout
    assert 'largest weight difference across 2 ranks 0' in result.stdout


# -----------------------------------------------------------------------------
# 4M as in the paper: span masking, autoregressive sequences, CFG, specialists

def test_span_masking_round_trip():
    from masking import span_corrupt, span_mask, span_reconstruct
    rng = np.random.default_rng(0)
    first_sentinel, eos = 100, 1
    for _ in range(300):
        n = int(rng.integers(0, 30))
        seq = rng.integers(2, 50, n).tolist()
        k = int(rng.integers(0, n + 1))
        mask = span_mask(n, k, rng, max_spans=8)
        assert mask.sum() == k
        inp, tgt = span_corrupt(seq, mask, first_sentinel, eos)
        num_spans = int(np.sum(mask[1:] & ~mask[:-1]) + (n > 0 and mask[0]))
        assert num_spans <= 8 and inp[-1] == eos and tgt[-1] == eos
        assert [t for t in inp if t >= first_sentinel] == list(range(first_sentinel, first_sentinel + num_spans))
        assert len(inp) == n - k + num_spans + 1 and len(tgt) == k + num_spans + 1
        assert span_reconstruct(inp, tgt, first_sentinel, eos) == seq  # masked input + predicted spans = the sequence
    # everything masked: one span, the input is just [sentinel, eos], the target the whole sequence after the sentinel
    inp, tgt = span_corrupt([5, 6, 7], span_mask(3, 3, rng, 8), first_sentinel, eos)
    assert inp == [100, 1] and tgt == [100, 5, 6, 7, 1]
    inp, tgt = span_corrupt([5, 6, 7, 8], np.array([False, True, False, True]), first_sentinel, eos)
    assert inp == [5, 100, 7, 101, 1] and tgt == [100, 6, 101, 8, 1]


def test_span_batches_teacher_forcing_and_ranks(synth):
    data = make_data(synth, seq_masking='span', input_budget=(1, 20), target_budget=(1, 20), dirichlet_alphas=(1.0, 0.2))
    cap = data.names.index('caption')
    spec = data.specs[cap]
    assert spec['vocab_size'] == len(WORDS) + spec['num_sentinels'] and spec['eos'] == 1
    first_sentinel = spec['vocab_size'] - spec['num_sentinels']
    b = data.get_batch('train', 32, torch.Generator().manual_seed(0))
    is_cap = (b['dec_mod'] == cap) & ~b['dec_pad']
    assert is_cap.any() and ((b['enc_mod'] == cap) & ~b['enc_pad']).any()
    assert ((b['dec_tokens'] >= 0) <= is_cap).all()  # only autoregressive targets carry a previous token
    for i in range(32):
        idx = torch.nonzero(is_cap[i])[:, 0]
        if len(idx):
            tgt = b['targets'][i, idx]
            assert b['dec_pos'][i, idx].tolist() == list(range(len(idx)))
            assert tgt[0] >= first_sentinel  # a target starts with a sentinel
            assert b['dec_tokens'][i, idx].tolist() == [-1] + tgt[:-1].tolist()  # shifted by one: teacher forcing
    # a full caption round trip through span_pieces, with budgets large enough not to cut it
    from masking import sample_seeds, span_reconstruct
    row = torch.tensor([[0] * 32 + [2, 3, 4, 5, 6, 1]] * 5)  # rgb, depth, then the caption; 5 samples
    six = torch.full((5,), 6)  # mask ratio 6 / 12: 2 of the 5 words, in budgets that fit input and target whole
    assert data.span_ids == [cap]
    inp, in_len, tgt, tgt_len = data.span_pieces(sample_seeds(0, torch.arange(5)), row, six[:, None], six[:, None])
    for i in range(5):
        inp_i, tgt_i = inp[i, 0, :in_len[i, 0]].tolist(), tgt[i, 0, :tgt_len[i, 0]].tolist()
        assert inp_i[-1] == 1 and tgt_i[-1] == 1 and len(tgt_i) - 1 - sum(t >= first_sentinel for t in tgt_i) == 2
        assert span_reconstruct(inp_i, tgt_i, first_sentinel, 1) == [2, 3, 4, 5, 6]
    # the global batch is split across ranks exactly as in random mode
    whole = data.get_batch('train', 8, torch.Generator().manual_seed(4))
    halves = [data.get_batch('train', 4, torch.Generator().manual_seed(4), rank=r, world_size=2) for r in (0, 1)]
    for k in whole:
        assert torch.equal(whole[k], torch.cat([h[k] for h in halves]))


def test_input_and_target_modalities_and_input_drop(synth):
    data = make_data(synth, input_modalities=('rgb',), target_modalities=('depth',), input_budget=(16, 16),
                     target_budget=(16, 16), dirichlet_alphas=(1.0,))
    b = data.get_batch('train', 8, torch.Generator().manual_seed(0))
    assert (b['enc_mod'] == data.names.index('rgb')).all() and (b['dec_mod'] == data.names.index('depth')).all()
    assert not b['enc_pad'].any() and not b['dec_pad'].any()
    dropped = make_data(synth, input_drop=1.0, input_budget=(8, 8), target_budget=(8, 8))
    assert dropped.get_batch('train', 8, torch.Generator().manual_seed(0))['enc_pad'].all()  # nothing visible
    from data import DataError
    with pytest.raises(DataError, match='train_modalities'):
        make_data(synth, target_modalities=('edges',))


def test_decoder_attention_mask_within_modality_and_causal():
    from model import decoder_attention
    # targets: image modality 0 at positions 3, 5; sequence modality 1 at 0, 1, 2; padding
    dec_mod = torch.tensor([[0, 0, 1, 1, 1, 0]])
    dec_pos = torch.tensor([[3, 5, 0, 1, 2, 0]])
    dec_pad = torch.tensor([[False, False, False, False, False, True]])
    is_ar = torch.tensor([False, True])
    keep = decoder_attention(dec_mod, dec_pos, dec_pad, is_ar, 'modality')[0].int()
    assert keep.tolist() == [[1, 1, 0, 0, 0, 0],   # image targets see their own modality, bidirectionally
                             [1, 1, 0, 0, 0, 0],
                             [0, 0, 1, 0, 0, 0],   # the sequence is causal: position p sees positions <= p
                             [0, 0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0],
                             [1, 1, 0, 0, 0, 0]]   # (a padded query's row is never used)
    everything = decoder_attention(dec_mod, dec_pos, dec_pad, is_ar, 'all')[0].int()
    assert everything[0].tolist() == [1, 1, 0, 0, 0, 0]  # an image query never sees a teacher-forced token
    assert everything[3].tolist() == [1, 1, 1, 1, 0, 0]  # a sequence query may see image queries (they hold no token)
    random_mode = decoder_attention(dec_mod, dec_pos, dec_pad, torch.tensor([False, False]), 'modality')[0].int()
    assert random_mode[2].tolist() == [0, 0, 1, 1, 1, 0]  # 'random' sequences: bidirectional, as before


def span_model(synth, **kw):
    data = make_data(synth, seq_masking='span')
    model = tiny_model(data, seq_masking='span', **kw).eval()
    for p in model.head.parameters():  # the head starts at zero; make the outputs depend on the inputs
        torch.nn.init.normal_(p, std=0.5)
    return data, model


def test_autoregressive_generation_cached_uncached_and_teacher_forced(synth, data_root):
    data, model = span_model(synth)
    cap = model.modality_id('caption')
    spec = model.config.modalities[cap]
    rgb = torch.from_numpy(np.load(os.path.join(data_root, synth, 'val', 'rgb.npy'))[:6]).long()
    fast = model.generate({'rgb': rgb}, 'caption', scheme='ar', temperature=0, kv_cache=True)
    slow = model.generate({'rgb': rgb}, 'caption', scheme='ar', temperature=0, kv_cache=False)
    assert torch.equal(fast, slow) and fast.shape == (6, spec['num_tokens'])
    # the teacher-forced forward pass over [sentinel, generated tokens] predicts the same greedy tokens: the causal
    # mask of training is what generation sees
    first_sentinel = spec['vocab_size'] - spec['num_sentinels']
    for i in range(6):
        row = fast[i].tolist()
        n = row.index(spec['eos'])
        tgt = [first_sentinel] + row[:n + 1]  # ..., <eos>
        enc = model.encoder_inputs({'rgb': rgb[i:i + 1]}, 1)
        dec_pos = torch.arange(len(tgt))[None]
        dec_tokens = torch.tensor([[-1] + tgt[:-1]])
        logits = model.decode(model.encode(*enc)[0], enc[3], dec_pos, torch.full_like(dec_pos, cap),
                              torch.zeros_like(dec_pos, dtype=torch.bool), dec_tokens)
        offset = int(model.vocab_offset[cap])
        logits = logits[0, 1:, offset:offset + first_sentinel]  # positions after the sentinel, no sentinels
        assert logits.argmax(-1).tolist() == tgt[1:]
    with pytest.raises(ValueError, match='scheme=ar'):
        model.generate({'rgb': rgb}, 'caption', scheme='roar')
    with pytest.raises(ValueError, match='scheme=ar'):
        model.generate({'rgb': rgb}, 'depth', scheme='ar')


def test_cfg_scale_one_is_the_conditional_path_and_zero_the_unconditional(synth, data_root):
    from decoding import cfg_logits
    cond, uncond = torch.randn(3, 7), torch.randn(3, 7)
    assert torch.equal(cfg_logits(cond, uncond, 1.0), cond) and torch.allclose(cfg_logits(cond, uncond, 0.0), uncond)
    assert torch.allclose(cfg_logits(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)
    data, model = span_model(synth)
    rgb = torch.from_numpy(np.load(os.path.join(data_root, synth, 'val', 'rgb.npy'))[:4]).long()
    for target, kw in (('caption', dict(scheme='ar')), ('depth', dict(scheme='maskgit', steps=4))):
        plain = model.generate({'rgb': rgb}, target, temperature=1.0, generator=torch.Generator().manual_seed(0), **kw)
        scale1 = model.generate({'rgb': rgb}, target, temperature=1.0, cfg_scale=1.0,
                                generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(plain, scale1)
    # scale 0 is the prediction with the condition removed: one greedy step = the argmax of predict({})
    uncond = model.generate({'rgb': rgb}, 'depth', scheme='maskgit', steps=1, temperature=0, cfg_scale=0.0)
    alone = model.predict({}, 'depth', query_pos=torch.arange(16).expand(4, -1)).argmax(-1)
    assert torch.equal(uncond, alone)
    assert not torch.allclose(model.predict({'rgb': rgb}, 'depth'), model.predict({}, 'depth', query_pos=torch.arange(16).expand(4, -1)))


def test_unconditional_stream_ignores_the_condition_and_is_no_inputs(synth, data_root):
    """cfg_scale=0 is the unconditional model: whatever the condition, the same logits and the same samples, equal to
    generating from no inputs at all, and equal to what training shows for a sample whose inputs were all dropped.
    Catches an unconditional stream that still reads the inputs (e.g. real tokens marked as padding but attended)."""
    data, model = span_model(synth)
    rgb = torch.from_numpy(np.load(os.path.join(data_root, synth, 'val', 'rgb.npy'))).long()
    a, b = rgb[:4], rgb[4:8]
    assert not torch.equal(a, b)
    text_a, logits_a = model.generate_sequence({'rgb': a}, 'caption', temperature=0, cfg_scale=0.0, return_logits=True)
    text_b, logits_b = model.generate_sequence({'rgb': b}, 'caption', temperature=0, cfg_scale=0.0, return_logits=True)
    text_0, logits_0 = model.generate_sequence({}, 'caption', temperature=0, batch_size=4, return_logits=True)
    assert torch.equal(text_a, text_b) and torch.equal(text_a, text_0)
    assert torch.allclose(logits_a, logits_b, atol=1e-5) and torch.allclose(logits_a, logits_0, atol=1e-5)
    _, logits_cond = model.generate_sequence({'rgb': a}, 'caption', temperature=0, return_logits=True)
    assert not torch.allclose(logits_cond[:, :2], logits_0[:, :2], atol=1e-3)  # the condition does matter unguided
    # image targets (MaskGIT steps): sampled with the same random stream, the condition changes nothing at scale 0
    kw = dict(scheme='maskgit', steps=4, temperature=1.0, cfg_scale=0.0)
    depth_a = model.generate({'rgb': a}, 'depth', generator=torch.Generator().manual_seed(3), **kw)
    depth_b = model.generate({'rgb': b}, 'depth', generator=torch.Generator().manual_seed(3), **kw)
    depth_0 = model.generate({}, 'depth', generator=torch.Generator().manual_seed(3), batch_size=4,
                             **dict(kw, cfg_scale=1.0))
    assert torch.equal(depth_a, depth_b) and torch.equal(depth_a, depth_0)
    # training's view of a sample whose inputs were all dropped: its padded input slots hold whatever the batch had
    batch = data.get_batch('train', 4, torch.Generator().manual_seed(0))
    batch['enc_pad'][:] = True
    logits, _, _ = model(**{k: v for k, v in batch.items() if k != 'targets'})
    offset = int(model.vocab_offset[model.modality_id('depth')])
    queries = ~batch['dec_pad'] & (batch['dec_mod'] == model.modality_id('depth'))  # (4, N_tgt)
    assert queries.any()
    for i in range(4):
        if queries[i].any():
            alone = model.predict({}, 'depth', query_pos=batch['dec_pos'][i][queries[i]][None])
            assert torch.allclose(logits[i, queries[i], offset:offset + 8], alone[0], atol=1e-5)


def test_tiny_span_train_then_ar_chain_with_cfg(synth, data_root, tmp_path):
    out = str(tmp_path / 'span')
    env = {'NANO4M_DATA': data_root}
    run(train_args(out, '--max_iters=10', '--seq_masking=span', '--input_drop=0.2'), env_extra=env)
    result = run([sys.executable, 'sample.py', '--mode=chain', f'--out_dir={out}', '--device=cpu', '--num_samples=2',
                  '--chain=rgb->caption@temperature=0->depth@cfg_scale=2,steps=4'], env_extra=env)
    assert 'caption: autoregressive' in result.stdout and 'cfg_scale 2.0' in result.stdout
    bad = run([sys.executable, 'sample.py', '--mode=chain', f'--out_dir={out}', '--device=cpu',
               '--chain=rgb->caption@scheme=roar'], env_extra=env, check=False)
    assert bad.returncode != 0 and 'scheme=ar' in bad.stderr and 'Traceback' not in bad.stderr


def test_two_grids_share_positions_and_mixer_cells():
    """Super-resolution puts one picture on an 8x8 and a 16x16 grid. Positions are in coarse-cell units, so fine
    cell (r, c) sits at (r/2 - 1/4, c/2 - 1/4); it mixes into coarse cell (r//2, c//2); the coarse grid keeps the
    plain raster positions (a model with one grid size is unchanged). Catches a fine grid placed at integer
    positions (its top-left quarter would claim the whole picture) and mixer cells read in the wrong grid."""
    from model import FourM, GridMixer, ModelConfig, sincos_2d
    mods = ({'name': 'low', 'kind': 'image', 'vocab_size': 5, 'num_tokens': 16, 'grid': [4, 4]},
            {'name': 'high', 'kind': 'image', 'vocab_size': 5, 'num_tokens': 64, 'grid': [8, 8]},
            {'name': 'cap', 'kind': 'sequence', 'vocab_size': 5, 'num_tokens': 6, 'grid': [1, 6]})
    cfg = ModelConfig(model_type='4m', n_layer=1, n_layer_dec=1, n_head=2, n_embd=16, block_size=32, vocab_size=15,
                      modalities=mods, grid_conv=1)
    model = FourM(cfg)
    r, c = torch.arange(4).repeat_interleave(4), torch.arange(4).repeat(4)
    assert torch.equal(model.pos_table[0, :16], sincos_2d(r, c, 16))
    for fr in range(8):
        for fc in range(8):
            expect = sincos_2d(torch.tensor([fr / 2 - 0.25]), torch.tensor([fc / 2 - 0.25]), 16)[0]
            assert torch.allclose(model.pos_table[1, fr * 8 + fc], expect, atol=1e-6)
            assert model.grid_cell[1, fr * 8 + fc] == (fr // 2) * 4 + fc // 2
    assert model.grid_mixer.h == 4 and (model.grid_cell[2] == -1).all()
    # a visible coarse token reaches the fine queries over its own cell and its neighbours', no farther
    torch.nn.init.normal_(model.grid_mixer.convs[-1].weight)
    model.eval()
    enc_tokens = torch.zeros(1, 16, dtype=torch.long)
    batch = dict(enc_pos=torch.arange(16)[None], enc_mod=torch.zeros(1, 16, dtype=torch.long),
                 enc_pad=torch.zeros(1, 16, dtype=torch.bool), dec_pos=torch.arange(64)[None],
                 dec_mod=torch.ones(1, 64, dtype=torch.long), dec_pad=torch.zeros(1, 64, dtype=torch.bool))
    context, grid = model.encode(enc_tokens, batch['enc_pos'], batch['enc_mod'], batch['enc_pad'])
    changed = enc_tokens.clone()
    changed[0, 0] = 3  # coarse cell (0, 0)
    _, grid2 = model.encode(changed, batch['enc_pos'], batch['enc_mod'], batch['enc_pad'])
    cells = model.grid_cell[batch['dec_mod'], batch['dec_pos']]  # what decode() reads for each fine query
    read = lambda g: GridMixer.read(g, cells, cells >= 0)
    moved = (read(grid) - read(grid2)).abs().amax(-1).view(8, 8) > 1e-6
    assert moved[:4, :4].all() and not moved[4:].any() and not moved[:, 4:].any()
