"""
Inference for every family: the KV cache (inference state, kept out of the modules so the model maths stays
stateless), sampling filters (temperature, top-k, top-p), classifier-free guidance, the MaskGIT / ROAR masking
schedules, iterative (parallel) decoding and autoregressive decoding with a KV cache.

model.py's families and sample.py share these; this file imports nothing of ours (pure torch), and takes the
model it drives as an argument (anything with forward(idx, kv_cache=...) and new_kv_cache(batch_size)).
"""
import math

import torch


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


@torch.no_grad()
def generate_causal(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                    kv_cache=True, generator=None, prefix=None):
    """Continue idx (B, T) by max_new_tokens tokens with any causal family (gpt, lstm, kgram_mlp): each has
    forward(idx, kv_cache=...) and new_kv_cache(batch_size). With kv_cache=False every step re-runs the whole
    (cropped) context: the slow, obviously correct reference the cached path is tested against. prefix (B, P, C):
    embeddings in front of the tokens at every (pre)fill (a VLM's image; the model takes forward(..., prefix=)).

    Past block_size: the uncached path conditions on the last block_size tokens at every step. Learned
    absolute positions cannot slide inside a cache, so the cached path, when its cache is full,
    re-prefills the last block_size // 2 tokens and goes on; that costs one prefill per block_size // 2
    new tokens and keeps every cached key at the position it was computed for."""
    block_size = model.config.block_size - (prefix.size(1) if prefix is not None else 0)  # room for tokens
    extra = {} if prefix is None else {'prefix': prefix}
    cache = model.new_kv_cache(idx.size(0)) if kv_cache else None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    next_input = None
    for _ in range(max_new_tokens):
        if cache is None:
            logits, _, _ = model(idx[:, -block_size:], **extra)
        else:
            if next_input is None or cache.length + 1 > model.config.block_size:
                cache.reset()  # (re-)prefill
                next_input = idx[:, -(block_size // 2 if next_input is not None else block_size):]
                logits, _, _ = model(next_input, kv_cache=cache, **extra)
            else:
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
    """Classifier-free guidance on logits (or a flow's velocities): uncond + scale * (cond - uncond), written as
    cond + (scale - 1) * (cond - uncond) so that scale 1 returns the conditional prediction bit for bit (no
    guidance), scale 0 the unconditional one, and scale > 1 pushes away from the unconditional prediction."""
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


def generate_image_tokens(model, cond, view, steps=8, scheme='maskgit', schedule='cosine', temperature=1.0,
                          top_k=None, top_p=None, choice_temperature=4.5, cfg_scale=1.0, generator=None,
                          return_history=False, kv_cache=True):
    """Conditions -> image token grids (B, L) from either family (and, for maskgit with return_history, the
    (tokens, mask) after each step). cond is (B,) class labels or (B, cond_len) condition ids (e.g. caption
    tokens); view is data.image_view of the dataset's meta.json (codebook_size, cond_vocab_size, grid).
    gpt: autoregressive after the condition tokens, ids codebook_size + cond; the unconditional stream for guidance starts from 'no condition' tokens.
    maskgit: iterative decoding from a fully masked grid, the condition as prefix ('no condition' when dropped)."""
    K, null_id = view['codebook_size'], view['cond_vocab_size']
    gh, gw = view['grid']
    cond = cond[:, None] if cond.dim() == 1 else cond
    B, device = cond.size(0), cond.device
    null = torch.full_like(cond, null_id)
    if model.config.model_type == 'gpt':
        tokens = autoregressive_decode(model, K + cond, gh * gw, vocab_limit=K, temperature=temperature, top_k=top_k,
                                       top_p=top_p, cfg_scale=cfg_scale, uncond_prefix=K + null, generator=generator,
                                       kv_cache=kv_cache)
        return (tokens, []) if return_history else tokens

    def predict_logits(tokens, mask, cond_dropped):
        return model(tokens, mask, null if cond_dropped else cond, compute_loss=False)[0]
    tokens = torch.zeros(B, gh * gw, dtype=torch.long, device=device)
    mask = torch.ones(B, gh * gw, dtype=torch.bool, device=device)
    out = iterative_decode(predict_logits, tokens, mask, steps, scheme, schedule, temperature, top_k, top_p,
                           choice_temperature, cfg_scale, generator, return_history)
    return (out[0], out[2]) if return_history else out[0]

# -----------------------------------------------------------------------------
# flow matching (the flow family): integrate the learned velocity from noise (t = 1) to data (t = 0)

def flow_sample(velocity_fn, noise, steps=16, method='euler', cfg_scale=1.0, return_history=False):
    """Rectified flow sampling: x_t = (1 − t)·x + t·ε moves along dx/dt = v = ε − x, so starting from noise
    (B, ...) at t = 1 and stepping to t = 0 on a uniform grid gives a sample x.
      'euler'  x ← x + (t_next − t)·v(x, t): one velocity per step (a straight-line flow needs few)
      'heun'   Euler's guess, then the average of the velocity at both ends (2nd order, two per step), except
               the last step to t = 0, which stays Euler as in EDM (Karras et al. 2022): logit-normal training
               almost never sees t near 0, so the velocity there is the least reliable one to average in
    velocity_fn(x, t (B,), cond_dropped) -> v like x; with cfg_scale != 1 it is also called with
    cond_dropped=True and the two are mixed by cfg_logits (the same guidance on velocities). Returns x at t = 0 (and with return_history the
    list of x after every step, noise first)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: flow sampling needs an integer number of steps >= 1")
    if method not in ('euler', 'heun'):
        raise ValueError(f"unknown flow sampling method {method!r}: choose 'euler' or 'heun'")

    def velocity(x, t):
        tt = torch.full((x.size(0),), t, device=x.device, dtype=torch.float32)
        v = velocity_fn(x, tt, False)
        if cfg_scale != 1.0:
            v = cfg_logits(v, velocity_fn(x, tt, True), cfg_scale)
        return v.float()

    x = noise.float()
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    history = [x.clone()] if return_history else None
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = velocity(x, t)
        guess = x + (t_next - t) * v
        x = guess if method == 'euler' or t_next == 0.0 else x + (t_next - t) * 0.5 * (v + velocity(guess, t_next))
        if return_history:
            history.append(x.clone())
    return (x, history) if return_history else x
