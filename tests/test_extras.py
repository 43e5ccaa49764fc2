"""prepare.py clevr --extras=edges,sr: the opt-in modalities edges (an 8x8 FSQ tokenizer of Sobel edge maps) and the
super-resolution pair rgb_low / rgb_high (32x32 and 64x64 rgb on 8x8 and 16x16 tokens of one 16x16-grid tokenizer).
One tiny set (64 train / 16 val scenes, tokenizers trained for a few dozen steps), then row alignment, specs, decoding,
pictures, tokenizer reuse and the flag's errors."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from conftest import run

OLD = ['rgb', 'depth', 'normals', 'semseg', 'caption', 'boxes']
STEPS = 40  # per extra tokenizer: enough to tell a scene's edges / colours from another scene's


def prepare(name, data_root, *extra):
    return run([sys.executable, 'prepare.py', 'clevr', '--num_train=64', '--num_val=16', '--tokenizer_seconds=1',
                '--extras=sr,edges', f'--extras_steps={STEPS}', f'--name={name}', *extra],
               env_extra={'NANO4M_DATA': data_root})


@pytest.fixture(scope='module')
def extras(data_root):
    result = prepare('tiny_clevr_extras', data_root)
    return 'tiny_clevr_extras', result.stdout


def load(data_root, name, split, modality):
    return np.load(os.path.join(data_root, name, split, f'{modality}.npy'))


def renders(split, n):
    import clevr
    return clevr.render_scenes(n, seed=clevr.SPLIT_SEEDS[split], resolution=64, modalities=('rgb',))['rgb']


def area_half(rgb):  # 2x2 box average, written independently of prepare.box_downsample
    return np.round(rgb.astype(np.float64).reshape(len(rgb), 32, 2, 32, 2, 3).mean(axis=(2, 4))).astype(np.uint8)


def scene_correlation(a, b):
    """Mean over scenes of the correlation between a's and b's deviations from their means over the scenes."""
    a, b = (x - x.mean(0) for x in (a, b))
    return float(np.mean([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]))


def test_meta_and_arrays(extras, data_root):
    name, stdout = extras
    meta = json.load(open(os.path.join(data_root, name, 'meta.json')))
    mods = meta['modalities']
    assert list(mods) == OLD + ['edges', 'rgb_low', 'rgb_high']  # the six first, in the old order; --extras order ignored
    edges, low, high = mods['edges'], mods['rgb_low'], mods['rgb_high']
    assert edges['tokenizer'] == 'tokenizers/edges.pt' and edges['grid'] == [8, 8] and edges['num_tokens'] == 64
    assert 0 < edges['edge_f1'] <= 1 and edges['val_psnr'] > 0
    assert low['tokenizer'] == high['tokenizer'] == 'tokenizers/rgb16.pt' and low['levels'] == high['levels']
    assert (low['grid'], low['num_tokens'], low['resolution']) == ([8, 8], 64, 32)
    assert (high['grid'], high['num_tokens'], high['resolution']) == ([16, 16], 256, 64)
    for spec in (edges, low, high):
        assert spec['kind'] == 'image' and spec['codec'] == 'fsq' and spec['val_psnr'] > 10
    for split, n in (('train', 64), ('val', 16)):
        for m, spec in mods.items():
            a = load(data_root, name, split, m)
            assert a.dtype == np.int16 and a.shape == (n, spec['num_tokens']), (m, a.shape)
            assert 0 <= a.min() and a.max() < spec['vocab_size']
    assert 'edges tokenizer: val PSNR' in stdout and 'rgb16 tokenizer: val PSNR rgb_low' in stdout, stdout


def test_train_rows_are_their_scenes_tokens(extras, data_root):
    """Each row is the tokenization of the same scene's edges / 32x32 / 64x64 render (bug caught: rows of another
    split or order, a downsampling that is not the 2x2 area mean)."""
    import clevr
    from tokenizer import load_tokenizer, tokenize_images
    name, _ = extras
    rgb = renders('train', 64)
    images = {'edges': (clevr.sobel_edges(rgb) * 255)[:, None], 'rgb_low': area_half(rgb).transpose(0, 3, 1, 2),
              'rgb_high': rgb.transpose(0, 3, 1, 2)}
    for m, path in (('edges', 'edges.pt'), ('rgb_low', 'rgb16.pt'), ('rgb_high', 'rgb16.pt')):
        model = load_tokenizer(os.path.join(data_root, name, 'tokenizers', path))[0]
        mine = tokenize_images(model, images[m]).reshape(64, -1)
        rows = load(data_root, name, 'train', m)
        same, other = (mine == rows).mean(), (mine == np.roll(rows, 1, axis=0)).mean()
        assert same > 0.99 and other < same - 0.05, (m, same, other)  # (threads may flip a rounding or two)


def test_decoded_rows_match_their_scenes(extras, data_root):
    import clevr
    from data import TokenDecoder, load_meta
    from tokenizer import edge_f1
    name, _ = extras
    rgb = renders('val', 16)
    decoder = TokenDecoder(name, load_meta(name))
    edges = decoder.decode('edges', load(data_root, name, 'val', 'edges'))
    assert edges.shape == (16, 64, 64, 1)
    truth = clevr.sobel_edges(rgb)
    same, other = edge_f1(edges[..., 0], truth), edge_f1(edges[..., 0], np.roll(truth, 1, axis=0))
    assert same > 0.1 and same > 2 * other, (same, other)
    low = decoder.decode('rgb_low', load(data_root, name, 'val', 'rgb_low'))
    assert low.shape == (16, 32, 32, 3)
    # what is particular to each scene (the picture minus the val mean: every scene shares floor and sky) correlates
    # with its own downsampled render, not with another scene's
    target = area_half(rgb) / 255.0
    same, other = scene_correlation(low, target), scene_correlation(low, np.roll(target, 1, axis=0))
    assert same > 0.25 and same > other + 0.25, (same, other)
    assert decoder.decode('rgb_high', load(data_root, name, 'val', 'rgb_high')).shape == (16, 64, 64, 3)

    # pictures: every one (N, 64, 64, 3) uint8; edges grey, rgb_low enlarged by nearest neighbour
    pic = decoder.to_rgb('edges', load(data_root, name, 'val', 'edges')[:3])
    assert pic.shape == (3, 64, 64, 3) and pic.dtype == np.uint8
    assert (pic[..., 0] == pic[..., 1]).all() and (pic[..., 0] == pic[..., 2]).all()
    assert (pic[..., 0] == np.round(edges[:3, ..., 0] * 255)).all()
    pic = decoder.to_rgb('rgb_low', load(data_root, name, 'val', 'rgb_low')[:3])
    assert pic.shape == (3, 64, 64, 3) and pic.dtype == np.uint8
    for di in (0, 1):
        for dj in (0, 1):
            assert (pic[:, di::2, dj::2] == np.round(low[:3] * 255)).all()
    assert decoder.to_rgb_values('edges', truth[:2]).shape == (2, 64, 64, 3)  # ground truth, no channel axis


def test_tokenizers_are_reused(extras, data_root):
    """A second build with the first one's tokenizers trains none and writes the same tokens."""
    name, _ = extras
    shutil.copytree(os.path.join(data_root, name, 'tokenizers'), os.path.join(data_root, 'tiny_clevr_extras2', 'tokenizers'))
    out = prepare('tiny_clevr_extras2', data_root).stdout
    assert 'reusing the edges tokenizer' in out and 'reusing the rgb16 (rgb_low, rgb_high) tokenizer' in out, out
    assert 'training the edges' not in out and 'training the rgb16' not in out
    for m in ('edges', 'rgb_low', 'rgb_high'):
        assert (load(data_root, name, 'train', m) == load(data_root, 'tiny_clevr_extras2', 'train', m)).all()


@pytest.mark.parametrize('flags, message', [
    (['--extras=edges,depth'], "--extras: unknown 'depth'; valid: edges, sr"),
    (['--extras=sr', '--grid=16'], '--extras with --grid=16'),
])
def test_flag_errors(data_root, flags, message):
    result = run([sys.executable, 'prepare.py', 'clevr', '--num_train=4', '--num_val=2', '--name=tiny_clevr_bad', *flags],
                 env_extra={'NANO4M_DATA': data_root}, check=False)
    assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not os.path.exists(os.path.join(data_root, 'tiny_clevr_bad'))  # refused before rendering anything


@pytest.mark.parametrize('extra, file', [('sr', 'rgb16.pt'), ('edges', 'edges.pt')])
def test_a_reused_tokenizer_of_another_recipe_is_refused(extras, data_root, tmp_path, extra, file):
    """The 8x8-grid rgb tokenizer where rgb16.pt belongs makes 4x4 tokens of a 32x32 image; where edges.pt belongs,
    it reads 3 channels, not 1."""
    import argparse
    import prepare
    from data import DataError
    name, _ = extras
    os.makedirs(tmp_path / 'tokenizers')
    shutil.copyfile(os.path.join(data_root, name, 'tokenizers', 'rgb.pt'), tmp_path / 'tokenizers' / file)
    rgb = renders('val', 4)
    args = argparse.Namespace(retrain_tokenizer=False, tokenizer_scenes=4, extras_seconds=None, extras_steps=0)
    match = '4x4 tokens of 32x32 images, not 8x8' if extra == 'sr' else '3-channel images, not 1-channel'
    with pytest.raises(DataError, match=match):
        prepare.clevr_extras([extra], str(tmp_path), rgb, rgb, args)

# ---------------------------------------------------------------------------------------------------------------
# the extensions end to end: a 4M with edges and one with the two rgb grids, trained a few steps, scored and sampled


def tiny_4m(name, out, data_root, modalities, alphas, *extra):
    return run([sys.executable, 'train.py', 'config/nano4m_cpu.py', f'--dataset={name}', f'--out_dir={out}',
                f'--train_modalities={modalities}', f'--dirichlet_alphas={alphas}', '--n_layer=1', '--n_layer_dec=1',
                '--n_head=2', '--n_embd=32', '--batch_size=8', '--eval_iters=1', '--eval_interval=6', '--max_iters=6',
                '--lr_decay_iters=6', '--max_seconds=0', '--warmup_iters=2', '--log_interval=3', '--dtype=float32',
                '--device=cpu', *extra], env_extra={'NANO4M_DATA': data_root})


@pytest.fixture(scope='module')
def judge_file(extras, data_root):
    """The object judge eval.py loads (an untrained one: these tests check the plumbing, not the judge)."""
    import torch
    from judges import ObjectJudge
    torch.manual_seed(0)
    torch.save(ObjectJudge().state_dict(), os.path.join(data_root, extras[0], 'object_judge.pt'))


def test_edges_in_the_scorecard(extras, judge_file, data_root, tmp_path):
    """A 4M with edges gets rgb->edges and edges->rgb rows and the chained caption->edges->rgb row. The edges row's
    bound (the true tokens, decoded, against sobel edges of the renders) is the tokenizer's F1 that prepare.py
    measured: catches a truth misaligned with the val rows, or the decoded map read on the wrong scale."""
    name = extras[0]
    out = str(tmp_path / 'edges4m')
    tiny_4m(name, out, data_root, "('rgb','caption','edges')", "(1.0,(5.0,0.0,0.1),(0.1,5.0,0.1),(0.1,0.0,5.0))",
            '--input_budget=(8,64)', '--target_budget=(8,64)')
    run([sys.executable, 'eval.py', '--mode=scorecard', f'--out_dir={out}', '--num_scenes=16', '--scorecard_steps=2',
         '--scorecard_cfg=(1.0,)', f'--json_out={tmp_path}/card.json'], env_extra={'NANO4M_DATA': data_root})
    rows = {r[0]: r for r in json.load(open(tmp_path / 'card.json'))['rows']}
    assert {'rgb->edges', 'edges->rgb', 'caption->rgb', 'caption->edges->rgb (chained)'} <= set(rows)
    meta = json.load(open(os.path.join(data_root, name, 'meta.json')))
    assert rows['rgb->edges'][4] == pytest.approx(meta['modalities']['edges']['edge_f1'], abs=1e-6)
    assert 0 <= rows['rgb->edges'][2] <= 1 and 0 <= rows['caption->edges->rgb (chained)'][2] <= 1


def test_super_resolution_table_and_chain(extras, judge_file, data_root, tmp_path):
    """eval.py --mode=sr: the truth row is perfect, the bound row (true rgb_high tokens) is the tokenizer's PSNR that
    prepare.py measured at 64x64 (catches a truth at the wrong resolution or scene order), upsampling the true 32x32
    image beats upsampling nothing (nearest vs bicubic orders as expected), every step count has a row; and
    sample.py chains rgb_low -> rgb_high."""
    name = extras[0]
    out = str(tmp_path / 'sr4m')
    tiny_4m(name, out, data_root, "('rgb_low','rgb_high')", "((5.0,0.1),(1.0,1.0))", '--input_budget=(64,128)',
            '--target_budget=(16,64)', '--batch_size=4')
    result = run([sys.executable, 'eval.py', '--mode=sr', f'--out_dir={out}', '--num_scenes=16', '--sr_steps=(1,2)'],
                 env_extra={'NANO4M_DATA': data_root})
    table = open(os.path.join(out, 'sr.md')).read()
    rows = {line.split(' | ')[0][2:]: [float(v) for v in line.strip(' |').split(' | ')[1:4]]
            for line in table.splitlines() if line.startswith('| ') and not line.startswith('| rgb 32x32')}
    assert rows['truth (the renders)'][:2] == [100.0, 1.0]
    meta = json.load(open(os.path.join(data_root, name, 'meta.json')))
    assert rows['rgb_high tokenizer bound (true tokens)'][0] == pytest.approx(meta['modalities']['rgb_high']['val_psnr'], abs=0.01)
    assert rows['true 32x32, bicubic (best upsampling of a perfect low image)'][0] > 25
    assert {'4M one pass, argmax', '4M MaskGIT 1 steps', '4M MaskGIT 2 steps', 'low decode, bilinear'} <= set(rows)
    from PIL import Image
    assert Image.open(os.path.join(out, 'sr_examples.png')).size[0] > 5 * 64  # five columns
    chain = run([sys.executable, 'sample.py', '--mode=chain', f'--out_dir={out}', '--device=cpu',
                 '--chain=rgb_low->rgb_high@steps=2', '--sample_idx=1', f'--chain_dir={tmp_path}/chain'],
                env_extra={'NANO4M_DATA': data_root})
    assert any(f.endswith('.png') for f in os.listdir(tmp_path / 'chain')), chain.stdout
