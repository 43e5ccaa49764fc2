"""
nano4M's model families on one set of shared Transformer blocks, read top to bottom:
  ModelConfig   every size and option, plain types (it round-trips through a checkpoint as a dict)
  blocks        Norm, positions (learned, sin-cos, RoPE), Attention (self or cross, causal or masked), MLP, Block,
                readout (every family's output layer goes through it)
  'gpt'         causal decoder over a token sequence (text, or image tokens in raster order after a class token)
  'maskgit'     bidirectional Transformer over an image's token grid: predicts masked tokens, decoded iteratively
  '4m'          encoder-decoder over sets of tokens from several modalities: the encoder reads any visible subset,
                the decoder's queries (modality + position) predict any other subset (any-to-any, chained generation)
  μP            mup=True: init, attention scale and output multiplier that let hyperparameters tuned at
                mup_base_width hold at any width (optim.py scales the learning rates)
  FAMILIES      model_type -> class: the one place a family is registered (baselines.py adds 'lstm', 'kgram_mlp',
                flow.py 'flow' (a DiT), vlm.py 'vlm' (a vision encoder in front of this file's GPT))
Inference state and sampling (KV cache, filters, guidance, decoding loops) live in decoding.py, optimizers in
optim.py; this file imports only decoding.py, so it can be read on its own.
"""
import importlib
import math
from contextlib import nullcontext
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from decoding import KVCache, cfg_logits, generate_causal, iterative_decode, sample_logits

# -----------------------------------------------------------------------------
# config

@dataclass
class ModelConfig:
    model_type: str = 'gpt'     # 'gpt' | 'maskgit' | '4m' | 'flow' | 'vlm' | 'lstm' | 'kgram_mlp'
    block_size: int = 1024      # longest sequence the positions cover
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # bias in Linears and LayerNorms; False is a bit better and faster
    # architecture options; the defaults are the original GPT-2 recipe
    norm: str = 'layernorm'     # 'layernorm' | 'rmsnorm'
    norm_placement: str = 'pre' # 'pre' (x + f(norm(x))) | 'post' (norm(x + f(x)), the 2017 Transformer)
    mlp: str = 'gelu'           # 'gelu' | 'swiglu' (hidden 8/3·C, so parameters match) | 'relu2' (relu(x)²)
    pos: str = 'learned'        # 'learned' | 'sincos' (fixed) | 'rope' (rotary; 2-D axial on image grids) | 'none'
    rope_base: float = 10000.0  # RoPE frequency base
    qk_norm: bool = False       # RMS-normalise queries and keys per head before the dot product
    logit_softcap: float = None # None, or c: logits = c·tanh(logits / c)
    zero_init: bool = False     # zero-init the residual output projections (attention out, MLP out)
    attention: str = 'sdpa'     # 'sdpa' (softmax) | 'linear' (gated linear attention, causal families only)
    kgram_k: int = 3            # context length of the kgram_mlp baseline
    optimizer: str = 'adamw'    # 'adamw' | 'muon' (Muon on 2-D hidden weights, AdamW on the rest)
    muon_lr: float = 0.02       # Muon's peak learning rate; train.py's schedule scales it like learning_rate
    muon_momentum: float = 0.95
    mup: bool = False           # μP (see mup_init): hyperparameters tuned at n_embd = mup_base_width hold at any width
    mup_base_width: int = 0     # the width the hyperparameters were tuned at; there μP is the standard model exactly
    # maskgit (0 = taken from the dataset's meta.json through data.model_args)
    codebook_size: int = 0      # image token ids are 0..codebook_size-1; the mask token is id codebook_size
    grid_h: int = 0             # the token grid, h x w; positions are 2-D
    grid_w: int = 0
    cond_vocab_size: int = 0    # conditioning ids, e.g. class labels; id cond_vocab_size means 'no condition'
    cond_len: int = 0           # conditioning tokens in front of the grid (1 for a class label, 0: none)
    mask_schedule: str = 'cosine'  # training mask ratio: 'cosine' | 'linear' | 'uniform' (count in [1, L])
    cond_drop: float = 0.1      # training: the condition becomes 'no condition' with this probability (for CFG)
    label_smoothing: float = 0.0
    # 4m: n_layer is the encoder's depth
    n_layer_dec: int = 0        # decoder depth; 0 means the same as the encoder
    modalities: tuple = ()      # set by the data: one dict per modality, in id order:
                                # {'name', 'kind': 'image'|'sequence', 'vocab_size', 'num_tokens', 'grid': [h, w],
                                #  optional 'levels': the FSQ levels of a learned image tokenizer's codes}
    dec_attn: str = 'modality'  # decoder self-attention: 'modality' (a target sees targets of its own modality,
                                # as in 4M) or 'all' (every target of the sample)
    seq_masking: str = 'random' # sequence modalities: 'random' (token by token, predicted in parallel like images) or
                                # 'span' (T5-style spans with sentinels, decoded autoregressively, as in 4M)
    grid_conv: int = 0          # 3x3 conv layers over the shared image grid of the visible tokens, added to image
                                # inputs and image target queries (0: none, the paper's 4M); see GridMixer
    # flow (flow.py, rectified flow with a DiT; 0 = taken from the dataset through data.model_args)
    image_size: int = 0         # side of the square the flow model generates: pixels, or the tokenizer's latent grid
    in_channels: int = 0        # its channels (1 for Fashion-MNIST pixels, the FSQ latent's dims for clevr rgb)
    patch_size: int = 0         # patches of patch_size x patch_size become tokens
    t_sampling: str = 'logit_normal'  # training timesteps: 'logit_normal' (sigmoid of N(0, 1)) | 'uniform'
    flow_target: str = 'v'      # what the network outputs: 'v' (the velocity) | 'x' (the clean image; v = (x_t - x) / t)
    # vlm (vlm.py: vision encoder + projector + GPT; image_size, in_channels, patch_size and the grid as above)
    vision: str = 'pixels'      # what the vision encoder reads: 'pixels' (a ViT over patch_size patches) | 'tokenizer'
                                # (the rgb tokenizer's frozen encoder features, in_channels per grid cell) | 'none'
                                # (no image: the blind, question-only model)
    n_layer_vision: int = 2     # the vision encoder's depth (its width and heads are n_embd, n_head)
    pixel_shuffle: int = 2      # the projector folds pixel_shuffle x pixel_shuffle neighbouring patches into one token

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config has unknown keys {unknown}: the checkpoint was written by a "
                             f"different version of model.py")
        return cls(**d)

    def to_dict(self):
        return asdict(self)

# -----------------------------------------------------------------------------
# building blocks

class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1 and we keep it explicit).
    With kind='rmsnorm' it only rescales by the root mean square (no centring, no bias): cheaper, and what
    most recent LLMs use."""

    def __init__(self, ndim, bias, kind='layernorm'):
        super().__init__()
        assert kind in ('layernorm', 'rmsnorm'), f"unknown norm {kind!r}: use 'layernorm' or 'rmsnorm'"
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias and kind == 'layernorm' else None

    def forward(self, x):
        if self.kind == 'rmsnorm':
            return F.rms_norm(x, self.weight.shape, self.weight, 1e-5)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def Norm(config):
    """The norm the config asks for, over n_embd: every family builds its norms through this."""
    return LayerNorm(config.n_embd, config.bias, config.norm)


# positions: fixed sin-cos tables, and rotary embeddings (RoPE) that attention applies to queries and keys

def sincos_1d(positions, dim, base=10000.0):
    """Fixed sinusoidal embeddings (Vaswani et al.): positions (T,) -> (T, dim)."""
    freqs = base ** (-torch.arange(0, dim // 2, device=positions.device, dtype=torch.float32) / (dim // 2))
    angles = positions.float()[:, None] * freqs[None, :]  # (T, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_2d(rows, cols, dim, base=10000.0):
    """2-D sin-cos for image grids: half the channels encode the row, half the column. rows, cols (N,) -> (N, dim)."""
    return torch.cat([sincos_1d(rows, dim // 2, base), sincos_1d(cols, dim // 2, base)], dim=-1)


def rope_1d(positions, head_dim, base=10000.0):
    """Rotary angles for positions (..., T) -> (cos, sin), each (..., T, head_dim/2). Channel pair i is
    (x[i], x[i + head_dim/2]) and turns by position · base^(-2i/head_dim)."""
    freqs = base ** (-torch.arange(0, head_dim // 2, device=positions.device, dtype=torch.float32) / (head_dim // 2))
    angles = positions.float()[..., None] * freqs  # (..., T, hs/2)
    return angles.cos(), angles.sin()


def rope_2d(rows, cols, head_dim, base=10000.0):
    """Axial RoPE for image grids: the first half of the channel pairs turn with the row, the second half with
    the column, so scores depend only on the (row, col) offset. rows, cols (..., N) -> (cos, sin) (..., N, hs/2)."""
    cos_r, sin_r = rope_1d(rows, head_dim // 2, base)
    cos_c, sin_c = rope_1d(cols, head_dim // 2, base)
    return torch.cat([cos_r, cos_c], dim=-1), torch.cat([sin_r, sin_c], dim=-1)


def apply_rope(x, rope):
    """Rotate x (B, nh, T, hs) by rope = (cos, sin), each (T, hs/2) or (B, T, hs/2)."""
    cos, sin = rope
    if cos.dim() == 3:  # per-sample positions: broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.type_as(x)


def patchify(x, p):
    """Images (B, ch, H, W) -> patches (B, H/p · W/p, ch·p·p) in raster order over the (H/p, W/p) grid."""
    B, ch, H, W = x.shape
    return x.view(B, ch, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), ch * p * p)


def softcap(logits, cap):
    """Smoothly bound logits to (-cap, cap) (Gemma 2, modded-nanogpt); None leaves them alone."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


def readout(head, x, config):
    """A family's output layer head(x). Under μP its input is multiplied by mup_base_width / n_embd: the head's
    weights are updated at a width-independent rate and, once aligned with x, head(x) sums n_embd such terms,
    so without the multiplier the logits would grow with width (see mup_init)."""
    if config.mup:
        x = x * (config.mup_base_width / config.n_embd)
    return head(x)


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention (flash / memory-efficient kernels).

    Self-attention uses one fused QKV projection; cross-attention (context given) projects queries from x
    and keys/values from the context. Masking is either causal or an explicit boolean mask
    (True = may attend), which is what the bidirectional and encoder-decoder families need.

    Options: `rope` = (cos, sin) rotates queries and keys (cross-attention: `context_rope` rotates the keys);
    config.qk_norm RMS-normalises them per head; config.attention='linear' swaps softmax for gated linear
    attention (causal self-attention only, see linear_attention)."""

    def __init__(self, config, cross=False):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        # q·k / sqrt(head_dim), or under μP q·k / head_dim (once training aligns q with k their dot product grows like
        # head_dim, not its root), written so that it is 1/sqrt(head_dim) exactly at the base width
        self.scale = 1 / math.sqrt(self.head_dim)
        if config.mup:
            self.scale *= math.sqrt(config.mup_base_width / config.n_embd)
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
            self.kv_proj = nn.Linear(config.n_embd, 2 * config.n_embd, bias=config.bias)
        else:
            self.qkv_proj = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.out_proj.residual = True  # scaled init, see init_weights
        self.out_proj.zero_init = config.zero_init
        self.qk_norm = config.qk_norm
        assert config.attention in ('sdpa', 'linear'), f"unknown attention {config.attention!r}: 'sdpa' or 'linear'"
        self.linear = config.attention == 'linear' and not cross
        if self.linear:
            # per head, a data-dependent forget gate in (0, 1); the bias starts each head at its own time scale
            # (sigmoid(1..5): memories of ~4 to ~150 tokens), as RetNet's fixed multi-scale decays do
            self.gate_proj = nn.Linear(config.n_embd, config.n_head, bias=False)
            self.gate_bias = nn.Parameter(torch.linspace(1.0, 5.0, config.n_head))
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, t):  # (B, T, C) -> (B, nh, T, hs)
        B, T, C = t.shape
        return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None, causal=False, mask=None, kv_cache=None, layer=0, rope=None, context_rope=None):
        B, T, C = x.shape
        if self.cross:
            q = self.q_proj(x)
            k, v = self.kv_proj(context).split(C, dim=2)
        else:
            q, k, v = self.qkv_proj(x).split(C, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if self.qk_norm:  # bounds the attention logits, so higher learning rates stay stable
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if rope is not None:  # rotate before caching: every cached key keeps the rotation of its own position
            q = apply_rope(q, rope)
            k = apply_rope(k, context_rope if self.cross else rope)
        elif context_rope is not None:
            k = apply_rope(k, context_rope)
        if self.linear:
            assert causal and mask is None, "linear attention is causal only (gpt family)"
            log_gate = F.logsigmoid(self.gate_proj(x) + self.gate_bias).transpose(1, 2)  # (B, nh, T)
            y = linear_attention(q, k, v, log_gate, kv_cache, layer, self.scale)
        else:
            if kv_cache is not None:
                past = kv_cache.length
                k, v = kv_cache.append(layer, k, v)  # (B, nh, past + T, hs)
                if causal and T > 1:
                    # new queries sit at positions past..past+T-1 and see every cached key up to their own
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
                causal = False  # a single new query may see the whole cache
            # PyTorch's CPU flash-attention kernel is no faster in bf16 than in fp32 forward, and its bf16 backward
            # is ~2.5x slower (torch 2.13; docs/log.md): on a CPU, attention itself runs in fp32
            dtype, on_cpu = q.dtype, q.device.type == 'cpu'
            if on_cpu and dtype == torch.bfloat16:
                q, k, v = q.float(), k.float(), v.float()
            with torch.autocast('cpu', enabled=False) if on_cpu else nullcontext():  # autocast would cast back
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale,
                                                   dropout_p=self.dropout if self.training else 0.0).to(dtype)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.resid_dropout(self.out_proj(y))


def linear_attention(q, k, v, log_gate, kv_cache=None, layer=0, scale=None):
    """Gated linear attention with a scalar forget gate per head and step (the recurrence of GLA / Mamba-2,
    simplified). As a recurrence over a (hs, hs) state S per head:

        S_t = g_t · S_{t-1} + k_t v_tᵀ,      y_t = q_t S_t / sqrt(hs)

    Training uses the equivalent parallel form, y = ((q kᵀ / sqrt(hs)) ⊙ D) v with D[t, s] = g_{s+1}···g_t for
    s <= t: quadratic in T like softmax attention, but exact, and fine at our context lengths. With a cache,
    the state S carried from earlier tokens adds (g_1···g_t) · q_t S_0 and is updated for the next call, so
    decoding costs O(1) per token. The output is RMS-normalised per head (as GLA and RetNet do) since, without
    a softmax, its scale drifts with the sequence length.
    q, k, v (B, nh, T, hs); log_gate (B, nh, T) = log g; scale: what replaces 1/sqrt(hs) (μP's is smaller)."""
    B, nh, T, hs = q.shape
    q, k, v = q.float() * (scale or 1 / math.sqrt(hs)), k.float(), v.float()
    cum = log_gate.float().cumsum(dim=-1)  # (B, nh, T): log(g_1···g_t) within this call
    decay = cum[..., :, None] - cum[..., None, :]  # (B, nh, T, T): log(g_{s+1}···g_t)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp(decay.masked_fill(~causal, float('-inf')))
    y = ((q @ k.transpose(-2, -1)) * decay) @ v  # (B, nh, T, hs)
    if kv_cache is not None:
        state = kv_cache.state.get(layer)
        if state is not None:
            y = y + torch.exp(cum)[..., None] * (q @ state)
        # S_T = (g_1···g_T) S_0 + sum_s (g_{s+1}···g_T) k_s v_sᵀ
        new_state = (k * torch.exp(cum[..., -1:] - cum)[..., None]).transpose(-2, -1) @ v  # (B, nh, hs, hs)
        if state is not None:
            new_state = new_state + torch.exp(cum[..., -1])[..., None, None] * state
        kv_cache.state[layer] = new_state
    return F.rms_norm(y, (hs,)).type_as(log_gate)


class MLP(nn.Module):
    """Position-wise feed-forward: config.mlp picks GELU (GPT-2), SwiGLU (PaLM, LLaMA; hidden 8/3·C so its three
    matrices hold as many parameters as GELU's two 4·C ones) or ReLU² (Primer, modded-nanogpt)."""

    def __init__(self, config):
        super().__init__()
        assert config.mlp in ('gelu', 'swiglu', 'relu2'), f"unknown mlp {config.mlp!r}: 'gelu', 'swiglu' or 'relu2'"
        self.kind = config.mlp
        if self.kind == 'swiglu':
            hidden = 8 * ((8 * config.n_embd // 3 + 7) // 8)  # 8/3·C rounded up to a multiple of 8
            self.fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)  # gate and value, fused
        else:
            hidden = 4 * config.n_embd
            self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.proj.residual = True
        self.proj.zero_init = config.zero_init
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.fc(x)
        if self.kind == 'swiglu':
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == 'relu2':
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Transformer block: self-attention, optional cross-attention, MLP, each residual. Pre-norm by default
    (x + f(norm(x))); config.norm_placement='post' normalises after each residual sum instead (norm(x + f(x)))."""

    def __init__(self, config, cross=False):
        super().__init__()
        assert config.norm_placement in ('pre', 'post'), f"unknown norm_placement {config.norm_placement!r}"
        self.post_norm = config.norm_placement == 'post'
        self.norm1 = Norm(config)
        self.attn = Attention(config)
        if cross:
            self.norm_cross = Norm(config)
            self.cross_attn = Attention(config, cross=True)
        self.norm2 = Norm(config)
        self.mlp = MLP(config)

    def forward(self, x, causal=False, mask=None, context=None, context_mask=None, kv_cache=None, layer=0,
                rope=None, context_rope=None):
        if self.post_norm:
            x = self.norm1(x + self.attn(x, causal=causal, mask=mask, kv_cache=kv_cache, layer=layer, rope=rope))
            if context is not None:
                x = self.norm_cross(x + self.cross_attn(x, context=context, mask=context_mask, rope=rope,
                                                        context_rope=context_rope))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x), causal=causal, mask=mask, kv_cache=kv_cache, layer=layer, rope=rope)
        if context is not None:
            x = x + self.cross_attn(self.norm_cross(x), context=context, mask=context_mask, rope=rope,
                                    context_rope=context_rope)
        x = x + self.mlp(self.norm2(x))
        return x


def init_weights(module, n_layer):
    """GPT-2 init: normal(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer), or zero where a
    projection asks for it (config.zero_init: every block then starts as the identity, as in modded-nanogpt)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layer) if getattr(m, 'residual', False) else 0.02
            if getattr(m, 'zero_init', False):
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

# -----------------------------------------------------------------------------
# GPT: causal decoder

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.pos in ('learned', 'sincos', 'rope', 'none'), f"unknown pos {config.pos!r}"
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == 'learned':
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos == 'sincos':  # a fixed table, rebuilt rather than saved
            self.register_buffer('pos_table', sincos_1d(torch.arange(config.block_size), config.n_embd),
                                 persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = Norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight  # weight tying
        init_weights(self, config.n_layer)

    def forward(self, idx, targets=None, kv_cache=None, prefix=None):
        """idx (B, T) token ids; targets (B, P + T) or None; prefix (B, P, C) or None: embeddings that go in front
        of the tokens (a VLM's image). Returns (logits, loss, metrics).

        Without targets only the last position's logits are computed (all that sampling needs)."""
        c = self.config
        x = self.tok_emb(idx)  # (B, T, C)
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # (B, P + T, C)
        B, T = x.shape[:2]
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > c.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {c.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        if c.pos == 'learned':
            x = x + self.pos_emb(pos)
        elif c.pos == 'sincos':
            x = x + self.pos_table[pos]
        rope = rope_1d(pos, c.n_embd // c.n_head, c.rope_base) if c.pos == 'rope' else None  # (T, hs/2) each
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, causal=True, kv_cache=kv_cache, layer=i, rope=rope)
        if kv_cache is not None:
            kv_cache.length += T
        return next_token_outputs(self, self.norm_f(x), targets)

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to fine-tune a checkpoint at a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.config.pos == 'learned':
            self.pos_emb.weight = nn.Parameter(self.pos_emb.weight[:block_size])

    def new_kv_cache(self, batch_size, max_len=None):
        c, p = self.config, next(self.parameters())
        return KVCache(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, max_len or c.block_size,
                       p.device, p.dtype)

    def generate(self, idx, max_new_tokens, **kwargs):
        return generate_causal(self, idx, max_new_tokens, **kwargs)

# -----------------------------------------------------------------------------
# MaskGIT: bidirectional Transformer over a token grid

class MaskGIT(nn.Module):
    """Tokens where `mask` is True are replaced by a learned mask embedding (id codebook_size, outside the
    codebook, so it can never collide with an image token and the head can never predict it); an optional
    conditioning prefix (class label, caption tokens) goes in front; the same Blocks as GPT run without a
    causal mask; the head predicts codebook ids at the grid positions, and the loss counts masked ones only."""

    def __init__(self, config):
        super().__init__()
        assert config.codebook_size > 0 and config.grid_h > 0 and config.grid_w > 0, \
            "maskgit needs codebook_size and the grid (an image dataset sets them)"
        self.config = config
        self.num_tokens = config.grid_h * config.grid_w
        self.mask_id = config.codebook_size
        self.tok_emb = nn.Embedding(config.codebook_size + 1, config.n_embd)  # + the mask token
        assert config.pos in ('learned', 'sincos', 'rope', 'none'), f"unknown pos {config.pos!r}"
        rows = torch.arange(config.grid_h).repeat_interleave(config.grid_w)  # (L,) raster order
        cols = torch.arange(config.grid_w).repeat(config.grid_h)
        if config.pos == 'learned':
            self.pos_emb = nn.Embedding(self.num_tokens, config.n_embd)
        elif config.pos == 'sincos':  # fixed 2-D table, rebuilt rather than saved
            self.register_buffer('pos_table', sincos_2d(rows, cols, config.n_embd), persistent=False)
        elif config.pos == 'rope':  # 2-D axial; the conditioning prefix is not rotated (angle 0)
            cos, sin = rope_2d(rows, cols, config.n_embd // config.n_head, config.rope_base)  # (L, hs/2)
            cos = torch.cat([torch.ones(config.cond_len, cos.size(1)), cos])
            sin = torch.cat([torch.zeros(config.cond_len, sin.size(1)), sin])
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        if config.cond_len > 0:
            self.cond_emb = nn.Embedding(config.cond_vocab_size + 1, config.n_embd)  # + 'no condition'
            self.cond_pos = nn.Embedding(config.cond_len, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = Norm(config)
        self.head = nn.Linear(config.n_embd, config.codebook_size, bias=False)
        init_weights(self, config.n_layer)

    def forward(self, tokens, mask, cond=None, compute_loss=True, loss_tokens=None):
        """tokens (B, L) image token ids (what sits at masked positions is ignored), mask (B, L) bool, True =
        hidden from the model and predicted; cond (B, cond_len) ids or None. Returns (logits (B, L, K), loss
        over masked positions only, metrics). loss_tokens: what the summed loss is divided by (default this
        batch's masked count; train.py passes the optimizer step's, see loss_tokens())."""
        B, L = tokens.shape
        c = self.config
        ids = torch.where(mask, torch.full_like(tokens, self.mask_id), tokens)  # the model never sees masked truth
        x = self.tok_emb(ids)  # (B, L, C)
        if c.pos == 'learned':
            x = x + self.pos_emb.weight[:L]
        elif c.pos == 'sincos':
            x = x + self.pos_table[:L]
        rope = (self.rope_cos, self.rope_sin) if c.pos == 'rope' else None
        if c.cond_len > 0:
            if cond is None:  # unconditional: every conditioning slot holds 'no condition'
                cond = torch.full((B, c.cond_len), c.cond_vocab_size, dtype=torch.long, device=tokens.device)
            prefix = self.cond_emb(cond) + self.cond_pos.weight  # (B, cond_len, C)
            x = torch.cat([prefix, x], dim=1)  # (B, cond_len + L, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, causal=False, rope=rope)
        logits = softcap(readout(self.head, self.norm_f(x[:, c.cond_len:]), c), c.logit_softcap)  # (B, L, K): grid only
        if not compute_loss:
            return logits, None, {}
        # loss on masked positions only: visible tokens are copied from the input, predicting them is free. Full
        # shapes with an ignored index, not logits[mask]: a data-dependent shape would break torch.compile's graph
        targets = tokens.masked_fill(~mask, -1)  # (B, L)
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1, reduction='sum',
                                   label_smoothing=c.label_smoothing)
        num_masked = mask.sum()
        loss = loss_sum / (num_masked.clamp(min=1) if loss_tokens is None else loss_tokens)
        accuracy = ((logits.argmax(-1) == tokens) & mask).sum() / num_masked.clamp(min=1)
        return logits, loss, {'masked_acc': accuracy.detach()}

    @staticmethod
    def loss_tokens(batch):
        """The tokens this batch's loss is averaged over (its masked ones). train.py sums them over an optimizer
        step's micro-batches and ranks, so every micro-batch is weighted by its share of the whole step: 8 ranks x b
        then train exactly like 1 rank x 8b, and accumulation like one large batch."""
        return batch['mask'].sum().float()

# -----------------------------------------------------------------------------
# 4M: encoder-decoder over multimodal token sets

class GridMixer(nn.Module):
    """3x3 convolutions over the image grid that the aligned image modalities share (clevr: rgb, depth, normals,
    semseg all on 8x8). The visible tokens' embeddings are averaged per cell, zero where nothing is visible, and
    convolved; the result at a cell is added to the image tokens there and to the decoder's image queries
    there. Why: a Transformer must learn from scratch that an image token's neighbours matter and which target
    query sits where; on 2 CPU cores it learned rgb -> semseg shapes far slower than a small CNN over the same
    tokens (docs/log.md). Inputs and targets are disjoint, so a query never sees its own answer."""

    def __init__(self, C, num_layers, grid):
        super().__init__()
        self.h, self.w = grid
        self.convs = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1) for _ in range(num_layers)])
        nn.init.zeros_(self.convs[-1].weight)  # starts as a no-op: the plain 4M
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x, on_grid, pos):
        """x (B, N, C) token embeddings, on_grid (B, N) bool: visible tokens of the grid's modalities, pos (B, N)
        their cells (a finer grid's tokens share a cell) -> features per cell (B, h*w, C)."""
        B, N, C = x.shape
        cells = self.h * self.w
        idx = torch.where(on_grid, pos, cells)  # everything else goes to a spare cell that is dropped
        total = x.new_zeros(B, cells + 1, C).scatter_add_(1, idx[..., None].expand(B, N, C), x)
        count = x.new_zeros(B, cells + 1).scatter_add_(1, idx, on_grid.to(x.dtype))
        g = (total / count.clamp(min=1)[..., None])[:, :cells].transpose(1, 2).reshape(B, C, self.h, self.w)
        for i, conv in enumerate(self.convs):
            g = conv(F.silu(g) if i else g)
        return g.flatten(2).transpose(1, 2)  # (B, h*w, C)

    @staticmethod
    def read(grid, pos, on_grid):
        """grid (B, h*w, C), pos (B, N) cells, on_grid (B, N) bool -> the grid's features at each on-grid token,
        zero elsewhere (B, N, C)."""
        return grid.gather(1, (pos * on_grid)[..., None].expand(-1, -1, grid.size(-1))) * on_grid[..., None]


class FourM(nn.Module):
    """4M: an encoder over the visible input tokens of any subset of modalities, and a decoder whose queries are
    target positions (modality embedding + position, no token) that cross-attend to the encoder.

    Tokens of all modalities live in one embedding table and one output head, each modality owning a slice of
    ids (its vocabulary shifted by an offset). A batch mixes modalities at arbitrary positions, so one table
    means one lookup and one matmul with static shapes, where per-modality tables would need a gather/scatter per
    modality. The head is still a per-modality classifier: logits outside the target's slice are masked to -inf,
    so each modality gets its own softmax exactly as with separate heads.

    Positions are fixed sin-cos, 2-D for image grids and 1-D for sequences, looked up by (modality, position)
    from one table. Inputs and targets are padded to fixed sizes; `*_pad` marks the padding, which neither the
    attention nor the loss sees."""

    def __init__(self, config):
        super().__init__()
        assert config.modalities, "model_type='4m' needs config.modalities (the dataset sets them)"
        self.config = config
        C, mods = config.n_embd, config.modalities
        self.names = [m['name'] for m in mods]
        vocab_sizes = [m['vocab_size'] for m in mods]
        offsets = [sum(vocab_sizes[:i]) for i in range(len(mods))]
        self.vocab_size = sum(vocab_sizes)
        self.register_buffer('vocab_offset', torch.tensor(offsets), persistent=False)  # (M,)
        in_vocab = torch.zeros(len(mods), self.vocab_size, dtype=torch.bool)  # (M, V): ids each modality owns
        for i, (o, v) in enumerate(zip(offsets, vocab_sizes)):
            in_vocab[i, o:o + v] = True
        self.register_buffer('in_vocab', in_vocab, persistent=False)
        assert config.seq_masking in ('random', 'span'), f"unknown seq_masking {config.seq_masking!r}: 'random' or 'span'"
        assert config.dec_attn in ('modality', 'all'), f"unknown dec_attn {config.dec_attn!r}: 'modality' or 'all'"
        # the modalities decoded autoregressively: sequences of a span-masking model (their specs carry eos, pad and
        # num_sentinels, see data.FourMData)
        is_ar = torch.tensor([m['kind'] == 'sequence' and config.seq_masking == 'span' for m in mods])
        self.register_buffer('is_ar', is_ar, persistent=False)  # (M,)
        # sequences get twice their length in positions: a span target (sentinels + spans) can outgrow the sequence
        max_tokens = max(m['num_tokens'] * (2 if m['kind'] == 'sequence' else 1) for m in mods)
        # Image grids may differ in size over the same picture (super-resolution: rgb_low on 8x8, rgb_high on
        # 16x16). Positions and GridMixer cells are in units of the coarsest grid, so a token is placed where its
        # cell's centre is: cell (r, c) of a 16x16 grid sits at (r/2 - 1/4, c/2 - 1/4) of an 8x8 one, and mixes into
        # cell (r//2, c//2) there. With one grid size this is the plain raster position.
        grids = [tuple(m['grid']) for m in mods if m['kind'] == 'image']
        ref = min(grids, key=lambda g: g[0] * g[1]) if grids else None
        pos = torch.zeros(len(mods), max_tokens, C)  # (M, P, C)
        cell = torch.full((len(mods), max_tokens), -1)  # (M, P): each token's GridMixer cell, -1 off the grid
        for i, m in enumerate(mods):
            h, w = m['grid']
            if m['kind'] == 'image':  # raster order; half the channels encode the row, half the column
                rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
                sh, sw = h / ref[0], w / ref[1]  # this grid's cells per coarse cell, per side
                pos[i, :h * w] = sincos_2d((rows + 0.5) / sh - 0.5, (cols + 0.5) / sw - 0.5, C)
                if h % ref[0] == 0 and w % ref[1] == 0:  # nested grids only
                    cell[i, :h * w] = rows // int(sh) * ref[1] + cols // int(sw)
            else:
                pos[i, :2 * h * w] = sincos_1d(torch.arange(2 * h * w), C)
        self.register_buffer('pos_table', pos, persistent=False)
        self.register_buffer('grid_cell', cell, persistent=False)

        self.tok_emb = nn.Embedding(self.vocab_size, C)
        # An FSQ code is a mixed-radix number whose digits are quantised latent channels. The encoder adds one
        # embedding per digit value, so codes that share digits (similar colour, brightness) share part of their
        # meaning from the first step, instead of 1000 table rows each learned alone. Row 0 is a zero vector
        # for ids without digits (other modalities).
        digit_ids = torch.zeros(self.vocab_size, max([len(m.get('levels', ())) for m in mods] + [1]), dtype=torch.long)
        rows = 1
        for o, m in zip(offsets, mods):
            levels = m.get('levels', ())
            code = torch.arange(m['vocab_size'])
            for d, L in enumerate(levels):
                digit_ids[o:o + m['vocab_size'], d] = rows + code % L
                code, rows = code // L, rows + L
        self.register_buffer('digit_ids', digit_ids, persistent=False)  # (V, D): rows of digit_emb per id
        self.digit_emb = nn.Embedding(rows, C, padding_idx=0) if rows > 1 else None
        self.enc_mod_emb = nn.Embedding(len(mods), C)
        self.dec_mod_emb = nn.Embedding(len(mods), C)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.enc_norm = Norm(config)
        self.context_proj = nn.Linear(C, C, bias=config.bias)  # encoder output -> the decoder's context space
        self.context_norm = Norm(config)
        n_dec = config.n_layer_dec or config.n_layer
        self.decoder = nn.ModuleList([Block(config, cross=True) for _ in range(n_dec)])
        self.dec_norm = Norm(config)
        self.head = nn.Linear(C, self.vocab_size, bias=False)
        self.grid_mixer = GridMixer(C, config.grid_conv, ref) if config.grid_conv and grids else None
        init_weights(self, config.n_layer + n_dec)
        nn.init.zeros_(self.head.weight)  # start from uniform predictions per modality (as 4M does)
        # sin-cos positions have RMS 1/sqrt(2): embeddings at GPT's 0.02 would be drowned 35:1 by them, and the
        # model would sit on the per-position prior for a long time. Start token and modality embeddings at the
        # positions' scale, as a patch projection would be in a ViT.
        for emb in (self.tok_emb, self.enc_mod_emb, self.dec_mod_emb):
            nn.init.normal_(emb.weight, std=1 / math.sqrt(2))
        if self.digit_emb is not None:
            nn.init.normal_(self.digit_emb.weight, std=1 / math.sqrt(2))
            self.digit_emb.weight.data[0].zero_()

    def encode(self, enc_tokens, enc_pos, enc_mod, enc_pad):
        """Visible tokens (B, N_in) -> (context for the decoder (B, N_in, C), GridMixer features (B, h*w, C) or None)."""
        # every padded slot becomes the same token (id 0 of modality 0 at position 0), whatever the batch put there:
        # a sample with no visible input (its inputs dropped in training, or the unconditional stream of guidance)
        # is then exactly one thing, attended through cross_attention_mask's fallback
        enc_tokens, enc_pos, enc_mod = (t.masked_fill(enc_pad, 0) for t in (enc_tokens, enc_pos, enc_mod))
        ids = enc_tokens + self.vocab_offset[enc_mod]
        x = self.tok_emb(ids) + self.enc_mod_emb(enc_mod)  # (B, N_in, C)
        if self.digit_emb is not None:
            x = x + self.digit_emb(self.digit_ids[ids]).sum(-2)
        grid = None
        if self.grid_mixer is not None:
            cell = self.grid_cell[enc_mod, enc_pos]  # (B, N_in)
            on_grid = (cell >= 0) & ~enc_pad
            grid = self.grid_mixer(x, on_grid, cell)
            x = x + GridMixer.read(grid, cell, on_grid)
        x = self.drop(x + self.pos_table[enc_mod, enc_pos])
        mask = self_attention_mask(~enc_pad)  # (B, 1, N_in, N_in)
        for block in self.encoder:
            x = block(x, mask=mask)
        # the decoder sees the encoder output again with positions and modalities, in its own space; normalised,
        # since cross-attention projects keys from it directly: a small context (the projection starts at ~0.16
        # RMS) gives near-uniform attention whose gradient is too weak to sharpen, and the decoder then ignores
        # its inputs and predicts the per-position prior
        context = self.context_proj(self.enc_norm(x)) + self.pos_table[enc_mod, enc_pos] + self.dec_mod_emb(enc_mod)
        return self.context_norm(context), grid

    def decode(self, context, enc_pad, dec_pos, dec_mod, dec_pad, dec_tokens=None, kv_cache=None, grid=None):
        """Target queries (B, N_tgt) cross-attending to the context -> logits (B, N_tgt, V), -inf outside each
        target's own vocabulary slice. dec_tokens (B, N_tgt): for autoregressive targets the token before each
        one (teacher forcing), -1 where there is none. With kv_cache, the queries are the next positions of one
        autoregressive target and attend causally to the cached earlier ones (generation)."""
        x = self.dec_mod_emb(dec_mod) + self.pos_table[dec_mod, dec_pos]  # (B, N_tgt, C)
        if grid is not None:  # image queries start from what the visible inputs around their cell say
            cell = self.grid_cell[dec_mod, dec_pos]  # (B, N_tgt)
            x = x + GridMixer.read(grid, cell, cell >= 0)
        if dec_tokens is not None:
            given = (dec_tokens >= 0)[..., None]
            x = x + self.tok_emb(dec_tokens.clamp(min=0) + self.vocab_offset[dec_mod]) * given
        x = self.drop(x)
        cross_mask = cross_attention_mask(~enc_pad, dec_pos.size(1))  # (B, 1, N_tgt, N_in)
        if kv_cache is not None:
            for i, block in enumerate(self.decoder):
                x = block(x, causal=True, context=context, context_mask=cross_mask, kv_cache=kv_cache, layer=i)
            kv_cache.length += dec_pos.size(1)
        else:
            self_mask = self_attention_mask(decoder_attention(dec_mod, dec_pos, dec_pad, self.is_ar, self.config.dec_attn))
            for block in self.decoder:
                x = block(x, mask=self_mask, context=context, context_mask=cross_mask)
        logits = readout(self.head, self.dec_norm(x), self.config)  # (B, N_tgt, V)
        return logits.masked_fill(~self.in_vocab[dec_mod], float('-inf'))

    def forward(self, enc_tokens, enc_pos, enc_mod, enc_pad, dec_pos, dec_mod, dec_pad, targets=None, dec_tokens=None,
                loss_tokens=None):
        """Tokens are ids within their modality's own vocabulary; positions index the modality's grid (raster
        order) or sequence; *_pad (bool) marks padding. targets (B, N_tgt) holds -1 on padding. dec_tokens
        (seq_masking='span'): each autoregressive target's previous token, -1 for none (see decode).
        Returns (logits (B, N_tgt, V) over the shared id space, loss, metrics): the loss is the mean over target
        tokens of each modality, then the mean over the modalities present in the batch; metrics hold the
        per-modality losses (NaN for a modality with no target tokens in this batch). loss_tokens (M,): the target
        tokens per modality to average over (default this batch's; train.py passes the optimizer step's, see
        loss_tokens())."""
        context, grid = self.encode(enc_tokens, enc_pos, enc_mod, enc_pad)
        logits = self.decode(context, enc_pad, dec_pos, dec_mod, dec_pad, dec_tokens, grid=grid)
        if targets is None:
            return logits, None, {}
        valid = targets >= 0  # (B, N_tgt)
        shared_targets = torch.where(valid, targets + self.vocab_offset[dec_mod], -1)
        # padded rows still have finite logits in modality 0's slice, so the -inf mask never makes a NaN here
        token_loss = F.cross_entropy(logits.flatten(0, 1).float(), shared_targets.flatten(), ignore_index=-1,
                                     reduction='none')  # (B * N_tgt,)
        M = len(self.names)
        weight = valid.flatten().float()
        loss_sum = torch.zeros(M, device=logits.device).index_add_(0, dec_mod.flatten(), token_loss * weight)
        count = torch.zeros(M, device=logits.device).index_add_(0, dec_mod.flatten(), weight)
        total = count if loss_tokens is None else loss_tokens  # (M,)
        present = total > 0
        loss = (loss_sum / total.clamp(min=1) * present).sum() / present.sum().clamp(min=1)
        per_modality = torch.where(count > 0, loss_sum / count.clamp(min=1), float('nan')).detach()  # (M,)
        metrics = {f'loss_{name}': per_modality[i] for i, name in enumerate(self.names)}
        return logits, loss, metrics

    def loss_tokens(self, batch):
        """Target tokens per modality (M,) of a batch: what its loss averages each modality over (see MaskGIT's)."""
        valid = (batch['targets'] >= 0).flatten().float()
        return torch.zeros(len(self.names), device=valid.device).index_add_(0, batch['dec_mod'].flatten(), valid)

    def modality_id(self, name):
        if name not in self.names:
            raise ValueError(f"this model knows the modalities {self.names}, not {name!r}")
        return self.names.index(name)

    @torch.no_grad()
    def predict(self, inputs, target, query_pos=None, known_tokens=None, known_pos=None):
        """One pass. inputs {modality name: tokens (B, L_m)}, fully visible; target a modality name. Returns
        logits (B, Q, target's vocab size) for the target positions query_pos (B, Q) (default: all), given
        also the target tokens already known (known_tokens at known_pos, (B, K))."""
        device = self.pos_table.device
        B = next(iter(inputs.values())).size(0) if inputs else (query_pos.size(0) if query_pos is not None else 1)
        t = self.modality_id(target)
        spec = self.config.modalities[t]
        if query_pos is None:
            query_pos = torch.arange(spec['num_tokens'], device=device).expand(B, -1)
        known = (target, known_tokens, known_pos) if known_tokens is not None else None
        enc_tokens, enc_pos, enc_mod, enc_pad = self.encoder_inputs(inputs, B, known)
        dec_mod = torch.full_like(query_pos, t)
        logits, _, _ = self(enc_tokens, enc_pos, enc_mod, enc_pad, query_pos, dec_mod, torch.zeros_like(dec_mod, dtype=torch.bool))
        offset = int(self.vocab_offset[t])
        return logits[..., offset:offset + spec['vocab_size']]  # (B, Q, vocab of target)

    def encoder_inputs(self, inputs, batch_size, known=None):
        """inputs {modality name: tokens (B, L_m)}, each fully visible (a span-masked sequence up to its <eos>;
        the <pad> after it is padding), plus known = (target name, tokens (B, K), positions (B, K)) or None
        -> the encoder's (enc_tokens, enc_pos, enc_mod, enc_pad). Nothing visible gives one padding token."""
        device = self.pos_table.device
        toks, pos, mod, pad = [], [], [], []
        items = [(name, x, torch.arange(x.size(1), device=device).expand(batch_size, -1), True)
                 for name, x in inputs.items()]
        if known is not None:
            items.append((*known, False))
        for name, x, p, whole in items:
            if x.size(1) == 0:  # e.g. no target token decided yet
                continue
            m = self.modality_id(name)
            toks.append(x)
            pos.append(p)
            mod.append(torch.full_like(x, m))
            if whole and self.is_ar[m]:  # a whole sequence: what follows its first <eos> is padding, as in training
                is_eos = (x == self.config.modalities[m]['eos']).long()
                pad.append(is_eos.cumsum(1) - is_eos > 0)
            else:
                pad.append(torch.zeros_like(x, dtype=torch.bool))
        if not toks:  # nothing visible: one padding token (attended anyway, see cross_attention_mask)
            zeros = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
            return zeros, zeros, zeros, torch.ones_like(zeros, dtype=torch.bool)
        return torch.cat(toks, 1), torch.cat(pos, 1), torch.cat(mod, 1), torch.cat(pad, 1)

    @torch.no_grad()
    def generate(self, inputs, target, scheme='maskgit', steps=8, temperature=1.0, top_k=None, top_p=None,
                 schedule=None, generator=None, cfg_scale=1.0, kv_cache=True, batch_size=1):
        """All tokens (B, L) of modality `target` given inputs {name: tokens (B, L_m)}. Image targets (and
        sequences of a 'random' model) are decoded iteratively: the target tokens decided so far join the encoder
        input, the still unknown ones are the decoder's queries; schedule: cosine for maskgit, linear (constant per
        step) for roar, unless given. Sequences of a 'span' model need scheme='ar' (generate_sequence).
        cfg_scale != 1: classifier-free guidance against the same prediction with the inputs removed. With no
        inputs at all ({}), batch_size samples are unconditional."""
        t = self.modality_id(target)
        if bool(self.is_ar[t]) != (scheme == 'ar'):
            raise ValueError(f"{target!r} is decoded with scheme=ar by this model (seq_masking='span')" if self.is_ar[t]
                             else f"scheme=ar is for the sequence modalities of a seq_masking='span' model; decode "
                                  f"{target!r} with scheme=maskgit or scheme=roar")
        if scheme == 'ar':
            return self.generate_sequence(inputs, target, temperature, top_k, top_p, cfg_scale, generator, kv_cache,
                                          batch_size)
        L = self.config.modalities[t]['num_tokens']
        B = next(iter(inputs.values())).size(0) if inputs else batch_size
        device = self.pos_table.device
        positions = torch.arange(L, device=device).expand(B, -1)

        def predict_logits_fn(tokens, mask, cond_dropped):
            # every row has as many unknown tokens as the others (one schedule), so the selections are (B, K), (B, Q)
            known_pos, query_pos = positions[~mask].view(B, -1), positions[mask].view(B, -1)
            given = {} if cond_dropped else inputs  # unconditional: the condition removed, the decided tokens kept
            logits = self.predict(given, target, query_pos, tokens[~mask].view(B, -1), known_pos).float()
            out = torch.zeros(B, L, logits.size(-1), device=device)
            return out.scatter(1, query_pos[..., None].expand_as(logits), logits)  # (B, L, V)

        tokens = torch.zeros(B, L, dtype=torch.long, device=device)
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
        schedule = schedule or ('cosine' if scheme == 'maskgit' else 'linear')
        tokens, _ = iterative_decode(predict_logits_fn, tokens, mask, steps=min(steps, L), scheme=scheme,
                                     schedule=schedule, temperature=temperature, top_k=top_k, top_p=top_p,
                                     cfg_scale=cfg_scale, generator=generator)
        return tokens

    @torch.no_grad()
    def generate_sequence(self, inputs, target, temperature=1.0, top_k=None, top_p=None, cfg_scale=1.0,
                          generator=None, kv_cache=True, batch_size=1, return_logits=False):
        """A whole sequence modality, autoregressively (seq_masking='span'): the target is one span covering the
        sequence, so it starts with the first sentinel; then one token per step until <eos>. The encoder runs
        once; the decoder keeps its self-attention keys in a KV cache (kv_cache=False re-runs it over the whole
        prefix every step: the slow reference). cfg_scale != 1 runs a second stream with the inputs removed
        (all padding: what a sample whose inputs were all dropped is in training), as one batch of 2B. Returns
        (B, num_tokens) in the dataset's layout: tokens, <eos>, then <pad>; with return_logits, also the
        (guided) logits of every step (B, steps, vocab)."""
        t = self.modality_id(target)
        spec = self.config.modalities[t]
        L, eos, V = spec['num_tokens'], spec['eos'], spec['vocab_size']
        first_sentinel = V - spec['num_sentinels']
        B = next(iter(inputs.values())).size(0) if inputs else batch_size
        enc_tokens, enc_pos, enc_mod, enc_pad = self.encoder_inputs(inputs, B)
        guided = cfg_scale != 1.0
        if guided:  # rows B..2B-1: all padding, i.e. nothing visible (encode makes padding content irrelevant)
            enc_tokens, enc_pos, enc_mod = (torch.cat([x, x]) for x in (enc_tokens, enc_pos, enc_mod))
            enc_pad = torch.cat([enc_pad, torch.ones_like(enc_pad)])
        context, _ = self.encode(enc_tokens, enc_pos, enc_mod, enc_pad)  # sequence queries: no grid features
        R, device, offset = context.size(0), context.device, int(self.vocab_offset[t])
        max_len = L + 1  # the sentinel, at most L - 1 tokens, <eos>
        cache = None
        if kv_cache:
            c = self.config
            cache = KVCache(len(self.decoder), R, c.n_head, c.n_embd // c.n_head, max_len, device, context.dtype)
        prev = torch.full((R, 1), -1, dtype=torch.long, device=device)  # each position's previous token
        done = torch.zeros(B, dtype=torch.bool, device=device)
        step_logits = []
        for j in range(max_len):
            pos = torch.arange(j, j + 1, device=device) if kv_cache else torch.arange(j + 1, device=device)
            dec_pos = pos.expand(R, -1)
            dec_tokens = prev[:, -1:] if kv_cache else prev
            dec_mod, dec_pad = torch.full_like(dec_pos, t), torch.zeros_like(dec_pos, dtype=torch.bool)
            logits = self.decode(context, enc_pad, dec_pos, dec_mod, dec_pad, dec_tokens, cache)
            logits = logits[:, -1, offset:offset + V].float()  # (R, V)
            if guided:
                logits = cfg_logits(logits[:B], logits[B:], cfg_scale)
            step_logits.append(logits)
            if j == 0:  # every whole-sequence target starts with the first sentinel
                nxt = torch.full((B, 1), first_sentinel, dtype=torch.long, device=device)
            else:
                logits[:, first_sentinel:] = float('-inf')  # one span only: no further sentinel
                nxt = sample_logits(logits, temperature, top_k, top_p, generator)  # (B, 1)
                done |= nxt[:, 0] == eos
            prev = torch.cat([prev, torch.cat([nxt, nxt]) if guided else nxt], dim=1)
            if done.all():
                break
        out = torch.full((B, L), spec['pad'], dtype=torch.long, device=device)
        for b, row in enumerate(prev[:B, 2:].tolist()):  # after the -1 and the sentinel
            row = (row[:row.index(eos)] if eos in row else row)[:L - 1]
            out[b, :len(row)] = torch.tensor(row, dtype=torch.long)
            out[b, len(row)] = eos
        return (out, torch.stack(step_logits, 1)) if return_logits else out

    @torch.no_grad()
    def load_pretrained(self, state_dict, modalities):
        """Start from a 4M trained on other modalities (train.py --init_from=<out_dir>): state_dict and modalities
        (its ModelConfig.modalities) are that model's. Each of its modalities' rows in the per-modality tables (its
        vocabulary slice of tok_emb and head, its digit_emb rows, its row of the modality embeddings) is copied to
        where the modality sits in this model; modalities it lacks keep their fresh init; every other weight is
        copied as is. Raises ValueError if the weights do not fit. Returns the names of the new modalities."""
        def layout(mods):  # name -> its rows in each kind of per-modality table, laid out as in __init__
            rows, token, digit = {}, 0, 1  # digit_emb's row 0 is the zero row of ids without digits
            for i, m in enumerate(mods):
                n_digits = sum(m.get('levels', ()))
                rows[m['name']] = {'token': slice(token, token + m['vocab_size']), 'modality': slice(i, i + 1),
                                   'digit': slice(digit, digit + n_digits)}
                token, digit = token + m['vocab_size'], digit + n_digits
            return rows

        mine = {m['name']: m for m in self.config.modalities}
        for m in modalities:
            if m['name'] not in mine:
                raise ValueError(f"the checkpoint's modality {m['name']!r} is not one of this model's {self.names}")
            here = mine[m['name']]
            changed = [k for k in ('kind', 'vocab_size', 'grid', 'levels') if m.get(k) != here.get(k)]
            if changed:
                was, now = (', '.join(f"{k}={spec.get(k)}" for k in changed) for spec in (m, here))
                raise ValueError(f"modality {m['name']!r} has {was} in the checkpoint but {now} here: its tokens mean "
                                 f"something else now (retokenized), so its weights cannot be transferred")
        old, new = layout(modalities), layout(self.config.modalities)
        tables = {self.tok_emb.weight: 'token', self.head.weight: 'token', self.enc_mod_emb.weight: 'modality',
                  self.dec_mod_emb.weight: 'modality'}
        if self.digit_emb is not None:
            tables[self.digit_emb.weight] = 'digit'
        own = self.state_dict(keep_vars=True)
        unknown = sorted(set(state_dict) - set(own))
        if unknown:
            raise ValueError(f"the checkpoint has weights this model lacks: {', '.join(unknown[:3])}")
        for name, p in own.items():
            saved, kind = state_dict.get(name), tables.get(p)
            if saved is None and kind == 'digit':  # the checkpoint had no FSQ modality: no digit rows to copy
                continue
            rows = int(kind is not None)  # a per-modality table may differ in its number of rows only
            if saved is None or saved.shape[rows:] != p.shape[rows:]:
                raise ValueError(f"{name} is {'missing' if saved is None else tuple(saved.shape)} in the checkpoint, "
                                 f"{tuple(p.shape)} in this model")
            if kind is None:  # a weight every modality shares
                p.copy_(saved)
            else:
                for m in modalities:
                    p[new[m['name']][kind]] = saved[old[m['name']][kind]]
        return [n for n in self.names if n not in old]


def decoder_attention(dec_mod, dec_pos, dec_pad, is_ar, dec_attn='modality'):
    """Which targets each decoder query may attend: (B, N, N) bool, True = may. Padding is never attended;
    dec_attn='modality' keeps a query to targets of its own modality (4M), 'all' lets it see every target.
    A key of an autoregressive modality (is_ar (M,)) carries its teacher-forced previous token, so it is seen
    only by queries of its own sequence at or after its position (causal): nothing else may peek at the answer."""
    same = dec_mod[:, :, None] == dec_mod[:, None, :]  # (B, Nq, Nk)
    keep = ~dec_pad[:, None, :] & (same if dec_attn == 'modality' else True)
    causal = same & (dec_pos[:, None, :] <= dec_pos[:, :, None])
    return keep & (~is_ar[dec_mod][:, None, :] | causal)


def self_attention_mask(keep):
    """keep (B, N) or (B, Nq, Nk) bool, True where a key may be attended -> SDPA mask (B, 1, N, N). Every token
    may also attend to itself, so a padded row (or a sample with no other valid key) never has all keys masked,
    which would make softmax return NaN."""
    if keep.dim() == 2:
        keep = keep[:, None, :]
    N = keep.size(-1)
    return (keep | torch.eye(N, dtype=torch.bool, device=keep.device))[:, None]


def cross_attention_mask(key_valid, num_queries):
    """key_valid (B, N_k) -> (B, 1, num_queries, N_k). A sample with no valid key at all (nothing visible, e.g.
    unconditional generation) attends to its padding instead of nothing, which would be NaN; FourM.encode makes
    every padded slot identical, so that is one and the same unconditional prediction in training and sampling."""
    key_valid = key_valid | ~key_valid.any(dim=1, keepdim=True)
    return key_valid[:, None, None, :].expand(-1, 1, num_queries, -1)

# -----------------------------------------------------------------------------
# helpers shared by every family

def next_token_outputs(model, x, targets):
    """Final features x (B, T, C) of a causal model -> (logits, loss, metrics) through model.lm_head, with the
    config's logit soft-cap. Without targets only the last position's logits are computed (B, 1, V)."""
    cap = model.config.logit_softcap
    if targets is None:
        return softcap(readout(model.lm_head, x[:, [-1], :], model.config), cap), None, {}
    logits = softcap(readout(model.lm_head, x, model.config), cap)  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
    return logits, loss, {}


def num_params(model, non_embedding=True):
    """Parameter count; by default without position embeddings (token embeddings are tied to the head)."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding and hasattr(model, 'pos_emb'):
        n -= model.pos_emb.weight.numel()
    return n


def flops_per_token(model, seq_len):
    """Training FLOPs per token: 6N for the matmuls with the weights, plus 12·L·C·T for attention
    scores and their weighted sum (PaLM appendix B), forward and backward (families without attention: 6N)."""
    c = model.config
    if not any(isinstance(m, Attention) for m in model.modules()):
        return 6 * num_params(model)
    if c.model_type == '4m':
        # seq_len = inputs + targets, taken as equal halves. An input token runs through the encoder and the decoder's
        # key/value projections, a target token through the rest of the decoder and the head (token embeddings are
        # lookups): 6N over all parameters would count every token through both halves, ~2x too many
        n_in = n_tgt = seq_len / 2
        count = lambda modules: sum(p.numel() for m in modules if m is not None for p in m.parameters())
        kv = count([block.cross_attn.kv_proj for block in model.decoder])
        enc = count([model.encoder, model.context_proj, model.grid_mixer]) + kv
        dec = count([model.decoder, model.head]) - kv
        n_dec = c.n_layer_dec or c.n_layer
        attention = 12 * c.n_embd * (c.n_layer * n_in * n_in + n_dec * n_tgt * (n_tgt + n_in))
        return (6 * (enc * n_in + dec * n_tgt) + attention) / seq_len
    return 6 * num_params(model) + 12 * c.n_layer * c.n_embd * seq_len

# -----------------------------------------------------------------------------
# μP (the maximal update parametrisation; Yang & Hu 2021, Tensor Programs V 2022): with m = n_embd / mup_base_width,
#   hidden matrices (both sides grow with width)  init std / sqrt(m), Adam learning rate / m  (optim.py)
#   attention logits                               q·k / head_dim instead of / sqrt(head_dim)  (Attention)
#   output logits                                  head input x 1/m, head updated at the base rate  (readout)
#   embeddings, norms, biases                      unchanged
# so that every layer's activations, and how much one optimizer step moves them, stay the same size as the model
# widens: a learning rate tuned at the base width is the best one at every width. At m = 1 this is the standard model.

def width_dims(model):
    """{parameter name: how many of its dims grow with n_embd}: 2 for hidden matrices, 1 for vectors and for the
    matrices with one fixed side (embeddings, output heads, patch projections), 0 for fixed sizes. Found by building
    the same model twice as wide on the meta device (no memory, no random numbers), so any family is covered."""
    wide = dict(model.config.to_dict(), n_embd=2 * model.config.n_embd, mup=False)
    with torch.device('meta'):
        twin = build_model(ModelConfig.from_dict(wide))
    twin_shapes = {name: p.shape for name, p in twin.named_parameters()}
    return {name: sum(a != b for a, b in zip(p.shape, twin_shapes[name])) for name, p in model.named_parameters()}


def mup_init(model):
    """μP's init: the hidden matrices of Linear layers start at std / sqrt(m) (variance ~ 1/fan_in, the standard
    init at the base width). Convolutions keep PyTorch's init, already ~ 1/sqrt(fan_in)."""
    c = model.config
    if c.mup_base_width <= 0:
        raise ValueError(f"mup=True needs mup_base_width, the width its hyperparameters were tuned at, e.g. "
                         f"--mup_base_width={c.n_embd}")
    hidden = {name for name, d in width_dims(model).items() if d == 2}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and (f'{name}.weight' if name else 'weight') in hidden:
                m.weight.mul_(math.sqrt(c.mup_base_width / c.n_embd))


# model_type -> 'module.Class'. A new family is one line here; families outside this file import its blocks, so
# they are imported when built rather than at the top (no import cycle)
FAMILIES = {'gpt': 'model.GPT', 'maskgit': 'model.MaskGIT', '4m': 'model.FourM',
            'lstm': 'baselines.LSTM', 'kgram_mlp': 'baselines.KGramMLP', 'flow': 'flow.FlowDiT', 'vlm': 'vlm.VLM'}


def build_model(config):
    if config.model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {config.model_type!r}; choose one of {sorted(FAMILIES)}")
    module, name = FAMILIES[config.model_type].rsplit('.', 1)
    model = getattr(importlib.import_module(module), name)(config)
    if config.mup:
        mup_init(model)
    return model
