"""
nano4M model definitions, in one file: shared Transformer building blocks, then the model families
behind `ModelConfig.model_type`:
  'gpt'        causal decoder over a token sequence (text, or image tokens in raster order after a class token)
  'maskgit'    bidirectional Transformer over an image's token grid: predicts masked tokens; decoded iteratively
  'lstm'       baseline: a stacked LSTM language model
  'kgram_mlp'  baseline: an MLP over the last k tokens, slid along the sequence
  '4m'   encoder-decoder over sets of tokens from several modalities: the encoder reads any visible subset,
         the decoder's queries (modality + position) predict any other subset (any-to-any, chained generation)
This file imports nothing of ours (pure torch), so it can be read on its own.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# config

@dataclass
class ModelConfig:
    model_type: str = 'gpt'     # 'gpt' | 'maskgit' | '4m' | 'lstm' | 'kgram_mlp'
    block_size: int = 1024      # longest sequence the positions cover
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # bias in Linears and LayerNorms; False is a bit better and faster
    # architecture options (issue 8); the defaults are the original GPT-2 recipe
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


class KVCache:
    """Inference state for one forward stream: per layer, the keys and values seen so far, plus `state`, a
    dict for layers whose memory is a fixed-size summary instead (linear attention, LSTM, k-gram window).

    Kept outside the modules so the model maths stays stateless; generation creates one, passes it
    down, and throws it away. Buffers are preallocated to `max_len` so appending is a copy, not a cat."""

    def __init__(self, n_layer, batch_size, n_head, head_dim, max_len, device, dtype):
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0  # tokens already cached (the same for every layer once a forward finishes)
        self.state = {}  # recurrent layers: layer -> their summary of the past

    def reset(self):
        """Forget everything (keys past `length` are never read, so only the recurrent state is cleared)."""
        self.length = 0
        self.state = {}

    def append(self, layer, k, v):
        """Store k, v (B, nh, T, hs) after what is cached for `layer`; return all cached keys and values."""
        start, end = self.length, self.length + k.size(2)
        assert end <= self.max_len, "KV cache overflow: the caller must re-prefill a shorter window"
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

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


def softcap(logits, cap):
    """Smoothly bound logits to (-cap, cap) (Gemma 2, modded-nanogpt); None leaves them alone."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


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
            y = linear_attention(q, k, v, log_gate, kv_cache, layer)
        else:
            if kv_cache is not None:
                past = kv_cache.length
                k, v = kv_cache.append(layer, k, v)  # (B, nh, past + T, hs)
                if causal and T > 1:
                    # new queries sit at positions past..past+T-1 and see every cached key up to their own
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
                causal = False  # a single new query may see the whole cache
            # PyTorch's CPU flash-attention kernel is no faster in bf16 than in fp32 forward, and its bf16 backward
            # is ~2.5x slower (torch 2.13; README, Stage 1): on a CPU, attention itself runs in fp32
            dtype, on_cpu = q.dtype, q.device.type == 'cpu'
            if on_cpu and dtype == torch.bfloat16:
                q, k, v = q.float(), k.float(), v.float()
            with torch.autocast('cpu', enabled=False) if on_cpu else nullcontext():  # autocast would cast back
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                   dropout_p=self.dropout if self.training else 0.0).to(dtype)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.resid_dropout(self.out_proj(y))


def linear_attention(q, k, v, log_gate, kv_cache=None, layer=0):
    """Gated linear attention with a scalar forget gate per head and step (the recurrence of GLA / Mamba-2,
    simplified). As a recurrence over a (hs, hs) state S per head:

        S_t = g_t · S_{t-1} + k_t v_tᵀ,      y_t = q_t S_t / sqrt(hs)

    Training uses the equivalent parallel form, y = ((q kᵀ / sqrt(hs)) ⊙ D) v with D[t, s] = g_{s+1}···g_t for
    s <= t: quadratic in T like softmax attention, but exact, and fine at our context lengths. With a cache,
    the state S carried from earlier tokens adds (g_1···g_t) · q_t S_0 and is updated for the next call, so
    decoding costs O(1) per token. The output is RMS-normalised per head (as GLA and RetNet do) since, without
    a softmax, its scale drifts with the sequence length.
    q, k, v (B, nh, T, hs); log_gate (B, nh, T) = log g."""
    B, nh, T, hs = q.shape
    q, k, v = q.float() / math.sqrt(hs), k.float(), v.float()
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

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) token ids; targets (B, T) or None. Returns (logits, loss, metrics).

        Without targets only the last position's logits are computed (all that sampling needs)."""
        c = self.config
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > c.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {c.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.tok_emb(idx)  # (B, T, C)
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
# baselines for the causal stage (the classic course models): same batches, same loss, same generation

class LSTM(nn.Module):
    """Token embedding -> n_layer stacked LSTMs of width n_embd -> final norm -> tied output head. No positions:
    the recurrence knows the order. With a cache, the (h, c) state carries the past from call to call."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.n_embd, config.n_embd, num_layers=config.n_layer, batch_first=True,
                            dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.norm_f = Norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight
        init_weights(self, config.n_layer)  # embeddings and head; the LSTM keeps PyTorch's uniform init

    def forward(self, idx, targets=None, kv_cache=None):
        state = kv_cache.state.get('lstm') if kv_cache is not None else None  # ((L, B, C), (L, B, C)) or None
        x, state = self.lstm(self.drop(self.tok_emb(idx)), state)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.state['lstm'] = state
            kv_cache.length += idx.size(1)
        return next_token_outputs(self, self.norm_f(x), targets)

    def new_kv_cache(self, batch_size, max_len=None):
        p = next(self.parameters())
        return KVCache(0, batch_size, 0, 0, max_len or self.config.block_size, p.device, p.dtype)

    def generate(self, idx, max_new_tokens, **kwargs):
        return generate_causal(self, idx, max_new_tokens, **kwargs)


class KGramMLP(nn.Module):
    """Predicts token t+1 from tokens t-k+1..t only (k = config.kgram_k): their embeddings, concatenated, are
    projected to n_embd and go through n_layer residual MLP blocks. It is applied at every position at once, as
    a window sliding along the sequence (before the text starts the window holds zero vectors). The shared
    Norm and MLP blocks are used, so the norm and mlp options apply here too."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.in_proj = nn.Linear(config.kgram_k * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)
        self.norms = nn.ModuleList([Norm(config) for _ in range(config.n_layer)])
        self.mlps = nn.ModuleList([MLP(config) for _ in range(config.n_layer)])
        self.norm_f = Norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight
        init_weights(self, config.n_layer)

    def forward(self, idx, targets=None, kv_cache=None):
        B, T = idx.shape
        k, C = self.config.kgram_k, self.config.n_embd
        x = self.tok_emb(idx)  # (B, T, C)
        past = kv_cache.state.get('window') if kv_cache is not None else None  # the k-1 embeddings before idx
        if past is None:
            past = x.new_zeros(B, k - 1, C)
        x = torch.cat([past, x], dim=1)  # (B, k-1+T, C)
        if kv_cache is not None:
            kv_cache.state['window'] = x[:, x.size(1) - (k - 1):]
            kv_cache.length += T
        windows = x.unfold(1, k, 1)  # (B, T, C, k): window t holds tokens t-k+1..t
        h = self.drop(self.in_proj(windows.transpose(2, 3).reshape(B, T, k * C)))  # (B, T, C)
        for norm, mlp in zip(self.norms, self.mlps):
            h = h + mlp(norm(h))
        return next_token_outputs(self, self.norm_f(h), targets)

    def new_kv_cache(self, batch_size, max_len=None):
        p = next(self.parameters())
        return KVCache(0, batch_size, 0, 0, max_len or self.config.block_size, p.device, p.dtype)

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

    def forward(self, tokens, mask, cond=None, compute_loss=True):
        """tokens (B, L) image token ids (what sits at masked positions is ignored), mask (B, L) bool, True =
        hidden from the model and predicted; cond (B, cond_len) ids or None. Returns (logits (B, L, K), loss
        over masked positions only, metrics)."""
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
        logits = softcap(self.head(self.norm_f(x[:, c.cond_len:])), c.logit_softcap)  # (B, L, K): grid only
        if not compute_loss:
            return logits, None, {}
        # loss on masked positions only: visible tokens are copied from the input, predicting them is free
        masked_logits, masked_targets = logits[mask], tokens[mask]  # (M, K), (M,)
        loss = F.cross_entropy(masked_logits.float(), masked_targets, label_smoothing=c.label_smoothing)
        accuracy = (masked_logits.argmax(-1) == masked_targets).float().mean()
        return logits, loss, {'masked_acc': accuracy.detach()}

# -----------------------------------------------------------------------------
# 4M: encoder-decoder over multimodal token sets

class GridMixer(nn.Module):
    """3x3 convolutions over the image grid that the aligned image modalities share (clevr: rgb, depth, normals,
    semseg all on 8x8). The visible tokens' embeddings are averaged per cell, zero where nothing is visible, and
    convolved; the result at a cell is added to the image tokens there and to the decoder's image queries
    there. Why: a Transformer must learn from scratch that an image token's neighbours matter and which target
    query sits where; on 2 CPU cores it learned rgb -> semseg shapes far slower than a small CNN over the same
    tokens (README, 4M section). Inputs and targets are disjoint, so a query never sees its own answer."""

    def __init__(self, C, num_layers, grid):
        super().__init__()
        self.h, self.w = grid
        self.convs = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1) for _ in range(num_layers)])
        nn.init.zeros_(self.convs[-1].weight)  # starts as a no-op: the plain 4M
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x, on_grid, pos):
        """x (B, N, C) token embeddings, on_grid (B, N) bool: visible tokens of the grid's modalities, pos (B, N)
        their cells -> features per cell (B, h*w, C)."""
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
        pos = torch.zeros(len(mods), max_tokens, C)  # (M, P, C)
        for i, m in enumerate(mods):
            h, w = m['grid']
            if m['kind'] == 'image':  # raster order; half the channels encode the row, half the column
                rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
                pos[i, :h * w] = sincos_2d(rows, cols, C)
            else:
                pos[i, :2 * h * w] = sincos_1d(torch.arange(2 * h * w), C)
        self.register_buffer('pos_table', pos, persistent=False)

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
        # the grid of GridMixer: the first image modality's; image modalities on another grid are left out of it
        grids = [tuple(m['grid']) for m in mods if m['kind'] == 'image']
        on_grid = [m['kind'] == 'image' and tuple(m['grid']) == grids[0] for m in mods] if grids else [False] * len(mods)
        self.register_buffer('on_grid', torch.tensor(on_grid), persistent=False)  # (M,)
        self.grid_mixer = GridMixer(C, config.grid_conv, grids[0]) if config.grid_conv and grids else None
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
        ids = enc_tokens + self.vocab_offset[enc_mod]
        x = self.tok_emb(ids) + self.enc_mod_emb(enc_mod)  # (B, N_in, C)
        if self.digit_emb is not None:
            x = x + self.digit_emb(self.digit_ids[ids]).sum(-2)
        grid = None
        if self.grid_mixer is not None:
            on_grid = self.on_grid[enc_mod] & ~enc_pad
            grid = self.grid_mixer(x, on_grid, enc_pos)
            x = x + GridMixer.read(grid, enc_pos, on_grid)
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
            x = x + GridMixer.read(grid, dec_pos, self.on_grid[dec_mod])
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
        logits = self.head(self.dec_norm(x))  # (B, N_tgt, V)
        return logits.masked_fill(~self.in_vocab[dec_mod], float('-inf'))

    def forward(self, enc_tokens, enc_pos, enc_mod, enc_pad, dec_pos, dec_mod, dec_pad, targets=None, dec_tokens=None):
        """Tokens are ids within their modality's own vocabulary; positions index the modality's grid (raster
        order) or sequence; *_pad (bool) marks padding. targets (B, N_tgt) holds -1 on padding. dec_tokens
        (seq_masking='span'): each autoregressive target's previous token, -1 for none (see decode).
        Returns (logits (B, N_tgt, V) over the shared id space, loss, metrics): the loss is the mean over target
        tokens of each modality, then the mean over the modalities present in the batch; metrics hold the
        per-modality losses (NaN for a modality with no target tokens in this batch)."""
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
        present = count > 0
        per_modality = loss_sum / count.clamp(min=1)  # (M,)
        loss = (per_modality * present).sum() / present.sum().clamp(min=1)
        per_modality = torch.where(present, per_modality, float('nan')).detach()
        metrics = {f'loss_{name}': per_modality[i] for i, name in enumerate(self.names)}
        return logits, loss, metrics

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
                 schedule=None, generator=None, cfg_scale=1.0, kv_cache=True):
        """All tokens (B, L) of modality `target` given inputs {name: tokens (B, L_m)}. Image targets (and
        sequences of a 'random' model) are decoded iteratively: the target tokens decided so far join the encoder
        input, the still unknown ones are the decoder's queries; schedule: cosine for maskgit, linear (constant per
        step) for roar, unless given. Sequences of a 'span' model need scheme='ar' (generate_sequence).
        cfg_scale != 1: classifier-free guidance against the same prediction with the inputs removed."""
        t = self.modality_id(target)
        if bool(self.is_ar[t]) != (scheme == 'ar'):
            raise ValueError(f"{target!r} is decoded with scheme=ar by this model (seq_masking='span')" if self.is_ar[t]
                             else f"scheme=ar is for the sequence modalities of a seq_masking='span' model; decode "
                                  f"{target!r} with scheme=maskgit or scheme=roar")
        if scheme == 'ar':
            return self.generate_sequence(inputs, target, temperature, top_k, top_p, cfg_scale, generator, kv_cache)
        L = self.config.modalities[t]['num_tokens']
        B = next(iter(inputs.values())).size(0)
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
                          generator=None, kv_cache=True):
        """A whole sequence modality, autoregressively (seq_masking='span'): the target is one span covering the
        sequence, so it starts with the first sentinel; then one token per step until <eos>. The encoder runs
        once; the decoder keeps its self-attention keys in a KV cache (kv_cache=False re-runs it over the whole
        prefix every step: the slow reference). cfg_scale != 1 runs a second stream with the inputs removed,
        as one batch of 2B. Returns (B, num_tokens) in the dataset's layout: tokens, <eos>, then <pad>."""
        t = self.modality_id(target)
        spec = self.config.modalities[t]
        L, eos, V = spec['num_tokens'], spec['eos'], spec['vocab_size']
        first_sentinel = V - spec['num_sentinels']
        B = next(iter(inputs.values())).size(0)
        enc_tokens, enc_pos, enc_mod, enc_pad = self.encoder_inputs(inputs, B)
        guided = cfg_scale != 1.0
        if guided:  # rows B..2B-1: the same tokens, all padding, i.e. nothing visible
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
        for j in range(max_len):
            pos = torch.arange(j, j + 1, device=device) if kv_cache else torch.arange(j + 1, device=device)
            dec_pos = pos.expand(R, -1)
            dec_tokens = prev[:, -1:] if kv_cache else prev
            dec_mod, dec_pad = torch.full_like(dec_pos, t), torch.zeros_like(dec_pos, dtype=torch.bool)
            logits = self.decode(context, enc_pad, dec_pos, dec_mod, dec_pad, dec_tokens, cache)
            logits = logits[:, -1, offset:offset + V].float()  # (R, V)
            if guided:
                logits = cfg_logits(logits[:B], logits[B:], cfg_scale)
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
        return out


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
    unconditional generation) attends to its padding instead of nothing, which would be NaN; padding carries
    no information, so that is an unconditional prediction."""
    key_valid = key_valid | ~key_valid.any(dim=1, keepdim=True)
    return key_valid[:, None, None, :].expand(-1, 1, num_queries, -1)

# -----------------------------------------------------------------------------
# helpers shared by every family

def next_token_outputs(model, x, targets):
    """Final features x (B, T, C) of a causal model -> (logits, loss, metrics) through model.lm_head, with the
    config's logit soft-cap. Without targets only the last position's logits are computed (B, 1, V)."""
    cap = model.config.logit_softcap
    if targets is None:
        return softcap(model.lm_head(x[:, [-1], :]), cap), None, {}
    logits = softcap(model.lm_head(x), cap)  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
    return logits, loss, {}


@torch.no_grad()
def generate_causal(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                    kv_cache=True, generator=None):
    """Continue idx (B, T) by max_new_tokens tokens with any causal family (gpt, lstm, kgram_mlp): each has
    forward(idx, kv_cache=...) and new_kv_cache(batch_size). With kv_cache=False every step re-runs the whole
    (cropped) context: the slow, obviously correct reference the cached path is tested against.

    Past block_size: the uncached path conditions on the last block_size tokens at every step. Learned
    absolute positions cannot slide inside a cache, so the cached path, when its cache is full,
    re-prefills the last block_size // 2 tokens and goes on; that costs one prefill per block_size // 2
    new tokens and keeps every cached key at the position it was computed for."""
    block_size = model.config.block_size
    cache = model.new_kv_cache(idx.size(0)) if kv_cache else None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    next_input = None
    for _ in range(max_new_tokens):
        if cache is None:
            logits, _, _ = model(idx[:, -block_size:])
        else:
            if next_input is None or cache.length + 1 > block_size:
                cache.reset()  # (re-)prefill
                next_input = idx[:, -(block_size // 2 if next_input is not None else block_size):]
            logits, _, _ = model(next_input, kv_cache=cache)
        idx_next = sample_logits(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
        if stop_token is not None:
            idx_next = torch.where(done[:, None], torch.full_like(idx_next, stop_token), idx_next)
            done |= idx_next[:, 0] == stop_token
        idx = torch.cat((idx, idx_next), dim=1)
        next_input = idx_next
        if stop_token is not None and done.all():
            break
    return idx


def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (..., V) -> sampled ids (..., 1). temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat, 1, generator=generator).view(*probs.shape[:-1], 1)


def gumbel_noise(shape, generator=None, device=None):
    """Standard Gumbel noise -log(-log(u)), u ~ U(0, 1), kept finite at both ends."""
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))


def sample_logits_icdf(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Same distribution as sample_logits, drawn by inverse CDF: one uniform number per row, found in the row's
    cumulative probabilities. torch.multinomial is slow on CPU for many rows at once (every grid position of
    every image in a MaskGIT step), and Gumbel-max needs a random number and two logs per vocabulary entry
    (1.9 vs 0.5 ms for a 256 x 1000 step on one core). Returns ids (...,), without the trailing 1."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1).cumsum(dim=-1)  # (..., V)
    u = torch.rand(*cdf.shape[:-1], 1, generator=generator, device=cdf.device) * cdf[..., -1:]
    # the first id whose cumulative probability exceeds u (a filtered id adds nothing, so it is never first)
    return torch.searchsorted(cdf, u, right=True)[..., 0].clamp(max=cdf.size(-1) - 1)


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Temperature, then top-k, then top-p (nucleus): logits (..., V) -> logits with dropped ids at -inf."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token once the mass before it already reaches top_p (the most likely token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float('-inf'))
    return logits


def cfg_logits(cond_logits, uncond_logits, scale):
    """Classifier-free guidance: uncond + scale * (cond - uncond), written as cond + (scale - 1) * (cond - uncond)
    so that scale 1 returns the conditional logits bit for bit (no guidance), scale 0 the unconditional ones,
    and scale > 1 pushes away from the unconditional prediction."""
    if scale == 1.0:
        return cond_logits
    return cond_logits + (scale - 1.0) * (cond_logits - uncond_logits)


def masking_schedule(name, t):
    """Share of a grid's tokens still masked at decoding progress t in [0, 1] (1 at t = 0, 0 at t = 1).
    'cosine' is MaskGIT's cos(pi/2 t): few tokens early, when the model knows least, many late. 'linear' is
    1 - t, i.e. the same number every step (the course reference's constant schedule, and what a model trained
    with a uniform mask count expects)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if name == 'cosine':
        return torch.cos(0.5 * math.pi * t)
    if name in ('linear', 'uniform'):
        return 1.0 - t
    raise ValueError(f"unknown masking schedule {name!r}: choose cosine, linear or uniform")


def reveal_counts(num_masked, steps, schedule='cosine'):
    """num_masked (B,) unknown tokens per sample -> (steps, B) how many each step reveals: after step s,
    floor(num_masked * schedule((s + 1) / steps)) stay masked, at least one is revealed per step (while any
    remain), and the last step reveals the rest, so each column sums to num_masked."""
    num_masked = torch.as_tensor(num_masked, dtype=torch.long)
    remaining, counts = num_masked.clone(), []
    for s in range(steps):
        keep = torch.floor(num_masked.double() * masking_schedule(schedule, (s + 1) / steps)).long()
        keep = torch.minimum(keep, (remaining - 1).clamp(min=0)) if s < steps - 1 else torch.zeros_like(keep)
        counts.append(remaining - keep)
        remaining = keep
    return torch.stack(counts)


@torch.no_grad()
def iterative_decode(predict_logits_fn, tokens, mask, steps=8, scheme='maskgit', schedule='cosine',
                     temperature=1.0, top_k=None, top_p=None, choice_temperature=4.5, cfg_scale=1.0,
                     generator=None, return_history=False):
    """Fill the masked positions of tokens (B, L) in `steps` parallel steps (MaskGIT, Chang et al. 2022).

    Each step predicts every position, samples a token at every masked one (temperature, top-k, top-p),
    and keeps the k most confident of them, k from `reveal_counts`:
      'maskgit'  confidence = log p(sampled token) + choice_temperature * (1 - (s + 1) / steps) * Gumbel noise,
                 so the choice starts out noisy (diverse) and becomes greedy by the last step
      'roar'     a random order: confidence is the Gumbel noise alone (what 4M's ROAR decoding does)
    predict_logits_fn(tokens, mask, cond_dropped) -> logits (B, L, V) for every position; with cfg_scale != 1
    it is called a second time with cond_dropped=True and the two are mixed by cfg_logits.
    Returns tokens with no position left masked (and the mask all False); with return_history, also a list
    of (tokens, mask) after every step, for a picture of the decoding process."""
    tokens, mask = tokens.clone(), mask.clone()
    counts = reveal_counts(mask.sum(dim=1).cpu(), steps, schedule).to(tokens.device)  # (steps, B)
    history = []
    for s in range(steps):
        logits = predict_logits_fn(tokens, mask, False)
        if cfg_scale != 1.0:
            logits = cfg_logits(logits, predict_logits_fn(tokens, mask, True), cfg_scale)
        logits = logits.float()
        sampled = sample_logits_icdf(logits, temperature, top_k, top_p, generator)  # (B, L)
        gumbel = gumbel_noise(sampled.shape, generator, sampled.device)  # (B, L) for the choice of positions
        if scheme == 'maskgit':  # log p(sampled) = its logit - logsumexp, without a (B, L, V) log_softmax
            log_p = logits.gather(-1, sampled[..., None])[..., 0] - logits.logsumexp(dim=-1)
            confidence = log_p + choice_temperature * (1.0 - (s + 1) / steps) * gumbel
        elif scheme == 'roar':
            confidence = gumbel
        else:
            raise ValueError(f"unknown decoding scheme {scheme!r}: choose 'maskgit' or 'roar'")
        confidence = confidence.masked_fill(~mask, float('-inf'))  # only masked positions can be revealed
        rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most confident
        reveal = (rank < counts[s][:, None]) & mask
        tokens = torch.where(reveal, sampled, tokens)
        mask = mask & ~reveal
        if return_history:
            history.append((tokens.clone(), mask.clone()))
    assert not mask.any(), "decoding left masked tokens"
    return (tokens, mask, history) if return_history else (tokens, mask)


@torch.no_grad()
def autoregressive_decode(model, prefix, num_tokens, vocab_limit=None, temperature=1.0, top_k=None, top_p=None,
                          cfg_scale=1.0, uncond_prefix=None, generator=None, kv_cache=True):
    """Continue prefix (B, P) by num_tokens tokens with a GPT, optionally only among ids < vocab_limit (an image
    model's codebook: class ids are never sampled) and with classifier-free guidance against uncond_prefix
    (B, P) (e.g. the 'no class' token): the conditional and unconditional streams run as one batch of 2B
    through one KV cache. kv_cache=False re-runs the whole sequence every step: the slow reference."""
    B = prefix.size(0)
    guided = cfg_scale != 1.0
    seq = torch.cat([prefix, uncond_prefix]) if guided else prefix  # (B or 2B, P)
    cache = model.new_kv_cache(seq.size(0), max_len=prefix.size(1) + num_tokens) if kv_cache else None
    next_input = seq
    for _ in range(num_tokens):
        logits, _, _ = model(next_input if kv_cache else seq, kv_cache=cache)
        logits = logits[:, -1, :vocab_limit].float()  # (B or 2B, V)
        if guided:
            logits = cfg_logits(logits[:B], logits[B:], cfg_scale)
        nxt = sample_logits(logits, temperature, top_k, top_p, generator)  # (B, 1)
        next_input = torch.cat([nxt, nxt]) if guided else nxt  # both streams continue with the guided token
        seq = torch.cat([seq, next_input], dim=1)
    return seq[:B, prefix.size(1):]


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
# optimizers

def newton_schulz(G, steps=5, dtype=torch.float32):
    """An approximation of the semi-orthogonal matrix U Vᵀ nearest to G = U S Vᵀ (all singular values -> 1),
    by the quintic Newton–Schulz iteration of Muon (Jordan et al., 2024): X <- aX + (b·XXᵀ + c·(XXᵀ)²)X. Its
    coefficients trade exactness for speed: after 5 steps the singular values lie in roughly [0.7, 1.2],
    which trains as well as exact orthogonalisation at a fraction of an SVD's cost (matmuls only).
    G: one matrix (m, n) or a stack (k, m, n), each orthogonalised on its own.
    dtype: bfloat16, as Muon's authors run it, is 2.6x faster on a CPU with native bf16 (README)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius >= spectral norm: singular values in [0, 1]
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Muon ('MomentUm Orthogonalized by Newton–Schulz', Jordan et al., 2024) for the param groups with
    muon=True, AdamW for the others: one optimizer object, so train.py's schedule, gradient clipping,
    GradScaler and checkpoints treat it like any other (its state is plain tensors in state_dict()).

    Muon, for a 2-D weight W (out, in) with gradient G and momentum buffer M:
        M <- μM + G;   U <- NewtonSchulz(G + μM)  (Nesterov);   W <- W - lr · sqrt(max(1, out/in)) · U
    The orthogonalised update changes W by the same amount in every direction of its input space, instead of
    mostly along the few dominant directions of G. It is meant for hidden matrices only: embeddings, output
    heads, norms and biases use AdamW (decoupled weight decay, bias-corrected moments). A conv kernel
    (out, in, kh, kw) is the matrix (out, in·kh·kw) (tokenizer.py trains its hidden convs with Muon).
    Newton–Schulz runs in ns_dtype (configure_optimizer's argument), batched over the weights of one shape."""

    def __init__(self, param_groups, lr, betas=(0.9, 0.95), eps=1e-8, momentum=0.95, ns_steps=5,
                 ns_dtype=torch.float32):
        defaults = dict(lr=lr, betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps, weight_decay=0.0,
                        muon=False, lr_scale=1.0)
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group['lr'], group['weight_decay']
            same_shape = {}  # Muon's updates before Newton–Schulz, by weight shape
            for p in group['params']:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if wd != 0:
                    p.mul_(1 - lr * wd)
                if group['muon']:
                    if not state:
                        state['momentum_buffer'] = torch.zeros_like(g)
                    buf = state['momentum_buffer']
                    buf.mul_(group['momentum']).add_(g)
                    same_shape.setdefault(p.shape, []).append((p, g.add(buf, alpha=group['momentum'])))
                else:
                    if not state:
                        state['step'] = torch.tensor(0.0)
                        state['exp_avg'] = torch.zeros_like(p)
                        state['exp_avg_sq'] = torch.zeros_like(p)
                    beta1, beta2 = group['betas']
                    state['step'] += 1
                    step = state['step'].item()
                    state['exp_avg'].lerp_(g, 1 - beta1)
                    state['exp_avg_sq'].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (state['exp_avg_sq'] / (1 - beta2 ** step)).sqrt_().add_(group['eps'])
                    p.addcdiv_(state['exp_avg'], denom, value=-lr / (1 - beta1 ** step))
            # one Newton–Schulz per weight shape on the stack of its updates: a few large matmuls instead of many
            # small ones (1.9x faster for the 16x16 tokenizer's twelve 64x576 kernels on 2 CPU cores)
            for shape, pairs in same_shape.items():
                G = torch.stack([update.reshape(shape[0], -1) for _, update in pairs])  # (k, out, in·kh·kw)
                scale = max(1.0, G.size(1) / G.size(2)) ** 0.5
                for (p, _), update in zip(pairs, newton_schulz(G, group['ns_steps'], self.ns_dtype)):
                    p.add_(update.view_as(p).to(p.dtype), alpha=-lr * scale)
        return loss


def hidden_matrices(model):
    """The 2-D weights of the Linear layers inside the network, the ones Muon is for: not embeddings (nor the
    output head tied to them), not output heads (any Linear whose module path says 'head'), not norms or biases."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    found, seen = [], set()
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or any('head' in part for part in name.split('.')):
            continue
        p = m.weight
        if p.requires_grad and id(p) not in embeddings and id(p) not in seen:
            found.append(p)
            seen.add(id(p))
    return found


def configure_optimizer(model, weight_decay, learning_rate, betas, device_type, ns_dtype=torch.float32):
    """AdamW with weight decay on >=2-D tensors only (matmul weights, embeddings), not on biases and norms.

    With model.config.optimizer == 'muon': Muon on hidden_matrices(model) at config.muon_lr (no weight decay),
    AdamW as above on the rest. Each group's 'lr_scale' is its peak learning rate over learning_rate, so
    train.py's schedule sets group['lr'] = lr(it) · lr_scale and decays both alike. ns_dtype: the precision of
    Muon's Newton–Schulz matmuls (train.py passes bfloat16 when it trains in bfloat16)."""
    config = model.config
    params = [p for p in model.parameters() if p.requires_grad]
    assert config.optimizer in ('adamw', 'muon'), f"unknown optimizer {config.optimizer!r}: 'adamw' or 'muon'"
    muon = hidden_matrices(model) if config.optimizer == 'muon' else []
    muon_ids = {id(p) for p in muon}
    decay = [p for p in params if p.dim() >= 2 and id(p) not in muon_ids]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    if config.optimizer == 'adamw':
        fused = device_type == 'cuda'  # the fused kernel is a single launch per step on GPUs
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)
    groups.append({'params': muon, 'muon': True, 'weight_decay': 0.0, 'lr': config.muon_lr,
                   'lr_scale': config.muon_lr / learning_rate})
    return Muon(groups, lr=learning_rate, betas=betas, momentum=config.muon_momentum, ns_dtype=ns_dtype)


MODEL_FAMILIES = {'gpt': GPT, 'maskgit': MaskGIT, '4m': FourM, 'lstm': LSTM, 'kgram_mlp': KGramMLP}


def build_model(config):
    if config.model_type not in MODEL_FAMILIES:
        raise ValueError(f"unknown model_type {config.model_type!r}; choose one of {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[config.model_type](config)
