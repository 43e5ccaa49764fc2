"""
The flow family: rectified flow (flow matching on straight paths) with a DiT built from model.py's blocks.

Training: an image (or a tokenizer latent) x and noise ε ~ N(0, 1) are mixed as x_t = (1 − t)·x + t·ε; the
network predicts the velocity v = ε − x from (x_t, t, condition) and the loss is the MSE to it. t comes from a
logit-normal (sigmoid of N(0, 1), which spends the steps on the middle of the path, where predicting v is
hardest) or a uniform distribution (config.t_sampling). The condition (class label, or caption word ids) is
replaced by the 'no condition' id with probability cond_drop by the data, so the same network is also the
unconditional model that classifier-free guidance needs.

The network (DiT, Peebles & Xie 2023): patchify -> blocks with adaptive-norm conditioning -> unpatchify.
Each block reads a conditioning vector c = embed(t) + embed(condition) and turns it into a shift, a scale and
a gate for its attention and its MLP (adaLN-Zero: the gates start at zero, so every block starts as the
identity and the network as the zero velocity). A caption (cond_len > 1) also goes in front of the patches as
tokens, so attention can read the words in order; a class label (cond_len = 1) only goes through c.

Sampling is decoding.flow_sample (Euler or Heun from t = 1 to 0, CFG on the velocities).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from decoding import flow_sample
from model import MLP, Attention, Norm, init_weights, patchify, readout, rope_2d, sincos_1d, sincos_2d


def modulate(x, shift, scale):
    """x (B, T, C) normalised; shift, scale (B, C): the adaptive norm's affine part, per sample."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm attention and MLP, each modulated by c: x + gate·f(norm(x)·(1 + scale) + shift). The Linear that
    maps c to the six (shift, scale, gate) vectors starts at zero (adaLN-Zero), so the block is the identity at
    init and the scale starts at 1."""

    def __init__(self, config):
        super().__init__()
        self.norm1 = Norm(config)
        self.attn = Attention(config)
        self.norm2 = Norm(config)
        self.mlp = MLP(config)
        self.ada = nn.Linear(config.n_embd, 6 * config.n_embd)  # c -> shift, scale, gate for attention and MLP

    def forward(self, x, c, rope=None):  # x (B, T, C), c (B, C)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), rope=rope)
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FlowDiT(nn.Module):

    def __init__(self, config):
        super().__init__()
        c = config
        assert c.image_size > 0 and c.in_channels > 0 and c.patch_size > 0, \
            "flow needs image_size, in_channels and patch_size (an image dataset sets them)"
        assert c.image_size % c.patch_size == 0, \
            f"image_size {c.image_size} is not a multiple of patch_size {c.patch_size}"
        assert c.pos in ('learned', 'sincos', 'rope', 'none'), f"unknown pos {c.pos!r}"
        assert c.norm_placement == 'pre', "flow's adaptive norms sit before attention and MLP: norm_placement='pre'"
        assert c.t_sampling in ('logit_normal', 'uniform'), \
            f"unknown t_sampling {c.t_sampling!r}: 'logit_normal' or 'uniform'"
        assert c.flow_target in ('v', 'x'), f"unknown flow_target {c.flow_target!r}: 'v' or 'x'"
        self.config = c
        self.side = c.image_size // c.patch_size  # patches per row
        self.num_patches = self.side ** 2
        self.patch_dim = c.in_channels * c.patch_size ** 2
        self.prefix = c.cond_len if c.cond_len > 1 else 0  # caption words in front of the patches
        C = c.n_embd
        self.patch_in = nn.Linear(self.patch_dim, C)
        rows = torch.arange(self.side).repeat_interleave(self.side)  # (N,) raster order
        cols = torch.arange(self.side).repeat(self.side)
        if c.pos == 'learned':
            self.pos_emb = nn.Embedding(self.num_patches, C)
        elif c.pos == 'sincos':
            self.register_buffer('pos_table', sincos_2d(rows, cols, C), persistent=False)
        elif c.pos == 'rope':  # 2-D axial over the patches; the caption prefix is not rotated (angle 0)
            cos, sin = rope_2d(rows, cols, C // c.n_head, c.rope_base)  # (N, hs/2)
            self.register_buffer('rope_cos', torch.cat([torch.ones(self.prefix, cos.size(1)), cos]), persistent=False)
            self.register_buffer('rope_sin', torch.cat([torch.zeros(self.prefix, sin.size(1)), sin]), persistent=False)
        # timestep: sin-cos features of 1000·t through a small MLP (DiT's TimestepEmbedder)
        self.t_mlp = nn.Sequential(nn.Linear(256, C), nn.SiLU(), nn.Linear(C, C))
        self.cond_emb = nn.Embedding(c.cond_vocab_size + 1, C)  # + id cond_vocab_size: 'no condition'
        if self.prefix:
            self.cond_pos = nn.Embedding(self.prefix, C)
        self.blocks = nn.ModuleList([DiTBlock(c) for _ in range(c.n_layer)])
        self.norm_f = Norm(c)
        self.ada_f = nn.Linear(C, 2 * C)  # c -> shift, scale of the final norm
        self.patch_out = nn.Linear(C, self.patch_dim)
        init_weights(self, c.n_layer)
        for m in [b.ada for b in self.blocks] + [self.ada_f, self.patch_out]:  # adaLN-Zero; zero velocity at init
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # patches: (B, ch, H, W) <-> (B, N, ch·p·p), raster order over the (H/p, W/p) grid
    def patchify(self, x):
        return patchify(x, self.config.patch_size)

    def unpatchify(self, x):
        B = x.size(0)
        p, s, ch = self.config.patch_size, self.side, self.config.in_channels
        return x.view(B, s, s, ch, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, ch, s * p, s * p)

    def velocity(self, x_t, t, cond=None):
        """x_t (B, ch, H, W), t (B,) in [0, 1], cond (B, cond_len) ids or None (unconditional) -> v (B, ch, H, W)."""
        c = self.config
        B = x_t.size(0)
        if cond is None:
            cond = torch.full((B, max(c.cond_len, 1)), c.cond_vocab_size, dtype=torch.long, device=x_t.device)
        cond_vecs = self.cond_emb(cond)  # (B, P, C)
        temb = self.t_mlp(sincos_1d(1000.0 * t, 256).to(cond_vecs.dtype))  # (B, C)
        ctx = temb + cond_vecs.mean(dim=1)  # (B, C): what every adaptive norm reads
        x = self.patch_in(self.patchify(x_t.to(cond_vecs.dtype)))  # (B, N, C)
        if c.pos == 'learned':
            x = x + self.pos_emb.weight
        elif c.pos == 'sincos':
            x = x + self.pos_table
        if self.prefix:
            x = torch.cat([cond_vecs + self.cond_pos.weight, x], dim=1)  # (B, P + N, C)
        rope = (self.rope_cos, self.rope_sin) if c.pos == 'rope' else None
        for block in self.blocks:
            x = block(x, ctx, rope=rope)
        shift, scale = self.ada_f(F.silu(ctx)).chunk(2, dim=-1)
        x = self.unpatchify(readout(self.patch_out, modulate(self.norm_f(x[:, self.prefix:]), shift, scale), c))  # like x_t
        if c.flow_target == 'x':
            # the network predicts the clean image and the velocity follows from it. Why: a token of 8x8x3 pixels
            # has 192 values, more than a 128-wide network can carry, so a predicted velocity (which holds the
            # noise) loses what does not fit; a clean image is smooth and fits (t is clipped at 0.05 against 1/t)
            return (x_t - x) / t.view(-1, 1, 1, 1).clamp(min=0.05)
        return x

    def sample_t(self, n, device):
        """Training timesteps from torch's RNG (the data normally supplies them, keyed, see data.FlowData)."""
        if self.config.t_sampling == 'uniform':
            return torch.rand(n, device=device)
        return torch.sigmoid(torch.randn(n, device=device))

    def forward(self, x, cond=None, noise=None, t=None):
        """x (B, ch, H, W) clean images or latents; cond (B, cond_len) ids; noise like x and t (B,), drawn here
        from torch's RNG when not given. Returns (predicted velocity, MSE to ε − x, metrics)."""
        noise = torch.randn_like(x) if noise is None else noise
        t = self.sample_t(x.size(0), x.device) if t is None else t
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x + tb * noise
        v = self.velocity(x_t, t, cond)
        loss = F.mse_loss(v.float(), (noise - x).float())
        return v, loss, {}

    @torch.no_grad()
    def generate(self, cond, steps=16, method='euler', cfg_scale=1.0, generator=None, return_history=False):
        """cond (B, cond_len) ids -> samples (B, ch, H, W) (and the trajectory with return_history)."""
        c = self.config
        cond = cond[:, None] if cond.dim() == 1 else cond
        noise = torch.randn(cond.size(0), c.in_channels, c.image_size, c.image_size, generator=generator,
                            device=cond.device)
        null = torch.full_like(cond, c.cond_vocab_size)

        def velocity_fn(x, t, cond_dropped):
            return self.velocity(x, t, null if cond_dropped else cond)
        return flow_sample(velocity_fn, noise, steps, method, cfg_scale, return_history)
