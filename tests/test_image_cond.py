"""The image families (gpt, maskgit) on a multimodal set: rgb tokens conditioned on caption tokens. One tiny
clevr set at 16x16 grids built by prepare.py (a few dozen scenes, a tokenizer trained for a second), then batch
invariants, the GPT loss mask, and a tiny train -> sample run for both families."""
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run


@pytest.fixture(scope='module')
def tiny_clevr16(data_root):
    run([sys.executable, 'prepare.py', 'clevr', '--grid=16', '--num_train=48', '--num_val=8', '--tokenizer_seconds=1',
         '--name=tiny_clevr16'], env_extra={'NANO4M_DATA': data_root})
    return 'tiny_clevr16'


def test_prepare_clevr_grid16(tiny_clevr16, data_root):
    meta = json.load(open(os.path.join(data_root, tiny_clevr16, 'meta.json')))
    for name in ('rgb', 'depth', 'normals', 'semseg'):
        assert meta['modalities'][name]['grid'] == [16, 16] and meta['modalities'][name]['num_tokens'] == 256
    rgb = np.load(os.path.join(data_root, tiny_clevr16, 'val', 'rgb.npy'))
    assert rgb.shape == (8, 256) and rgb.max() < meta['modalities']['rgb']['vocab_size']
    from data import decode_image_tokens, image_view
    view = image_view(meta)
    assert view['grid'] == [16, 16] and view['cond_len'] == 51 and view['cond_vocab_size'] == 28
    assert decode_image_tokens(tiny_clevr16, rgb[:2], view).shape == (2, 64, 64, 3)


def test_caption_conditioned_batches(tiny_clevr16):
    from data import ImageTokenData
    gen = torch.Generator().manual_seed(0)
    mg = ImageTokenData(tiny_clevr16, 'maskgit', cond_drop=0.5).get_batch('train', 32, gen)
    assert mg['tokens'].shape == (32, 256) and mg['cond'].shape == (32, 51)
    dropped = (mg['cond'] == 28).all(1)  # a dropped caption is 'no condition' in every slot, never in part
    assert dropped.any() and (~dropped).any() and ((mg['cond'] == 28).any(1) == dropped).all()
    with pytest.raises(Exception, match='cond_modality'):
        ImageTokenData(tiny_clevr16, 'maskgit', cond_modality='rgb')
    uncond = ImageTokenData(tiny_clevr16, 'maskgit', cond_modality='')
    assert uncond.model_args['cond_len'] == 1 and uncond.model_args['cond_vocab_size'] == 0


def test_gpt_loss_ignores_the_caption_prefix(tiny_clevr16):
    from data import ImageTokenData
    from model import ModelConfig, build_model
    data = ImageTokenData(tiny_clevr16, 'gpt', cond_drop=0.0)
    batch = data.get_batch('train', 4, torch.Generator().manual_seed(1))
    idx, targets = batch['idx'], batch['targets']
    P, L, K = 51, 256, 1000
    assert idx.shape == targets.shape == (4, P + L - 1) and data.model_args['block_size'] == P + L - 1
    assert (targets[:, :P - 1] == -1).all() and (targets[:, P - 1:] >= 0).all()  # caption positions: no target
    assert (idx[:, :P] >= K).all() and torch.equal(idx[:, P:], targets[:, P - 1:-1])  # caption, then raster
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_type='gpt', n_layer=1, n_head=2, n_embd=32, **data.model_args))
    logits, loss, _ = model(idx, targets)
    logits.retain_grad()
    loss.backward()
    assert torch.allclose(loss, F.cross_entropy(logits[:, P - 1:].flatten(0, 1), targets[:, P - 1:].flatten()))
    assert logits.grad[:, :P - 1].abs().max() == 0 and logits.grad[:, P - 1:].abs().max() > 0


TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--batch_size=8', '--eval_iters=1', '--log_interval=5',
        '--device=cpu', '--max_iters=10', '--eval_interval=10', '--warmup_iters=2', '--dtype=float32']


@pytest.mark.parametrize('family,mode', [('maskgit', 'maskgit'), ('gpt', 'ar')])
def test_clevr_train_then_sample(tiny_clevr16, data_root, tmp_path, family, mode):
    out = str(tmp_path / family)
    env = {'NANO4M_DATA': data_root}
    result = run([sys.executable, 'train.py', f'config/clevr_{family}.py', f'--out_dir={out}',
                  f'--dataset={tiny_clevr16}', '--compile=False', *TINY], env_extra=env)
    assert 'step 10: train loss' in result.stdout
    png = str(tmp_path / 'samples.png')
    result = run([sys.executable, 'sample.py', f'--out_dir={out}', f'--mode={mode}', '--num_samples=2',
                  '--num_captions=3', '--sample_idx=2', '--steps=4', '--cfg_scale=2.0', f'--image_out={png}'],
                 env_extra=env)
    captions = open(os.path.join(data_root, tiny_clevr16, 'val', 'captions.txt')).read().splitlines()
    assert captions[2] in result.stdout and captions[4] in result.stdout  # the rows' conditions are printed
    from PIL import Image
    assert Image.open(png).size == (2 * (3 * 66 + 2), 2 * (3 * 66 + 2))  # 3 rows of ground truth + 2 samples
    bad = run([sys.executable, 'sample.py', f'--out_dir={out}', f'--mode={mode}', '--caption=a huge pink cube'],
              env_extra=env, check=False)
    assert bad.returncode != 0 and "'huge'" in bad.stderr and 'Traceback' not in bad.stderr


def test_speed_table_on_caption_grid(tiny_clevr16, data_root):
    result = run([sys.executable, 'bench.py', '--mode=speed', f'--dataset={tiny_clevr16}', '--speed_shape=1x2x32',
                  '--speed_batch=2', '--speed_threads=1', '--speed_dtypes=float32,bfloat16'],
                 env_extra={'NANO4M_DATA': data_root})
    rows = [line for line in result.stdout.splitlines() if line.startswith('| 16x16')]
    assert len(rows) == 2 and '256 + 51' in rows[0] and 'thr' in rows[0]  # batch 1 and the large batch
    bad = run([sys.executable, 'bench.py', '--mode=speed', f'--dataset={tiny_clevr16}', '--speed_shape=big'],
              env_extra={'NANO4M_DATA': data_root}, check=False)
    assert bad.returncode != 0 and 'LxHxC' not in bad.stderr and '6x8x256' in bad.stderr
