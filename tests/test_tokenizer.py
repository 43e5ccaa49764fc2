import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clevr  # noqa: E402
import tokenizer as T  # noqa: E402

torch.set_num_threads(1)  # one thread: 2-thread OpenMP crawls when the CPUs are shared


@pytest.mark.parametrize('channels,size,grid', [(3, 64, 8), (3, 64, 16), (1, 64, 8), (1, 64, 16), (1, 28, 7)])
def test_encode_decode_shapes(channels, size, grid):
    cfg = T.config_for(size, grid, channels)
    assert cfg.grid == grid and cfg.codebook_size == 1000
    model = T.ImageTokenizer(cfg)
    x = torch.rand(2, channels, size, size)
    tokens = model.encode(x)
    assert tokens.shape == (2, grid, grid) and tokens.dtype == torch.long
    assert tokens.min() >= 0 and tokens.max() < cfg.codebook_size
    y = model.decode(tokens)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_fsq_tokens_digits_round_trip():
    fsq = T.FSQ((8, 5, 5, 5))
    tokens = torch.arange(1000).view(1, 10, 100)
    digits = fsq.tokens_to_digits(tokens)
    assert digits.shape == (1, 4, 10, 100)
    assert torch.equal(fsq.digits_to_tokens(digits), tokens)
    # quantize hits every level and nothing else
    z = torch.linspace(-20, 20, 1001).view(1, 1, 1, -1).repeat(1, 4, 1, 1)
    q = fsq.quantize(z)
    assert sorted(q[0, 0].unique().tolist()) == list(range(8))
    assert sorted(q[0, 1].unique().tolist()) == list(range(5))


@pytest.fixture(scope='module')
def tiny_trained():
    data = clevr.render_scenes(48, seed=11, modalities=('rgb',))
    images = T.modality_images(data, 'rgb')  # (48, 3, 64, 64) uint8
    cfg = T.config_for(64, 8, 3)
    model, metrics = T.train_tokenizer(images[:40], images[40:], cfg, max_seconds=0, max_steps=40, batch_size=8,
                                       lr=3e-3, warmup_steps=5, bf16=False, verbose=False)
    return model, metrics, images


def test_training_reduces_loss_and_reconstructs(tiny_trained):
    model, metrics, images = tiny_trained
    assert metrics['steps'] == 40
    assert metrics['last_loss'] < 0.5 * metrics['first_loss']
    x = torch.as_tensor(images[40:]).float() / 255
    recon = model.decode(model.encode(x))
    assert T.psnr(recon.numpy(), x.numpy()) > 17  # the mean image alone gives ~12 dB
    for key in ('val_psnr', 'codes_used', 'perplexity', 'train_seconds'):
        assert key in metrics


def test_crop_training_sees_token_aligned_crops_and_encodes_whole_images(monkeypatch):
    """--crop: each step trains on a crop whose corner lies on the token-cell grid; the model still encodes whole
    images to the full grid."""
    images = np.random.default_rng(0).integers(0, 256, (12, 3, 64, 64), dtype=np.uint8)  # noise: every crop is unique
    cfg = T.config_for(64, 16, 3)
    seen = []
    forward = T.ImageTokenizer.forward
    monkeypatch.setattr(T.ImageTokenizer, 'forward', lambda self, x: (seen.append(x.detach().clone()), forward(self, x))[1])
    model, metrics = T.train_tokenizer(images[:8], images[8:], cfg, max_seconds=0, max_steps=6, batch_size=4, crop=32,
                                       warmup_steps=2, bf16=False, verbose=False)
    assert [c.shape for c in seen[:6]] == [(4, 3, 32, 32)] * 6 and metrics['crop'] == 32
    full = torch.as_tensor(images[:8]).float() / 255
    for crop in seen[:6]:  # find where the first crop of each batch came from: a corner on the 4-pixel cell grid
        where = [(i, j) for i in range(33) for j in range(33)
                 if any(torch.equal(full[n, :, i:i + 32, j:j + 32], crop[0]) for n in range(8))]
        assert len(where) == 1 and where[0][0] % 4 == 0 and where[0][1] % 4 == 0
    assert model.encode(torch.as_tensor(images[8:]).float() / 255).shape == (4, 16, 16)
    # the CLI and prepare.py crop only where it paid: 64x64 images on a 16x16 grid
    assert (T.default_crop(64, 16), T.default_crop(64, 8), T.default_crop(28, 7)) == (32, 0, 0)


def test_save_load_round_trip(tiny_trained, tmp_path):
    model, metrics, images = tiny_trained
    path = str(tmp_path / 'sub' / 'rgb.pt')
    T.save_tokenizer(path, model, metrics)
    assert not os.path.exists(path + '.tmp')
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {'model', 'config', 'metrics'}
    loaded, loaded_metrics = T.load_tokenizer(path)
    assert loaded_metrics == pytest.approx(metrics)
    x = torch.as_tensor(images[:8]).float() / 255
    assert torch.equal(loaded.encode(x), model.eval().encode(x))
    tokens = T.tokenize_images(loaded, images[:8])
    assert tokens.dtype == np.int16 and np.array_equal(tokens, model.encode(x).numpy())
    # same weights; decode may differ in the last float bits (memory format), not more
    assert torch.allclose(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)), atol=1e-5)


def test_tokenizers_saved_before_the_norm_option_still_load(tmp_path):
    """A tokenizer file whose config has no 'norm' key (written before residual blocks had a LayerNorm) loads as a
    norm-free network with the same outputs, so an existing data/clevr is reused, not broken."""
    cfg = T.TokenizerConfig(norm='none')
    model = T.ImageTokenizer(cfg)
    path = str(tmp_path / 'old.pt')
    T.save_tokenizer(path, model, {'val_psnr': 0.0})
    ckpt = torch.load(path, weights_only=True)
    del ckpt['config']['norm']
    assert not any('norm' in k for k in ckpt['model'])
    torch.save(ckpt, path)
    loaded, _ = T.load_tokenizer(path)
    assert loaded.cfg.norm == 'none'
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded.encode(x), model.eval().encode(x))
    new = T.ImageTokenizer(T.TokenizerConfig())  # the default has the norm
    assert new.cfg.norm == 'layernorm' and any('norm' in k for k in new.state_dict())


def test_psnr():
    a = np.random.default_rng(0).random((3, 1, 4, 4))
    assert T.psnr(a, a) >= 99
    b = np.zeros((1, 1, 2, 2))
    c = np.full((1, 1, 2, 2), 0.1)  # MSE 0.01 -> 20 dB
    assert T.psnr(c, b) == pytest.approx(20.0)


def test_depth_abs_rel():
    t = np.array([[2.0, 4.0], [8.0, 100.0]])
    valid = np.array([[True, True], [True, False]])
    assert T.depth_abs_rel(t, t, valid) == 0
    p = np.array([[3.0, 4.0], [6.0, 1.0]])  # |1|/2, 0, |2|/8 over the 3 valid pixels = (0.5 + 0 + 0.25) / 3
    assert T.depth_abs_rel(p, t, valid) == pytest.approx(0.25)


def test_normals_angular_error():
    t = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert T.normals_angular_error(t, t) == pytest.approx(0, abs=1e-5)
    p = np.array([[0.0, 0.0, 5.0], [0.0, 1.0, 0.0]])  # 0 and 90 degrees
    assert T.normals_angular_error(p, t) == pytest.approx(45.0)
    assert T.normals_angular_error(p, t, valid=np.array([False, True])) == pytest.approx(90.0)


def test_edge_f1():
    t = np.array([[1, 0], [1, 0]])
    assert T.edge_f1(t.astype(float), t) == 1.0
    p = np.array([[0.9, 0.8], [0.1, 0.0]])  # tp 1, fp 1, fn 1 -> F1 = 2 / 4
    assert T.edge_f1(p, t) == pytest.approx(0.5)


def test_miou_and_pixel_accuracy():
    t = np.array([[0, 0], [1, 1]])
    assert T.miou(t, t, 3) == 1.0 and T.pixel_accuracy(t, t) == 1.0
    p = np.array([[0, 1], [1, 1]])  # class 0: 1/2, class 1: 2/3, class 2 absent
    assert T.miou(p, t, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert T.pixel_accuracy(p, t) == 0.75


def test_pool_labels():
    labels = np.zeros((1, 4, 4), np.uint8)
    labels[0, :2, :2] = [[1, 1], [1, 0]]  # majority 1
    labels[0, 2:, 2:] = [[2, 2], [0, 0]]  # tie 2 vs 0 -> lower class 0
    pooled = T.pool_labels(labels, 2, 3)
    assert pooled.tolist() == [[[1, 0], [0, 0]]]
    assert T.upsample_labels(pooled, 4).shape == (1, 4, 4)


def test_object_colour_accuracy():
    H = 4
    inst = np.zeros((1, H, H), np.uint8)
    inst[0, :2] = 1
    inst[0, 2:] = 2
    objects = [[{'colour': 'red'}, {'colour': 'blue'}]]
    rgb = np.zeros((1, H, H, 3), np.uint8)
    rgb[0, :2] = (clevr.PALETTE[1] * 0.5).astype(np.uint8)  # a darker red is still red
    rgb[0, 2:] = clevr.PALETTE[2]
    assert T.object_colour_accuracy(rgb, inst, objects) == 1.0
    rgb[0, 2:] = clevr.PALETTE[3]  # the blue object rendered green
    assert T.object_colour_accuracy(rgb, inst, objects) == 0.5


def test_read_idx(tmp_path):
    import gzip
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype='>i4').tobytes() + data.tobytes()
    path = str(tmp_path / 'x-idx3-ubyte.gz')
    with gzip.open(path, 'wb') as f:
        f.write(raw)
    assert np.array_equal(T.read_idx(path), data)


def test_modality_images_depth_round_trip():
    data = clevr.render_scenes(2, seed=0, modalities=('depth', 'depth_valid'))
    img = T.modality_images(data, 'depth')
    assert img.shape == (2, 1, 64, 64) and img.min() >= 0 and img.max() <= 1
    back = T.images_to_depth(img)
    assert T.depth_abs_rel(back, data['depth'], data['depth_valid']) < 1e-5


def test_adamw_alone_still_trains_and_unknown_optimizers_are_refused():
    data = clevr.render_scenes(24, seed=12, modalities=('rgb',))
    images = T.modality_images(data, 'rgb')
    cfg = T.config_for(64, 8, 3)
    _, metrics = T.train_tokenizer(images[:20], images[20:], cfg, max_seconds=0, max_steps=30, batch_size=8,
                                   optimizer='adamw', lr=3e-3, warmup_steps=5, bf16=False, verbose=False)
    assert metrics['optimizer'] == 'adamw' and metrics['muon_lr'] is None
    assert metrics['last_loss'] < 0.5 * metrics['first_loss']
    with pytest.raises(ValueError, match="'muon' or 'adamw'"):
        T.train_tokenizer(images[:20], images[20:], cfg, max_steps=1, optimizer='sgd')
