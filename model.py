"""
nano4M model definitions, in one file: shared Transformer building blocks, then the model families
behind `ModelConfig.model_type`:
  'gpt'  causal decoder over a token sequence (text, or image tokens in raster order)
  '4m'   encoder-decoder over sets of tokens from several modalities: the encoder reads any visible subset,
         the decoder's queries (modality + position) predict any other subset (any-to-any, chained generation)
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
    model_type: str = 'gpt'     # 'gpt' | '4m'
    block_size: int = 1024      # longest sequence the positions cover
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # bias in Linears and LayerNorms; False is a bit better and faster
    # 4m: n_layer is the encoder's depth
    n_layer_dec: int = 0        # decoder depth; 0 means the same as the encoder
    modalities: tuple = ()      # set by the data: one dict per modality, in id order:
                                # {'name', 'kind': 'image'|'sequence', 'vocab_size', 'num_tokens', 'grid': [h, w]}
    dec_attn: str = 'modality'  # decoder self-attention: 'modality' (a target sees targets of its own modality,
                                # as in 4M) or 'all' (every target of the sample)

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
# 4M: encoder-decoder over multimodal token sets

def sincos_1d(num_positions, dim):
    """Fixed sin-cos embeddings (num_positions, dim) of positions 0..num_positions-1 (Transformer paper)."""
    pos = torch.arange(num_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)


def sincos_2d(h, w, dim):
    """Fixed 2-D sin-cos embeddings (h*w, dim) in raster order: half the channels encode the row, half the column,
    so neighbours in either direction get similar vectors (a 1-D raster index would not place row ends well)."""
    assert dim % 4 == 0, "2-D sin-cos positions need n_embd divisible by 4"
    rows = sincos_1d(h, dim // 2)[:, None, :].expand(h, w, dim // 2)
    cols = sincos_1d(w, dim // 2)[None, :, :].expand(h, w, dim // 2)
    return torch.cat([rows, cols], dim=2).reshape(h * w, dim)


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
        max_tokens = max(m['num_tokens'] for m in mods)
        pos = torch.zeros(len(mods), max_tokens, C)  # (M, P, C)
        for i, m in enumerate(mods):
            h, w = m['grid']
            pos[i, :h * w] = sincos_2d(h, w, C) if m['kind'] == 'image' else sincos_1d(h * w, C)
        self.register_buffer('pos_table', pos, persistent=False)

        self.tok_emb = nn.Embedding(self.vocab_size, C)
        self.enc_mod_emb = nn.Embedding(len(mods), C)
        self.dec_mod_emb = nn.Embedding(len(mods), C)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.enc_norm = LayerNorm(C, config.bias)
        self.context_proj = nn.Linear(C, C, bias=config.bias)  # encoder output -> the decoder's context space
        self.context_norm = LayerNorm(C, config.bias)
        n_dec = config.n_layer_dec or config.n_layer
        self.decoder = nn.ModuleList([Block(config, cross=True) for _ in range(n_dec)])
        self.dec_norm = LayerNorm(C, config.bias)
        self.head = nn.Linear(C, self.vocab_size, bias=False)
        init_weights(self, config.n_layer + n_dec)
        nn.init.zeros_(self.head.weight)  # start from uniform predictions per modality (as 4M does)
        # sin-cos positions have RMS 1/sqrt(2): embeddings at GPT's 0.02 would be drowned 35:1 by them, and the
        # model would sit on the per-position prior for a long time. Start token and modality embeddings at the
        # positions' scale, as a patch projection would be in a ViT.
        for emb in (self.tok_emb, self.enc_mod_emb, self.dec_mod_emb):
            nn.init.normal_(emb.weight, std=1 / math.sqrt(2))

    def encode(self, enc_tokens, enc_pos, enc_mod, enc_pad):
        """Visible tokens (B, N_in) -> context for the decoder (B, N_in, C)."""
        x = self.tok_emb(enc_tokens + self.vocab_offset[enc_mod]) + self.enc_mod_emb(enc_mod) \
            + self.pos_table[enc_mod, enc_pos]  # (B, N_in, C)
        x = self.drop(x)
        mask = self_attention_mask(~enc_pad)  # (B, 1, N_in, N_in)
        for block in self.encoder:
            x = block(x, mask=mask)
        # the decoder sees the encoder output again with positions and modalities, in its own space; normalised,
        # since cross-attention projects keys from it directly: a small context (the projection starts at ~0.16
        # RMS) gives near-uniform attention whose gradient is too weak to sharpen, and the decoder then ignores
        # its inputs and predicts the per-position prior
        context = self.context_proj(self.enc_norm(x)) + self.pos_table[enc_mod, enc_pos] + self.dec_mod_emb(enc_mod)
        return self.context_norm(context)

    def decode(self, context, enc_pad, dec_pos, dec_mod, dec_pad):
        """Target queries (B, N_tgt) cross-attending to the context -> logits (B, N_tgt, V), -inf outside each
        target's own vocabulary slice."""
        x = self.drop(self.dec_mod_emb(dec_mod) + self.pos_table[dec_mod, dec_pos])  # (B, N_tgt, C)
        keep = ~dec_pad[:, None, :]  # (B, 1, N_tgt): keys that may be attended
        if self.config.dec_attn == 'modality':
            keep = keep & (dec_mod[:, :, None] == dec_mod[:, None, :])  # (B, N_tgt, N_tgt)
        self_mask = self_attention_mask(keep)
        cross_mask = cross_attention_mask(~enc_pad, dec_pos.size(1))  # (B, 1, N_tgt, N_in)
        for block in self.decoder:
            x = block(x, mask=self_mask, context=context, context_mask=cross_mask)
        logits = self.head(self.dec_norm(x))  # (B, N_tgt, V)
        return logits.masked_fill(~self.in_vocab[dec_mod], float('-inf'))

    def forward(self, enc_tokens, enc_pos, enc_mod, enc_pad, dec_pos, dec_mod, dec_pad, targets=None):
        """Tokens are ids within their modality's own vocabulary; positions index the modality's grid (raster
        order) or sequence; *_pad (bool) marks padding. targets (B, N_tgt) holds -1 on padding.
        Returns (logits (B, N_tgt, V) over the shared id space, loss, metrics): the loss is the mean over target
        tokens of each modality, then the mean over the modalities present in the batch; metrics hold the
        per-modality losses (NaN for a modality with no target tokens in this batch)."""
        context = self.encode(enc_tokens, enc_pos, enc_mod, enc_pad)
        logits = self.decode(context, enc_pad, dec_pos, dec_mod, dec_pad)
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
        toks, pos, mod = [], [], []
        for name, x in inputs.items():
            m = self.modality_id(name)
            toks.append(x)
            pos.append(torch.arange(x.size(1), device=device).expand(B, -1))
            mod.append(torch.full_like(x, m))
        if known_tokens is not None:
            toks.append(known_tokens)
            pos.append(known_pos)
            mod.append(torch.full_like(known_tokens, t))
        if toks:
            enc_tokens, enc_pos, enc_mod = torch.cat(toks, 1), torch.cat(pos, 1), torch.cat(mod, 1)
        else:  # nothing visible: one padding token (attended anyway, see cross_attention_mask)
            enc_tokens = enc_pos = enc_mod = torch.zeros(B, 1, dtype=torch.long, device=device)
        enc_pad = torch.zeros_like(enc_tokens, dtype=torch.bool) if toks else torch.ones_like(enc_tokens, dtype=torch.bool)
        dec_mod = torch.full_like(query_pos, t)
        logits, _, _ = self(enc_tokens, enc_pos, enc_mod, enc_pad, query_pos, dec_mod, torch.zeros_like(dec_mod, dtype=torch.bool))
        offset = int(self.vocab_offset[t])
        return logits[..., offset:offset + spec['vocab_size']]  # (B, Q, vocab of target)

    @torch.no_grad()
    def generate(self, inputs, target, scheme='maskgit', steps=8, temperature=1.0, top_k=None, top_p=None,
                 schedule=None, generator=None):
        """All tokens (B, L) of modality `target` given inputs {name: tokens (B, L_m)}, decoded iteratively:
        the target tokens decided so far join the encoder input, the still unknown ones are the decoder's
        queries. Schedule: cosine for maskgit, linear (constant per step) for roar, unless given."""
        t = self.modality_id(target)
        L = self.config.modalities[t]['num_tokens']
        B = next(iter(inputs.values())).size(0)
        device = self.pos_table.device
        positions = torch.arange(L, device=device).expand(B, -1)

        def predict_logits_fn(tokens, mask, cond_dropped):
            # every row has as many unknown tokens as the others (one schedule), so the selections are (B, K), (B, Q)
            known_pos, query_pos = positions[~mask].view(B, -1), positions[mask].view(B, -1)
            logits = self.predict(inputs, target, query_pos, tokens[~mask].view(B, -1), known_pos).float()
            out = torch.zeros(B, L, logits.size(-1), device=device)
            return out.scatter(1, query_pos[..., None].expand_as(logits), logits)  # (B, L, V)

        tokens = torch.zeros(B, L, dtype=torch.long, device=device)
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
        schedule = schedule or ('cosine' if scheme == 'maskgit' else 'linear')
        tokens, _ = iterative_decode(predict_logits_fn, tokens, mask, steps=min(steps, L), scheme=scheme,
                                     schedule=schedule, temperature=temperature, top_k=top_k, top_p=top_p,
                                     generator=generator)
        return tokens


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
    n_attention = c.n_layer
    if c.model_type == '4m':  # encoder self-attention, decoder self- and cross-attention; seq_len = inputs + targets
        n_attention = c.n_layer + 2 * (c.n_layer_dec or c.n_layer)
    return 6 * num_params(model) + 12 * n_attention * c.n_embd * seq_len


def configure_optimizer(model, weight_decay, learning_rate, betas, device_type):
    """AdamW with weight decay on >=2-D tensors only (matmul weights, embeddings), not on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    fused = device_type == 'cuda'  # the fused kernel is a single launch per step on GPUs
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


MODEL_FAMILIES = {'gpt': GPT, '4m': FourM}


def build_model(config):
    if config.model_type not in MODEL_FAMILIES:
        raise ValueError(f"unknown model_type {config.model_type!r}; choose one of {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[config.model_type](config)


# -----------------------------------------------------------------------------
# iterative decoding, shared by every family that predicts a set of tokens in parallel (MaskGIT, 4M)
# NOTE for the merge with branch issue4: a minimal version written for 4M with the same signatures as issue4's
# helpers (masking_schedule, reveal_counts, iterative_decode), so the merge keeps issue4's and drops these.

def masking_schedule(name, t):
    """Share of the unknown tokens still unknown at decoding progress t in [0, 1]. 'cosine' (MaskGIT): few tokens
    first, many at the end; 'linear': the same number every step (4M's ROAR uses this constant schedule)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if name == 'cosine':
        return torch.cos(0.5 * math.pi * t)
    if name in ('linear', 'uniform'):
        return 1.0 - t
    raise ValueError(f"unknown masking schedule {name!r}: choose cosine, linear or uniform")


def reveal_counts(num_masked, steps, schedule='cosine'):
    """num_masked (B,) -> (steps, B) tokens revealed per step: at least one per step while any remain, all by the
    last step."""
    num_masked = torch.as_tensor(num_masked, dtype=torch.long)
    remaining, counts = num_masked.clone(), []
    for s in range(steps):
        left = torch.floor(num_masked.double() * masking_schedule(schedule, (s + 1) / steps)).long()
        left = torch.minimum(left, (remaining - 1).clamp(min=0)) if s < steps - 1 else torch.zeros_like(left)
        counts.append(remaining - left)
        remaining = left
    return torch.stack(counts)


@torch.no_grad()
def iterative_decode(predict_logits_fn, tokens, mask, steps=8, scheme='maskgit', schedule='cosine',
                     temperature=1.0, top_k=None, top_p=None, choice_temperature=4.5, generator=None):
    """Fill the unknown positions (mask True) of tokens (B, L) in `steps` parallel steps.
    predict_logits_fn(tokens, mask, cond_dropped) -> logits (B, L, V) for every position (read where mask is True).
    Each step samples every unknown position and keeps the most confident, as many as reveal_counts says:
      'maskgit'  confidence = log p(sampled) + choice_temperature * (1 - (s + 1) / steps) * Gumbel noise
      'roar'     random order: the confidence is the Gumbel noise alone
    Returns (tokens, mask) with mask all False."""
    tokens, mask = tokens.clone(), mask.clone()
    counts = reveal_counts(mask.sum(dim=1).cpu(), steps, schedule).to(tokens.device)  # (steps, B)
    for s in range(steps):
        logits = predict_logits_fn(tokens, mask, False).float()
        sampled = sample_logits(logits, temperature, top_k, top_p, generator)[..., 0]  # (B, L)
        u = torch.rand(sampled.shape, generator=generator, device=sampled.device).clamp(1e-20, 1 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        if scheme == 'maskgit':
            log_p = logits.log_softmax(dim=-1).gather(-1, sampled[..., None])[..., 0]
            confidence = log_p + choice_temperature * (1.0 - (s + 1) / steps) * gumbel
        elif scheme == 'roar':
            confidence = gumbel
        else:
            raise ValueError(f"unknown decoding scheme {scheme!r}: choose 'maskgit' or 'roar'")
        confidence = confidence.masked_fill(~mask, float('-inf'))
        rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most confident
        reveal = (rank < counts[s][:, None]) & mask
        tokens = torch.where(reveal, sampled, tokens)
        mask = mask & ~reveal
    return tokens, mask
