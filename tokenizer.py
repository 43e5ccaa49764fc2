"""
Discrete image tokenizers trained here: a small convolutional autoencoder with an FSQ bottleneck.

Why FSQ (finite scalar quantisation) and not a VQ codebook: each of the 4 latent channels is squashed to a
bounded range and rounded to one of L_i levels, and the token is the mixed-radix number of the 4 digits. There
is no learned codebook, so no codebook collapse or dead codes, and no commitment loss / EMA updates / dead-code
restarts to tune. An early prototype measured FSQ [8,5,5,5] above an EMA VQ with restarts at equal time on both
grids (37.1 vs 35.1 dB at 16x16, 33.3 vs 30.8 dB at 8x8), using 99% of codes, and 14-27% faster per image.

Also here: the metrics later evaluation code reuses (psnr, depth_abs_rel, normals_angular_error, edge_f1, miou,
pixel_accuracy, object_colour_accuracy), the network-free semseg tokenization (majority pooling to the token
grid), and a CLI:

    python tokenizer.py --dataset=clevr --modality=rgb --grid=8 --max_seconds=180
    python tokenizer.py --dataset=fashion_mnist --max_seconds=120

which renders/reads its own images, trains, prints the metrics and saves data/<dataset>/tokenizers/<name>.pt
(name = <modality> for the default grid, <modality>_g<grid> otherwise). On a shared machine add
--threads=1 --clock=cpu: the budget then counts CPU seconds, and one thread avoids OpenMP stalls.

Training: Muon (optim.Muon) for the hidden convs, AdamW for the rest, no flips for rgb (the light is fixed): in the
3-minute budget on 2 CPU cores, 32.7 dB at 8x8 and 36.4 dB at 16x16 on clevr val (docs/results.md).

FSQ caveat: a sigmoid-bounded latent stops getting gradient once |z| is large; training adds a penalty on
|z| beyond 4 (zero in the useful range) after a normals run saturated and collapsed to one code without it.
"""

import argparse
import gzip
import json
import math
import os
import time
from dataclasses import dataclass, asdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import clevr
from common import cpu_has_bf16
from optim import Muon

# -----------------------------------------------------------------------------
# model


@dataclass
class TokenizerConfig:
    in_channels: int = 3
    image_size: int = 64
    patch: int = 4  # pixel-unshuffle factor of the stem: (C, H, W) -> (C*p*p, H/p, W/p), cheap vs full-res convs
    widths: tuple = (96, 192)  # channels after the stem, then after each further 2x downsampling
    res_blocks: tuple = (1, 2)  # residual blocks at each of those resolutions (encoder and decoder)
    levels: tuple = (8, 5, 5, 5)  # FSQ levels per latent channel; codebook size = their product
    norm: str = 'layernorm'  # in each residual block: 'layernorm' over channels, or 'none' (tokenizers saved before it)

    @property
    def grid(self):
        return self.image_size // self.patch // 2 ** (len(self.widths) - 1)

    @property
    def codebook_size(self):
        return int(np.prod(self.levels))


def config_for(image_size, grid, in_channels):
    """Default architecture for an image size and token grid (64->8, 64->16, 28->7). On 2 CPU cores compute is
    the limit, so no conv runs at full resolution: the stem folds p x p pixels into channels."""
    if image_size // grid == 8:  # 64 -> 16 -> 8
        return TokenizerConfig(in_channels, image_size, patch=4, widths=(64, 128), res_blocks=(1, 2))
    if image_size // grid == 4:  # 64 -> 16, 28 -> 7
        return TokenizerConfig(in_channels, image_size, patch=4, widths=(64,), res_blocks=(3,))
    raise ValueError(f"no default architecture for {image_size}x{image_size} -> {grid}x{grid}")


def default_crop(image_size, grid):
    """The training crop for a grid: 32x32 for 64 -> 16 (+1.3 dB at equal time, docs/log.md), else whole images (at 8x8
    the encoder's receptive field spans most of a 32-pixel crop, and crops hurt)."""
    return 32 if (image_size, grid) == (64, 16) else 0


class ResBlock(nn.Module):
    # pre-norm residual block; a zero-initialised second conv starts it as the identity. The norm is a LayerNorm over
    # the channels of each pixel, not GroupNorm: in channels_last memory the channels are the contiguous last axis,
    # so it costs ~5% of a step where GroupNorm is slow on CPU, and it was worth +0.45 dB at equal time (docs/log.md)
    def __init__(self, ch, norm):
        super().__init__()
        self.norm = nn.LayerNorm(ch) if norm == 'layernorm' else nn.Identity()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):  # x: (B, C, H, W)
        h = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv2(F.silu(self.conv1(F.silu(h))))


class FSQ(nn.Module):
    """Finite scalar quantisation: channel i is mapped by a scaled sigmoid into (0, L_i - 1) and rounded, with a
    straight-through gradient. Codes are the digits of a mixed-radix number."""

    def __init__(self, levels):
        super().__init__()
        self.register_buffer('levels', torch.tensor(levels, dtype=torch.float32), persistent=False)
        basis = np.cumprod([1] + list(levels[:-1]))
        self.register_buffer('basis', torch.tensor(basis, dtype=torch.long), persistent=False)

    def quantize(self, z):  # z: (B, D, h, w) float32 -> digits (B, D, h, w) float32 in {0..L-1}
        lv = self.levels.view(1, -1, 1, 1)
        bounded = (lv - 1) * torch.sigmoid(z)
        return bounded + (torch.round(bounded) - bounded).detach()  # straight-through estimator

    def digits_to_latent(self, digits):  # map {0..L-1} to [-1, 1] for the decoder
        return digits / (self.levels.view(1, -1, 1, 1) - 1) * 2 - 1

    def digits_to_tokens(self, digits):  # (B, D, h, w) -> (B, h, w) long
        return (digits.round().long() * self.basis.view(1, -1, 1, 1)).sum(1)

    def tokens_to_digits(self, tokens):  # (B, h, w) long -> (B, D, h, w) float
        lv = self.levels.long().view(1, -1, 1, 1)
        return ((tokens.unsqueeze(1) // self.basis.view(1, -1, 1, 1)) % lv).float()


class ImageTokenizer(nn.Module):

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, nres, D, p = cfg.widths, cfg.res_blocks, len(cfg.levels), cfg.patch
        enc = [nn.PixelUnshuffle(p), nn.Conv2d(cfg.in_channels * p * p, w[0], 3, padding=1)]  # (B, w0, H/p, W/p)
        enc += [ResBlock(w[0], cfg.norm) for _ in range(nres[0])]
        for i in range(1, len(w)):
            enc.append(nn.Conv2d(w[i - 1], w[i], 2, stride=2))  # (B, w[i], H/p/2^i, W/p/2^i)
            enc += [ResBlock(w[i], cfg.norm) for _ in range(nres[i])]
        enc += [nn.SiLU(), nn.Conv2d(w[-1], D, 1)]  # (B, D, h, w) latent
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(D, w[-1], 3, padding=1)]
        dec += [ResBlock(w[-1], cfg.norm) for _ in range(nres[-1])]
        for i in range(len(w) - 1, 0, -1):
            dec += [nn.SiLU(), nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2)]  # 2x upsampling
            dec += [ResBlock(w[i - 1], cfg.norm) for _ in range(nres[i - 1])]
        dec += [nn.SiLU(), nn.Conv2d(w[0], cfg.in_channels * p * p, 3, padding=1), nn.PixelShuffle(p)]  # (B, C, H, W)
        self.decoder = nn.Sequential(*dec)
        self.fsq = FSQ(cfg.levels)

    def forward(self, images):
        """images (B, C, H, W) in [0, 1] -> reconstruction (unclamped), digits (B, D, h, w), latent z (B, D, h, w)."""
        z = self.encoder(images * 2 - 1).float()  # FSQ in fp32 even under autocast
        digits = self.fsq.quantize(z)
        recon = self.decoder(self.fsq.digits_to_latent(digits))
        return recon, digits, z

    @torch.no_grad()
    def encode(self, images):
        """images float (B, C, H, W) in [0, 1] -> tokens (B, h, w) long in [0, codebook_size)."""
        z = self.encoder(images * 2 - 1).float()
        return self.fsq.digits_to_tokens(self.fsq.quantize(z))

    @torch.no_grad()
    def features(self, images):
        """images float (B, C, H, W) in [0, 1] -> the encoder's last hidden features (B, widths[-1], h, w), before the
        1x1 conv that squeezes them to the latent's D channels: what a vision-language model reads (vlm.py)."""
        return self.encoder[:-1](images * 2 - 1).float()

    @torch.no_grad()
    def decode(self, tokens):
        """tokens (B, h, w) long -> images float (B, C, H, W) clamped to [0, 1]."""
        recon = self.decoder(self.fsq.digits_to_latent(self.fsq.tokens_to_digits(tokens)))
        return recon.float().clamp(0, 1)

# -----------------------------------------------------------------------------
# training


def _to_float(batch):
    """uint8 -> [0, 1]; float arrays are taken as already in [0, 1]."""
    batch = torch.as_tensor(batch)
    return batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()


@torch.no_grad()
def reconstruct(model, images, batch_size=256, bf16=False):
    """images (N, C, H, W) uint8 or float in [0, 1] -> (reconstructions float32 numpy (N, C, H, W), tokens (N, h, w))"""
    model.eval()
    device = next(model.parameters()).device.type
    recons, tokens = [], []
    for i in range(0, len(images), batch_size):
        x = _to_float(images[i:i + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            tok = model.encode(x)
            recons.append(model.decode(tok).float().cpu().numpy())
        tokens.append(tok.cpu().numpy())
    return np.concatenate(recons), np.concatenate(tokens)


def image_features(model, images, batch_size=256):
    """images (N, C, H, W) uint8 or float in [0, 1] -> encoder features (N, h·w, widths[-1]) float16 numpy, cells in
    raster order."""
    model.eval()
    device = next(model.parameters()).device.type
    out = []
    for i in range(0, len(images), batch_size):
        x = _to_float(images[i:i + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
        out.append(model.features(x).flatten(2).transpose(1, 2).cpu().numpy().astype(np.float16))
    return np.concatenate(out)


def tokenize_images(model, images, batch_size=256, bf16=False):
    """images (N, C, H, W) uint8 or float in [0, 1] -> tokens (N, h, w) int16 numpy (codebook <= 32768)."""
    model.eval()
    device = next(model.parameters()).device.type
    out = []
    for i in range(0, len(images), batch_size):
        x = _to_float(images[i:i + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out.append(model.encode(x).cpu().numpy().astype(np.int16))
    return np.concatenate(out)


def train_tokenizer(train_images, val_images, cfg, max_seconds=180.0, max_steps=None, batch_size=32, lr=2e-3,
                    muon_lr=0.01, optimizer='muon', warmup_steps=100, cooldown=0.3, weight_decay=0.01, l1_weight=0.0,
                    latent_penalty=1.0, bf16=None, hflip=False, seed=0, crop=0, device='cpu', clock='wall',
                    log_every=200, verbose=True):
    """Train an ImageTokenizer on (N, C, H, W) uint8 (or float in [0, 1]) images until max_seconds or max_steps.
    optimizer 'muon': Muon (muon_lr) for the hidden convs, AdamW (lr) for the convs that touch pixels or the latent,
    and for biases and norms; 'adamw': AdamW (lr) for everything. The LRs warm up linearly, hold, and decay linearly
    to 0 over the last `cooldown` share of the time (or step) budget, whichever is nearer: on a 3-minute budget a
    cosine starts decaying too early (0.5-0.7 dB lower at equal time).
    hflip: random horizontal flips. Not for normals (their x component would flip), nor clevr rgb: the light is fixed,
    so a mirrored scene has shading and shadows that no real one has (-0.5 dB at 16x16, -0.1 dB at 8x8 with flips).
    crop: train on random crop x crop windows aligned to the token cells (0: whole images). The net is fully
    convolutional, so it still encodes whole images; a 32x32 crop costs a quarter of a 64x64 image per step.
    clock: 'wall' counts max_seconds in wall time; 'cpu' in process CPU time divided by torch's thread count,
    i.e. the wall time the same work takes on that many dedicated cores (for fair budgets on a shared machine;
    spin-waiting threads count too, so it errs on the short side).
    Returns (model, metrics) with val psnr, codebook usage and perplexity, steps, images/s, train seconds."""
    assert max_seconds or max_steps, "give max_seconds or max_steps (or both)"
    if optimizer not in ('muon', 'adamw'):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', not {optimizer!r}")
    torch.manual_seed(seed)
    if bf16 is None:
        bf16 = cpu_has_bf16() if device == 'cpu' else torch.cuda.is_bf16_supported()
    model = ImageTokenizer(cfg).to(device).to(memory_format=torch.channels_last)
    # Muon for the hidden convs: +0.6 dB at 8x8 and +1.0 dB at 16x16 over AdamW alone at equal time (docs/log.md). The
    # stem and output convs (pixels) and the two convs at the 4-channel latent stay on AdamW: Muon is made for
    # hidden layers, and an orthogonalised (4, 128) update would move every latent channel at full rate
    outer = {id(m.weight) for m in (model.encoder[1], model.encoder[-1], model.decoder[0], model.decoder[-2])}
    hidden = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in outer] if optimizer == 'muon' else []
    hidden_ids = {id(p) for p in hidden}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in hidden_ids]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    betas = (0.9, 0.95)  # beta2 0.95, not 0.99: +1.1-1.4 dB at equal time
    if hidden:
        groups.append({'params': hidden, 'muon': True, 'lr': muon_lr, 'lr_scale': muon_lr / lr})
        opt = Muon(groups, lr=lr, betas=betas, ns_dtype=torch.bfloat16 if bf16 else torch.float32)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas)
    train_images = torch.as_tensor(train_images)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    now = time.time if clock == 'wall' else (lambda: time.process_time() / threads)
    t0, wall0 = now(), time.time()
    step, seen, loss_ema = 0, 0, None
    losses = []
    while True:
        elapsed = now() - t0
        progress = elapsed / max_seconds if max_seconds else 0.0
        if max_steps:
            progress = max(progress, step / max_steps)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / warmup_steps)
        lr_now = lr * warm * min(1.0, (1.0 - progress) / cooldown)
        for g in opt.param_groups:
            g['lr'] = lr_now * g.get('lr_scale', 1.0)
        idx = torch.randint(len(train_images), (batch_size,), generator=gen)
        x = _to_float(train_images[idx])
        if hflip:
            flip = torch.rand(batch_size, generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
        if crop:
            cell = cfg.image_size // cfg.grid
            i, j = (cell * torch.randint((cfg.image_size - crop) // cell + 1, (2,), generator=gen)).tolist()
            x = x[..., i:i + crop, j:j + crop]
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        model.train()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            recon, _, z = model(x)
        recon = recon.float()
        loss = F.mse_loss(recon, x)
        # the sigmoid bound of FSQ has no gradient once |z| is large: a run on normals drifted to |z| ~ 1000 and
        # collapsed to a single code. Penalise only |z| beyond 4 (sigmoid(4) = 0.98 already reaches every level),
        # so the penalty is zero in the useful range and pulls saturated latents back
        loss = loss + latent_penalty * F.relu(z.abs() - 4).pow(2).mean()
        if l1_weight:
            loss = loss + l1_weight * F.l1_loss(recon, x)
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += batch_size
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        losses.append(loss.item())
        if verbose and step % log_every == 0:
            print(f"step {step} | loss {loss_ema:.5f} (~{-10 * math.log10(max(loss_ema, 1e-10)):.1f} dB) | "
                  f"lr {lr_now:.2e} | {seen / (now() - t0):.0f} img/s | {now() - t0:.0f}s ({clock} clock)", flush=True)
    train_seconds, wall_seconds = now() - t0, time.time() - wall0
    recon, tokens = reconstruct(model, val_images, bf16=bf16)
    metrics = dict(val_psnr=psnr(recon, _to_float(val_images).numpy()), **codebook_usage(tokens, cfg.codebook_size),
                   steps=step, images_seen=seen, train_seconds=round(train_seconds, 1), clock=clock,
                   wall_seconds=round(wall_seconds, 1), threads=threads,
                   images_per_second=round(seen / train_seconds, 1), bf16=bool(bf16), batch_size=batch_size, crop=crop, lr=lr,
                   optimizer=optimizer, muon_lr=muon_lr if hidden else None,
                   first_loss=losses[0], last_loss=float(np.mean(losses[-20:])))
    return model, metrics


def save_tokenizer(path, model, metrics):
    """Write {'model': state_dict, 'config': dict, 'metrics': dict} atomically (temp file + os.replace), loadable
    with torch.load(weights_only=True)."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    cfg = asdict(model.cfg)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path + '.tmp'
    torch.save({'model': state, 'config': cfg, 'metrics': json.loads(json.dumps(metrics))}, tmp)
    os.replace(tmp, path)


def load_tokenizer(path, device='cpu'):
    """-> (model in eval mode, metrics dict)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    saved = {'norm': 'none', **ckpt['config']}  # tokenizers saved before the norm option had none
    cfg = TokenizerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    model = ImageTokenizer(cfg).to(device)
    model.load_state_dict(ckpt['model'])
    model.eval()
    return model, ckpt['metrics']

# -----------------------------------------------------------------------------
# metrics (numpy in, python float out), reusable by later evaluation code


def psnr(pred, target, max_val=1.0):
    """Mean over images of per-image PSNR in dB; images (N, ...) in [0, max_val]. A perfect image scores 100 dB
    (its MSE is floored at 1e-10) rather than inf, so the mean stays finite."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    mse = ((pred - target) ** 2).reshape(len(pred), -1).mean(1)
    return float(np.mean(10 * np.log10(max_val ** 2 / np.maximum(mse, 1e-10))))


def codebook_usage(tokens, codebook_size):
    """Fraction of codes used at least once and the perplexity exp(entropy) of the code histogram."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=codebook_size)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    return dict(codes_used=float((counts > 0).mean()), perplexity=float(np.exp(entropy)))


def depth_abs_rel(pred, target, valid=None):
    """Mean |pred - target| / target over valid pixels (the sky excluded)."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    valid = np.ones(target.shape, bool) if valid is None else np.asarray(valid, bool)
    return float(np.mean(np.abs(pred[valid] - target[valid]) / target[valid]))


def depth_delta1(pred, target, valid=None, threshold=1.25):
    """Share of valid pixels whose depth is within a factor `threshold` of the truth: max(p/t, t/p) < 1.25."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    valid = np.ones(target.shape, bool) if valid is None else np.asarray(valid, bool)
    p, t = pred[valid], target[valid]
    return float(np.mean(np.maximum(p / t, t / p) < threshold))


def normals_angular_error(pred, target, valid=None):
    """Mean angle in degrees between (..., 3) normal maps over valid pixels; pred need not be unit length."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    valid = np.ones(target.shape[:-1], bool) if valid is None else np.asarray(valid, bool)
    p, t = pred[valid], target[valid]
    cos = (p * t).sum(-1) / np.maximum(np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1), 1e-12)
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())


def edge_f1(pred, target, threshold=0.5):
    """F1 of the binary map pred > threshold against target > 0.5, over all pixels. 1.0 when both are empty."""
    p, t = np.asarray(pred) > threshold, np.asarray(target) > 0.5
    tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
    return 1.0 if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))


def class_ious(pred, target, num_classes):
    """IoU per class, accumulated over all pixels of all images; NaN for a class in neither pred nor target."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    ious = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        ious.append(inter / union if union else float('nan'))
    return ious


def miou(pred, target, num_classes):
    """Mean IoU over the classes present in target or pred."""
    return float(np.nanmean(class_ious(pred, target, num_classes)))


def pixel_accuracy(pred, target):
    return float(np.mean(np.asarray(pred) == np.asarray(target)))


def object_colour_accuracy(rgb, instance, objects, palette=None, colour_names=None):
    """Share of visible objects whose mean colour over their pixels is nearest to their true palette colour, after
    the best brightness scale per palette colour (shading moves even the original pixels off the palette, so
    colours are compared up to brightness). rgb (N, H, W, 3) uint8 or float in [0, 1]; instance (N, H, W) with
    k = k-th object (1-based); objects: per scene list of dicts with 'colour'."""
    palette = (clevr.PALETTE if palette is None else np.asarray(palette)).astype(np.float64) / 255.0  # (P, 3)
    colour_names = clevr.COLOURS if colour_names is None else colour_names
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.max() > 1.5:
        rgb = rgb / 255.0
    correct = total = 0
    for img, inst, objs in zip(rgb, instance, objects):
        for k, obj in enumerate(objs):
            mask = inst == k + 1
            if not mask.any():
                continue
            c = img[mask].mean(0)  # (3,)
            scale = np.maximum(palette @ c / (palette * palette).sum(1), 0)  # least-squares brightness per colour
            err = ((scale[:, None] * palette - c) ** 2).sum(1)
            correct += colour_names[int(err.argmin())] == obj['colour']
            total += 1
    return float(correct / max(total, 1))

# -----------------------------------------------------------------------------
# tokenization without a network: semseg by majority pooling


def pool_labels(labels, grid, num_classes):
    """(N, H, W) int labels -> (N, grid, grid) uint8 majority label per cell (ties go to the lower class)."""
    N, H, W = labels.shape
    cell = H // grid
    blocks = labels.reshape(N, grid, cell, grid, cell).transpose(0, 1, 3, 2, 4).reshape(N, grid, grid, -1)
    counts = np.stack([(blocks == c).sum(-1) for c in range(num_classes)], -1)  # (N, g, g, K)
    return counts.argmax(-1).astype(np.uint8)


def upsample_labels(grid_labels, size):
    """Nearest-neighbour upsampling of (N, g, g) labels to (N, size, size)."""
    cell = size // grid_labels.shape[-1]
    return grid_labels.repeat(cell, axis=-2).repeat(cell, axis=-1)

# -----------------------------------------------------------------------------
# modalities as autoencoder images in [0, 1]

DEPTH_MIN = 2.0  # nearer than any surface the camera sees
DEPTH_MAX = 40.0  # = clevr.MAX_GROUND_DISTANCE; the sky (FAR_DEPTH) is clipped here, it is excluded from metrics


def modality_images(data, modality):
    """clevr.render_scenes output -> (N, C, H, W) images for the autoencoder: uint8 for rgb, normals, edges;
    float32 log-depth for depth (8 bits would cap abs-rel near 0.3%)."""
    if modality == 'rgb':
        return np.ascontiguousarray(data['rgb'].transpose(0, 3, 1, 2))
    if modality == 'normals':  # world-frame unit vectors -> [0, 1]; the sky (0 vector) becomes 0.5 grey
        return np.ascontiguousarray((np.round((data['normals'] + 1) * 127.5)).astype(np.uint8).transpose(0, 3, 1, 2))
    if modality == 'edges':
        return (data['edges'] * 255).astype(np.uint8)[:, None]
    if modality == 'depth':
        d = np.clip(data['depth'], DEPTH_MIN, DEPTH_MAX)
        return ((np.log(d) - np.log(DEPTH_MIN)) / (np.log(DEPTH_MAX) - np.log(DEPTH_MIN))).astype(np.float32)[:, None]
    raise ValueError(f"unknown modality {modality!r}; expected rgb, depth, normals or edges")


def images_to_depth(images):
    """(N, 1, H, W) log-depth images in [0, 1] -> (N, H, W) depth."""
    return np.exp(images[:, 0] * (np.log(DEPTH_MAX) - np.log(DEPTH_MIN)) + np.log(DEPTH_MIN))


def evaluate_clevr(model, val, modality, bf16=False):
    """Modality-specific errors of decode(encode(x)) on rendered val scenes (dict from clevr.render_scenes)."""
    images = modality_images(val, modality)
    recon, tokens = reconstruct(model, images, bf16=bf16)
    out = dict(val_psnr=psnr(recon, _to_float(images).numpy()), **codebook_usage(tokens, model.cfg.codebook_size))
    if modality == 'rgb':
        out['object_colour_accuracy'] = object_colour_accuracy(recon.transpose(0, 2, 3, 1), val['instance'], val['objects'])
        out['object_colour_accuracy_of_originals'] = object_colour_accuracy(val['rgb'], val['instance'], val['objects'])
    elif modality == 'depth':
        out['depth_abs_rel'] = depth_abs_rel(images_to_depth(recon), val['depth'], val['depth_valid'])
    elif modality == 'normals':
        out['normals_angular_error_deg'] = normals_angular_error(recon.transpose(0, 2, 3, 1) * 2 - 1, val['normals'],
                                                                 val['depth_valid'])
    elif modality == 'edges':
        out['edge_f1'] = edge_f1(recon[:, 0], val['edges'])
    return out


def semseg_pooling_bound(val, grid):
    """Pixel accuracy and mIoU of the majority-pooled semseg grid upsampled back: the best a label-grid token can do."""
    pooled = pool_labels(val['semseg'], grid, clevr.NUM_SEMSEG_CLASSES)
    up = upsample_labels(pooled, val['semseg'].shape[-1])
    return dict(semseg_pixel_accuracy=pixel_accuracy(up, val['semseg']),
                semseg_miou=miou(up, val['semseg'], clevr.NUM_SEMSEG_CLASSES))

# -----------------------------------------------------------------------------
# Fashion-MNIST


def read_idx(source):
    """An IDX file (the MNIST format), gzipped or not, given as a path or its bytes -> numpy array.
    Header: 2 zero bytes, type code 0x08 (uint8), the number of dimensions, each dimension a big-endian int32."""
    raw = source if isinstance(source, bytes) else open(source, 'rb').read()
    if raw[:2] == b'\x1f\x8b':
        raw = gzip.decompress(raw)
    if raw[:3] != b'\x00\x00\x08':
        raise ValueError("not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype='>i4', count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))
    return data.copy()  # writable, so torch.as_tensor does not warn

# -----------------------------------------------------------------------------
# CLI


def main():
    ap = argparse.ArgumentParser(description="Train an FSQ image tokenizer on CLEVR-like scenes or Fashion-MNIST.")
    ap.add_argument('--dataset', default='clevr', choices=['clevr', 'fashion_mnist'])
    ap.add_argument('--modality', default='rgb', choices=['rgb', 'depth', 'normals', 'edges'])
    ap.add_argument('--grid', type=int, default=None, help="token grid side (clevr default 8, fashion_mnist 7)")
    ap.add_argument('--max_seconds', type=float, default=180.0)
    ap.add_argument('--max_steps', type=int, default=0, help="stop after this many steps (0: only the time budget)")
    ap.add_argument('--num_train', type=int, default=20000, help="clevr training scenes rendered")
    ap.add_argument('--num_val', type=int, default=1000, help="clevr held-out scenes (a different seed)")
    ap.add_argument('--input', default=None, help="fashion_mnist: a folder with the IDX files (default: Debian's)")
    ap.add_argument('--batch_size', type=int, default=32)
    ap.add_argument('--lr', type=float, default=2e-3, help="AdamW's peak LR")
    ap.add_argument('--optimizer', default='muon', choices=['muon', 'adamw'], help="muon: Muon for the hidden convs")
    ap.add_argument('--muon_lr', type=float, default=0.01)
    ap.add_argument('--crop', type=int, default=None,
                    help="train on random crops of this size (0: whole images; default: 32 for 64 -> 16, else 0)")
    ap.add_argument('--l1_weight', type=float, default=0.0)
    ap.add_argument('--bf16', default='auto', choices=['auto', '0', '1'], help="bf16 autocast; auto = if the CPU has it")
    ap.add_argument('--threads', type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument('--clock', default='wall', choices=['wall', 'cpu'],
                    help="max_seconds in wall time, or in CPU time / threads (fair on a shared machine)")
    ap.add_argument('--widths', default=None, help="override the architecture, e.g. 64,128")
    ap.add_argument('--res_blocks', default=None, help="override the architecture, e.g. 1,2")
    ap.add_argument('--patch', type=int, default=None, help="override the stem's pixel-unshuffle factor")
    ap.add_argument('--levels', default=None, help="override the FSQ levels, e.g. 8,5,5,5 (codebook = their product)")
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=None, help="output path (default data/<dataset>/tokenizers/<name>.pt)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = None if args.bf16 == 'auto' else args.bf16 == '1'

    t0 = time.time()
    if args.dataset == 'clevr':
        grid = args.grid or 8
        mods = {'rgb': ('rgb',), 'depth': ('depth',), 'normals': ('normals',), 'edges': ('edges',)}[args.modality]
        # the same split seeds as the 4M data, so the tokenizer's held-out scenes are the val split's first scenes
        train = clevr.render_scenes(args.num_train, seed=clevr.SPLIT_SEEDS['train'] + args.seed, modalities=mods)
        val = clevr.render_scenes(args.num_val, seed=clevr.SPLIT_SEEDS['val'], modalities=clevr.ALL_MODALITIES)
        train_images, val_images = modality_images(train, args.modality), modality_images(val, args.modality)
        del train  # the raw scenes; only their images are kept
        cfg = config_for(64, grid, train_images.shape[1])
        name = args.modality if grid == 8 else f"{args.modality}_g{grid}"
        hflip = args.modality in ('depth', 'edges')  # see train_tokenizer: not rgb (fixed light), not normals
    else:
        root = args.input or '/usr/share/datasets/fashion-mnist'  # the Debian package dataset-fashion-mnist
        paths = [os.path.join(root, f'{split}-images-idx3-ubyte.gz') for split in ('train', 't10k')]
        if not all(os.path.exists(p) for p in paths):
            raise SystemExit(f"no Fashion-MNIST IDX files in {root}: pass --input=DIR, or apt-get install "
                             f"dataset-fashion-mnist, or run python prepare.py fashion_mnist (it downloads them)")
        train_images, val_images = (read_idx(p)[:, None] for p in paths)  # (N, 1, 28, 28) uint8
        grid = args.grid or 7
        cfg = config_for(28, grid, 1)
        name = 'images' if grid == 7 else f'images_g{grid}'
        hflip = True
    if args.widths:
        cfg.widths = tuple(int(v) for v in args.widths.split(','))
        cfg.res_blocks = tuple(int(v) for v in args.res_blocks.split(','))
    if args.patch:
        cfg.patch = args.patch
    if args.levels:
        cfg.levels = tuple(int(v) for v in args.levels.split(','))
    if cfg.grid != grid:
        raise SystemExit(f"the architecture gives a {cfg.grid}x{cfg.grid} grid, not {grid}x{grid}: "
                         f"image_size / patch / 2^(len(widths) - 1) must equal --grid")
    print(f"data ready in {time.time() - t0:.1f}s: train {train_images.shape} val {val_images.shape}; config {cfg}")

    model, metrics = train_tokenizer(train_images, val_images, cfg, max_seconds=args.max_seconds,
                                     max_steps=args.max_steps or None, batch_size=args.batch_size, lr=args.lr,
                                     optimizer=args.optimizer, muon_lr=args.muon_lr,
                                     l1_weight=args.l1_weight, bf16=bf16, hflip=hflip, seed=args.seed,
                                     crop=default_crop(cfg.image_size, grid) if args.crop is None else args.crop,
                                     clock=args.clock)
    metrics.update(dataset=args.dataset, modality=args.modality if args.dataset == 'clevr' else 'images', grid=grid,
                   codebook_size=cfg.codebook_size, num_params=sum(p.numel() for p in model.parameters()),
                   num_train=len(train_images), num_val=len(val_images))
    if args.dataset == 'clevr':
        metrics.update(evaluate_clevr(model, val, args.modality, bf16=metrics['bf16']))
        metrics.update(semseg_pooling_bound(val, grid))
    out = args.out or os.path.join(os.environ.get('NANO4M_DATA', 'data'), args.dataset, 'tokenizers', f'{name}.pt')
    save_tokenizer(out, model, metrics)
    print(json.dumps(metrics, indent=1))
    print(f"saved {out}")


if __name__ == '__main__':
    main()
