"""Flow family (flow.py): adaLN-Zero at init, the rectified-flow loss and sampler conventions, classifier-free
guidance, keyed batches, and a tiny train -> checkpoint -> sample run on small image sets written here."""
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from conftest import run
from data import DataError
from decoding import cfg_logits, flow_sample
from model import ModelConfig, build_model

SIZE, CH, NUM_CLASSES = 8, 2, 5


def tiny_flow(**kw):
    args = dict(model_type='flow', n_layer=2, n_head=2, n_embd=32, image_size=SIZE, in_channels=CH, patch_size=2,
                cond_vocab_size=NUM_CLASSES, cond_len=1, block_size=16)
    args.update(kw)
    torch.manual_seed(0)
    return build_model(ModelConfig(**args))


def randomise_zero_layers(model):
    """A model whose adaLN and output layers are no longer zero, i.e. one that has trained a bit."""
    torch.manual_seed(1)
    for block in model.blocks:
        torch.nn.init.normal_(block.ada.weight, std=0.1)
        torch.nn.init.normal_(block.ada.bias, std=0.1)
    for m in (model.ada_f, model.patch_out):
        torch.nn.init.normal_(m.weight, std=0.1)
    return model


OPTIONS = [{}, {'pos': 'rope'}, {'pos': 'sincos', 'norm': 'rmsnorm', 'mlp': 'swiglu', 'qk_norm': True},
           {'pos': 'none', 'bias': False}]


@pytest.mark.parametrize('options', OPTIONS)
def test_adaln_zero_block_is_identity_at_init(options):
    model = tiny_flow(**options)
    x, c = torch.randn(3, 10, 32), torch.randn(3, 32)
    rope = None
    if options.get('pos') == 'rope':
        rope = (model.rope_cos[:10], model.rope_sin[:10])
    for block in model.blocks:
        assert torch.equal(block(x, c, rope=rope), x)
    # and the whole network starts as the zero velocity
    v = model.velocity(torch.randn(3, CH, SIZE, SIZE), torch.rand(3), torch.randint(NUM_CLASSES, (3, 1)))
    assert v.shape == (3, CH, SIZE, SIZE) and v.abs().max() == 0
    # the identity comes from the zero gates, not from a block that ignores its input: non-zero gates change x
    randomise_zero_layers(model)
    assert not torch.allclose(model.blocks[0](x, c, rope=rope), x)
    loss = model(torch.randn(4, CH, SIZE, SIZE), torch.randint(NUM_CLASSES, (4, 1)))[1]
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_loss_at_init_is_two_on_unit_gaussian_targets():
    """The zero velocity at init makes the loss E|ε − x|² = Var ε + Var x = 2 for x ~ N(0, 1); a target of ε or
    of x alone would give 1."""
    model = tiny_flow()
    torch.manual_seed(5)
    x = torch.randn(256, CH, SIZE, SIZE)
    _, loss, _ = model(x, torch.randint(NUM_CLASSES, (256, 1)))
    assert abs(loss.item() - 2.0) < 0.1


def test_forward_mixes_and_targets_like_the_sampler_integrates():
    """A stub velocity that checks x_t = (1 − t)·x + t·ε and returns ε − x exactly gives zero loss: the training
    target and the sampler's dx/dt agree on the sign."""
    model = tiny_flow()
    x, noise, t = torch.randn(4, CH, SIZE, SIZE), torch.randn(4, CH, SIZE, SIZE), torch.tensor([0.1, 0.4, 0.7, 1.0])

    def exact(x_t, tt, cond):
        assert torch.allclose(x_t, (1 - tt.view(-1, 1, 1, 1)) * x + tt.view(-1, 1, 1, 1) * noise)
        return noise - x
    model.velocity = exact
    _, loss, _ = model(x, None, noise, t)
    assert loss.item() == 0


@pytest.mark.parametrize('method,steps', [('euler', 1), ('euler', 5), ('heun', 1), ('heun', 3)])
def test_exact_velocity_recovers_x(method, steps):
    """On the straight path from x to ε the exact velocity is ε − x at every t; from x_1 = ε, Euler lands on x in
    one step (and stays on the line with more steps)."""
    x = torch.randn(3, 1, 4, 4)
    noise = torch.randn(3, 1, 4, 4)
    calls = []

    def velocity(x_t, t, dropped):
        calls.append(float(t[0]))
        assert not dropped  # no guidance asked for: never the unconditional call
        return noise - x
    out = flow_sample(velocity, noise, steps=steps, method=method)
    assert torch.allclose(out, x, atol=1e-5)
    assert calls[0] == 1.0 and len(calls) == (2 * steps - 1 if method == 'heun' else steps)  # Heun: last step Euler


def test_clean_image_prediction_gives_the_exact_velocity():
    """flow_target='x': a network that outputs the clean image exactly must give the velocity ε − x, and then the
    sampler lands on x (a sign or 1/t error in the conversion would not)."""
    model = tiny_flow(flow_target='x').eval()
    x = torch.randn(3, CH, SIZE, SIZE)
    noise = torch.randn(3, CH, SIZE, SIZE)
    model.unpatchify = lambda tokens: x  # the network's output, whatever it read: the true clean image
    t = torch.tensor([1.0, 0.5, 0.1])
    x_t = (1 - t.view(-1, 1, 1, 1)) * x + t.view(-1, 1, 1, 1) * noise
    assert torch.allclose(model.velocity(x_t, t), noise - x, atol=1e-5)
    out = flow_sample(lambda x_t, t, dropped: model.velocity(x_t, t), noise, steps=4)
    assert torch.allclose(out, x, atol=1e-4)


def test_cfg_scale_one_is_the_conditional_model_bit_for_bit():
    model = randomise_zero_layers(tiny_flow()).eval()
    cond = torch.arange(4)[:, None] % NUM_CLASSES
    out = model.generate(cond, steps=3, cfg_scale=1.0, generator=torch.Generator().manual_seed(0))
    # the plain conditional Euler loop, by hand
    x = torch.randn(4, CH, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(1.0, 0.0, 4).tolist()
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t) * model.velocity(x, torch.full((4,), t), cond)
    assert torch.equal(out, x)
    guided = model.generate(cond, steps=3, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(guided, out)  # guidance does something
    a, b = torch.randn(5), torch.randn(5)
    assert cfg_logits(a, b, 1.0) is a and torch.allclose(cfg_logits(a, b, 0.0), b)
    assert torch.allclose(cfg_logits(a, b, 3.0), b + 3.0 * (a - b))


def test_bad_steps_and_method_are_errors():
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match='steps'):
            flow_sample(lambda x, t, d: x, torch.zeros(1, 1, 2, 2), steps=steps)
    with pytest.raises(ValueError, match='euler'):
        flow_sample(lambda x, t, d: x, torch.zeros(1, 1, 2, 2), steps=2, method='rk4')

# -----------------------------------------------------------------------------
# data: small image sets written straight into a temporary NANO4M_DATA


@pytest.fixture(scope='module')
def tiny_pixels(data_root):
    """An 'image' dataset like prepare.py fashion_mnist writes, without tokens: 16x16, class c is a bright band."""
    d = os.path.join(data_root, 'tiny_flow_pixels')
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (('train', 400), ('val', 60), ('test', 60)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 16, 16)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, c:c + 4] = 230
        np.save(os.path.join(d, f'{split}_images.npy'), images)
        np.save(os.path.join(d, f'{split}_labels.npy'), labels.astype(np.int64))
    meta = {'kind': 'image', 'num_classes': 10, 'classes': [f'class{c}' for c in range(10)],
            'image_shape': [1, 16, 16]}
    json.dump(meta, open(os.path.join(d, 'meta.json'), 'w'))
    return 'tiny_flow_pixels'


@pytest.fixture(scope='module')
def tiny_latents(data_root):
    """A 'multimodal' dataset like prepare.py clevr writes: 4x4 FSQ rgb tokens (levels 3, 3) and 6-word captions;
    no tokenizer file, so decoding them is an error that must name the fix."""
    d = os.path.join(data_root, 'tiny_flow_latents')
    words = ['<pad>', '<eos>', 'a', 'red', 'blue', 'cube', 'sphere']
    rng = np.random.default_rng(0)
    for split, n in (('train', 300), ('val', 20)):
        os.makedirs(os.path.join(d, split), exist_ok=True)
        np.save(os.path.join(d, split, 'rgb.npy'), rng.integers(0, 9, (n, 16)).astype(np.int16))
        caption = np.zeros((n, 6), dtype=np.int16)
        caption[:, 0], caption[:, 1], caption[:, 2], caption[:, 3] = 2, rng.integers(3, 5, n), rng.integers(5, 7, n), 1
        np.save(os.path.join(d, split, 'caption.npy'), caption)
    meta = {'kind': 'multimodal', 'modalities': {
        'rgb': {'kind': 'image', 'codec': 'fsq', 'vocab_size': 9, 'levels': [3, 3], 'tokenizer': 'tokenizers/rgb.pt',
                'grid': [4, 4], 'num_tokens': 16},
        'caption': {'kind': 'sequence', 'codec': 'words', 'vocab_size': len(words), 'words': words, 'grid': [1, 6],
                    'num_tokens': 6}}}
    json.dump(meta, open(os.path.join(d, 'meta.json'), 'w'))
    return 'tiny_flow_latents'


def test_flow_batches(tiny_pixels, tiny_latents):
    from data import FlowData, fsq_latents
    data = FlowData(tiny_pixels, {'cond_drop': 0.3})
    assert data.model_args == {'image_size': 16, 'in_channels': 1, 'patch_size': 4, 'cond_vocab_size': 10,
                               'cond_len': 1, 'block_size': 16}
    batch = data.get_batch('train', 64, 7)
    assert batch['x'].shape == batch['noise'].shape == (64, 1, 16, 16) and batch['t'].shape == (64,)
    assert batch['x'].min() >= -1 and batch['x'].max() <= 1 and (batch['x'] > 0.5).any()
    assert 0 < batch['t'].min() and batch['t'].max() < 1 and abs(batch['noise'].std().item() - 1) < 0.05
    assert (batch['cond'] == 10).any() and (batch['cond'] < 10).any()  # some labels dropped to 'no condition'
    # 2 ranks x 32 see exactly what 1 rank x 64 sees, noise and timesteps included; another key differs
    halves = [data.get_batch('train', 32, 7, rank=r, world_size=2) for r in (0, 1)]
    for key in batch:
        assert torch.equal(torch.cat([h[key] for h in halves]), batch[key])
    assert not torch.equal(data.get_batch('train', 64, 8)['noise'], batch['noise'])
    # logit-normal timesteps crowd the middle: far fewer near the ends than uniform ones
    t_ln = data.get_batch('train', 2000, 1)['t']
    t_un = FlowData(tiny_pixels, {'t_sampling': 'uniform'}).get_batch('train', 2000, 1)['t']
    assert ((t_ln < 0.1) | (t_ln > 0.9)).float().mean() < 0.1 < ((t_un < 0.1) | (t_un > 0.9)).float().mean()
    # latents: FSQ digits mapped to [-1, 1] (levels 3: -1, 0, 1), captions as the condition
    lat = FlowData(tiny_latents, {})
    assert lat.model_args['in_channels'] == 2 and lat.model_args['cond_len'] == 6
    assert lat.model_args['block_size'] == 16 + 6  # the caption goes in front of the 4x4 latent's 16 patches
    assert torch.equal(fsq_latents(torch.tensor([0, 1, 3, 8]), [3, 3]),
                       torch.tensor([[-1., -1.], [0., -1.], [-1., 0.], [1., 1.]]))
    assert set(lat.get_batch('train', 8, 0)['x'].unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_pixel_space_is_the_renders_of_the_captioned_scenes(data_root):
    """flow_space='pixels' on clevr: the rgb renders, rendered once and cached, row i the scene whose caption row i
    holds (a wrong split seed or offset would pair captions with other scenes' pictures and still train)."""
    import clevr
    from data import FlowData, flow_view, load_meta
    name, d = 'tiny_flow_clevr', os.path.join(data_root, 'tiny_flow_clevr')
    truth = {}
    for split, n in (('train', 6), ('val', 2)):
        truth[split] = clevr.render_scenes(n, seed=clevr.SPLIT_SEEDS[split], resolution=16, modalities=('rgb', 'caption'))
        os.makedirs(os.path.join(d, split), exist_ok=True)
        np.save(os.path.join(d, split, 'caption.npy'), truth[split]['caption'].astype(np.int16))
        np.save(os.path.join(d, split, 'rgb.npy'), np.zeros((n, 4), dtype=np.int16))
    meta = {'kind': 'multimodal', 'resolution': 16, 'train_scenes': 6, 'val_scenes': 2, 'modalities': {
        'rgb': {'kind': 'image', 'codec': 'fsq', 'vocab_size': 9, 'levels': [3, 3], 'tokenizer': 'tokenizers/rgb.pt',
                'grid': [2, 2], 'num_tokens': 4},
        'caption': {'kind': 'sequence', 'codec': 'words', 'vocab_size': len(clevr.caption_vocab()),
                    'words': clevr.caption_vocab(), 'grid': [1, clevr.CAPTION_LEN], 'num_tokens': clevr.CAPTION_LEN}}}
    json.dump(meta, open(os.path.join(d, 'meta.json'), 'w'))
    data = FlowData(name, {'flow_space': 'pixels', 'patch_size': 4})
    assert data.model_args['in_channels'] == 3 and data.model_args['image_size'] == 16
    assert data.model_args['block_size'] == 16 + clevr.CAPTION_LEN
    for split in ('train', 'val'):
        assert torch.equal(data.x[split], torch.from_numpy(truth[split]['rgb']).permute(0, 3, 1, 2))
        assert torch.equal(data.cond[split], torch.from_numpy(truth[split]['caption']).long())
    assert os.path.exists(os.path.join(d, 'train', 'rgb_pixels.npy'))  # cached for the next run
    batch = data.get_batch('train', 8, 0)
    assert batch['x'].shape == (8, 3, 16, 16) and batch['x'].min() >= -1 and batch['x'].max() <= 1
    with pytest.raises(DataError, match='choose latent or pixels'):
        flow_view(load_meta(name), space='voxels')


TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--batch_size=16', '--eval_iters=2', '--log_interval=5',
        '--device=cpu', '--max_iters=20', '--eval_interval=20', '--warmup_iters=2', '--learning_rate=3e-3']


@pytest.fixture(scope='module')
def trained_pixels(tiny_pixels, data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('flow') / 'pixels')
    result = run([sys.executable, 'train.py', 'config/flow_fashion_mnist_cpu.py', f'--out_dir={out}',
                  f'--dataset={tiny_pixels}', *TINY], env_extra={'NANO4M_DATA': data_root})
    return out, result.stdout


def test_train_then_sample(trained_pixels, data_root, tmp_path):
    out, log = trained_pixels
    first = float(log.split('step 0: train loss ')[1].split(',')[0])
    last = float(log.split('step 20: train loss ')[1].split(',')[0])
    assert last < first  # 20 steps learn something
    png = str(tmp_path / 'samples.png')
    result = run([sys.executable, 'sample.py', f'--out_dir={out}', '--mode=flow', '--num_samples=3', '--steps=4',
                  '--cfg_scale=2.0', '--return_history=True', f'--image_out={png}'], env_extra={'NANO4M_DATA': data_root})
    assert 'class9' in result.stdout
    from PIL import Image
    img = Image.open(png)
    assert img.size[1] > img.size[0]  # 10 rows (classes) of 3
    strip = Image.open(png.replace('.png', '_history.png'))
    assert strip.size == (2 * (5 * 18 + 2), 2 * (10 * 18 + 2))  # 10 rows of the noise then 4 steps (16 px + 2 pad, x2)


@pytest.mark.parametrize('args,message', [
    (['--classes=3,class12'], "unknown class 'class12'"),
    (['--steps=0'], 'at least one step'),
    (['--method=rk4'], 'choose euler or heun'),
    (['--mode=maskgit'], '--mode=flow'),
])
def test_bad_input_gets_one_line_error(trained_pixels, data_root, args, message):
    out, _ = trained_pixels
    result = run([sys.executable, 'sample.py', f'--out_dir={out}', '--mode=flow', *args],
                 env_extra={'NANO4M_DATA': data_root}, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_caption_conditioned_latents(tiny_latents, data_root, tmp_path):
    out = str(tmp_path / 'latents')
    env = {'NANO4M_DATA': data_root}
    run([sys.executable, 'train.py', 'config/flow_clevr_cpu.py', f'--out_dir={out}', f'--dataset={tiny_latents}',
         *TINY, '--max_iters=10', '--eval_interval=10'], env_extra=env)
    for caption, message in (('a green cube', "unknown word(s) 'green'"),  # outside the caption vocabulary
                             ('a red cube', 'rebuild the dataset')):  # a valid caption, but no tokenizer to decode
        result = run([sys.executable, 'sample.py', f'--out_dir={out}', '--mode=flow', f'--caption={caption}'],
                     env_extra=env, check=False)
        assert result.returncode != 0 and message in result.stderr
        assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1
