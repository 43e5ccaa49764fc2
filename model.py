"""
nano4M model definitions, in one file: shared Transformer building blocks, then the model families
behind `ModelConfig.model_type`:
  'gpt'  causal decoder over a token sequence (text, or image tokens in raster order)
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
    model_type: str = 'gpt'     # 'gpt'
    block_size: int = 1024      # longest sequence the positions cover
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # bias in Linears and LayerNorms; False is a bit better and faster

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
# helpers shared by every family

def sample_logits(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (..., V) -> sampled ids (..., 1). temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
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
    probs = logits.softmax(dim=-1)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat, 1, generator=generator).view(*probs.shape[:-1], 1)


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


MODEL_FAMILIES = {'gpt': GPT}


def build_model(config):
    if config.model_type not in MODEL_FAMILIES:
        raise ValueError(f"unknown model_type {config.model_type!r}; choose one of {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[config.model_type](config)
