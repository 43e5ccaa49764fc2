"""
Baselines for the causal stage (the classic course models): a stacked LSTM and an MLP over the last k tokens.
Same batches, same loss and same generation as the GPT, so train.py, sample.py and speedrun.py treat them like
any family (model_type='lstm' | 'kgram_mlp', registered in model.FAMILIES).
"""
import torch
import torch.nn as nn

from decoding import KVCache, generate_causal
from model import MLP, Norm, init_weights, next_token_outputs


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
