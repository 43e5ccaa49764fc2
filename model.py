"""
nano4M model definitions, in one file: shared Transformer building blocks, then the model families
behind `ModelConfig.model_type`:
  'gpt'      causal decoder over a token sequence (text, or image tokens in raster order after a class token)
  'maskgit'  bidirectional Transformer over an image's token grid: predicts masked tokens; decoded iteratively
This file imports nothing of ours (pure torch), so it can be read on its own.
"""
import math
from dataclasses import dataclass, asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# config

@dataclass
class ModelConfig:
    model_type: str = 'gpt'     # 'gpt' | 'maskgit'
    block_size: int = 1024      # longest sequence the positions cover
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # bias in Linears and LayerNorms; False is a bit better and faster
    # maskgit (0 = taken from the dataset's meta.json through data.model_args)
    codebook_size: int = 0      # image token ids are 0..codebook_size-1; the mask token is id codebook_size
    grid_h: int = 0             # the token grid, h x w; positions are 2-D
    grid_w: int = 0
    cond_vocab_size: int = 0    # conditioning ids, e.g. class labels; id cond_vocab_size means 'no condition'
    cond_len: int = 0           # conditioning tokens in front of the grid (1 for a class label, 0: none)
    image_pos: str = 'learned'  # 'learned' | 'sincos' (fixed 2-D sin-cos)
    mask_schedule: str = 'cosine'  # training mask ratio: 'cosine' | 'linear' | 'uniform' (count in [1, L])
    cond_drop: float = 0.1      # training: the condition becomes 'no condition' with this probability (for CFG)
    label_smoothing: float = 0.0

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
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1 and we keep it explicit)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Inference state for one forward stream: per layer, the keys and values seen so far.

    Kept outside the modules so the model maths stays stateless; generation creates one, passes it
    down, and throws it away. Buffers are preallocated to `max_len` so appending is a copy, not a cat."""

    def __init__(self, n_layer, batch_size, n_head, head_dim, max_len, device, dtype):
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0  # tokens already cached (the same for every layer once a forward finishes)

    def append(self, layer, k, v):
        """Store k, v (B, nh, T, hs) after what is cached for `layer`; return all cached keys and values."""
        start, end = self.length, self.length + k.size(2)
        assert end <= self.max_len, "KV cache overflow: the caller must re-prefill a shorter window"
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention (flash / memory-efficient kernels).

    Self-attention uses one fused QKV projection; cross-attention (context given) projects queries from x
    and keys/values from the context. Masking is either causal or an explicit boolean mask
    (True = may attend), which is what the bidirectional and encoder-decoder families need."""

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
        self.out_proj.residual = True  # scaled init, see GPT._init_weights
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, t):  # (B, T, C) -> (B, nh, T, hs)
        B, T, C = t.shape
        return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x, context=None, causal=False, mask=None, kv_cache=None, layer=0):
        B, T, C = x.shape
        if self.cross:
            q = self.q_proj(x)
            k, v = self.kv_proj(context).split(C, dim=2)
        else:
            q, k, v = self.qkv_proj(x).split(C, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.append(layer, k, v)  # (B, nh, past + T, hs)
            if causal and T > 1:
                # new queries sit at positions past..past+T-1 and see every cached key up to their own
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            causal = False  # a single new query may see the whole cache
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.resid_dropout(self.out_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.proj.residual = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: self-attention, optional cross-attention, MLP, each residual."""

    def __init__(self, config, cross=False):
        super().__init__()
        self.norm1 = LayerNorm(config.n_embd, config.bias)
        self.attn = Attention(config)
        if cross:
            self.norm_cross = LayerNorm(config.n_embd, config.bias)
            self.cross_attn = Attention(config, cross=True)
        self.norm2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, causal=False, mask=None, context=None, context_mask=None, kv_cache=None, layer=0):
        x = x + self.attn(self.norm1(x), causal=causal, mask=mask, kv_cache=kv_cache, layer=layer)
        if context is not None:
            x = x + self.cross_attn(self.norm_cross(x), context=context, mask=context_mask)
        x = x + self.mlp(self.norm2(x))
        return x


def init_weights(module, n_layer):
    """GPT-2 init: normal(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layer) if getattr(m, 'residual', False) else 0.02
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
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = LayerNorm(config.n_embd, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tok_emb.weight = self.lm_head.weight  # weight tying
        init_weights(self, config.n_layer)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) token ids; targets (B, T) or None. Returns (logits, loss, metrics).

        Without targets only the last position's logits are computed (all that sampling needs)."""
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, causal=True, kv_cache=kv_cache, layer=i)
        if kv_cache is not None:
            kv_cache.length += T
        x = self.norm_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None, {}  # (B, 1, V)
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss, {}

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to fine-tune a checkpoint at a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.pos_emb.weight = nn.Parameter(self.pos_emb.weight[:block_size])

    def new_kv_cache(self, batch_size, max_len=None):
        c, p = self.config, next(self.parameters())
        return KVCache(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, max_len or c.block_size,
                       p.device, p.dtype)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                 kv_cache=True, generator=None):
        """Continue idx (B, T) by max_new_tokens tokens. With kv_cache=False every step re-runs the whole
        (cropped) context: the slow, obviously correct reference the cached path is tested against.

        Past block_size: the uncached path conditions on the last block_size tokens at every step. Learned
        absolute positions cannot slide inside a cache, so the cached path, when its cache is full,
        re-prefills the last block_size // 2 tokens and goes on; that costs one prefill per block_size // 2
        new tokens and keeps every cached key at the position it was computed for."""
        block_size = self.config.block_size
        cache = self.new_kv_cache(idx.size(0)) if kv_cache else None
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        next_input = None
        for _ in range(max_new_tokens):
            if cache is None:
                logits, _, _ = self(idx[:, -block_size:])
            else:
                if next_input is None or cache.length + 1 > block_size:
                    cache.length = 0  # (re-)prefill
                    next_input = idx[:, -(block_size // 2 if next_input is not None else block_size):]
                logits, _, _ = self(next_input, kv_cache=cache)
            idx_next = sample_logits(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            if stop_token is not None:
                idx_next = torch.where(done[:, None], torch.full_like(idx_next, stop_token), idx_next)
                done |= idx_next[:, 0] == stop_token
            idx = torch.cat((idx, idx_next), dim=1)
            next_input = idx_next
            if stop_token is not None and done.all():
                break
        return idx

# -----------------------------------------------------------------------------
# MaskGIT: bidirectional Transformer over a token grid

def sincos_2d(grid_h, grid_w, dim):
    """Fixed 2-D sin-cos positions (grid_h * grid_w, dim): half the channels encode the row, half the column,
    each as sin/cos pairs at geometrically spaced frequencies (as in ViT-MAE and 4M)."""
    assert dim % 4 == 0, "sincos positions need n_embd divisible by 4"
    freqs = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))

    def encode(pos):  # (N,) -> (N, dim // 2)
        angles = pos[:, None].float() * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # raster order
    cols = torch.arange(grid_w).repeat(grid_h)
    return torch.cat([encode(rows), encode(cols)], dim=1)


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
        if config.image_pos == 'learned':
            self.pos_emb = nn.Embedding(self.num_tokens, config.n_embd)
        elif config.image_pos == 'sincos':
            self.register_buffer('pos_sincos', sincos_2d(config.grid_h, config.grid_w, config.n_embd), persistent=False)
        else:
            raise ValueError(f"unknown image_pos {config.image_pos!r}: choose 'learned' or 'sincos'")
        if config.cond_len > 0:
            self.cond_emb = nn.Embedding(config.cond_vocab_size + 1, config.n_embd)  # + 'no condition'
            self.cond_pos = nn.Embedding(config.cond_len, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = LayerNorm(config.n_embd, config.bias)
        self.head = nn.Linear(config.n_embd, config.codebook_size, bias=False)
        init_weights(self, config.n_layer)

    def forward(self, tokens, mask, cond=None, compute_loss=True):
        """tokens (B, L) image token ids (what sits at masked positions is ignored), mask (B, L) bool, True =
        hidden from the model and predicted; cond (B, cond_len) ids or None. Returns (logits (B, L, K), loss
        over masked positions only, metrics)."""
        B, L = tokens.shape
        c = self.config
        ids = torch.where(mask, torch.full_like(tokens, self.mask_id), tokens)  # the model never sees masked truth
        pos = self.pos_emb.weight if c.image_pos == 'learned' else self.pos_sincos
        x = self.tok_emb(ids) + pos[:L]  # (B, L, C)
        if c.cond_len > 0:
            if cond is None:  # unconditional: every conditioning slot holds 'no condition'
                cond = torch.full((B, c.cond_len), c.cond_vocab_size, dtype=torch.long, device=tokens.device)
            prefix = self.cond_emb(cond) + self.cond_pos.weight  # (B, cond_len, C)
            x = torch.cat([prefix, x], dim=1)  # (B, cond_len + L, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, causal=False)
        logits = self.head(self.norm_f(x[:, c.cond_len:]))  # (B, L, K): grid positions only
        if not compute_loss:
            return logits, None, {}
        # loss on masked positions only: visible tokens are copied from the input, predicting them is free
        masked_logits, masked_targets = logits[mask], tokens[mask]  # (M, K), (M,)
        loss = F.cross_entropy(masked_logits.float(), masked_targets, label_smoothing=c.label_smoothing)
        accuracy = (masked_logits.argmax(-1) == masked_targets).float().mean()
        return logits, loss, {'masked_acc': accuracy.detach()}

# -----------------------------------------------------------------------------
# helpers shared by every family

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


def sample_logits_gumbel(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Same distribution as sample_logits, drawn as argmax(filtered logits + Gumbel noise) (the Gumbel-max
    trick): one elementwise pass instead of torch.multinomial, which is slow on CPU for many rows at once
    (every grid position of every image in a MaskGIT step). Returns ids (...,), without the trailing 1."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits, temperature, top_k, top_p)
    return (logits + gumbel_noise(logits.shape, generator, logits.device)).argmax(dim=-1)


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
        sampled = sample_logits_gumbel(logits, temperature, top_k, top_p, generator)  # (B, L)
        gumbel = gumbel_noise(sampled.shape, generator, sampled.device)  # (B, L) for the choice of positions
        if scheme == 'maskgit':
            log_p = logits.log_softmax(dim=-1).gather(-1, sampled[..., None])[..., 0]
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
    scores and their weighted sum (PaLM appendix B), forward and backward."""
    c = model.config
    return 6 * num_params(model) + 12 * c.n_layer * c.n_embd * seq_len


def configure_optimizer(model, weight_decay, learning_rate, betas, device_type):
    """AdamW with weight decay on >=2-D tensors only (matmul weights, embeddings), not on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    fused = device_type == 'cuda'  # the fused kernel is a single launch per step on GPUs
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


MODEL_FAMILIES = {'gpt': GPT, 'maskgit': MaskGIT}


def build_model(config):
    if config.model_type not in MODEL_FAMILIES:
        raise ValueError(f"unknown model_type {config.model_type!r}; choose one of {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[config.model_type](config)
