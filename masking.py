"""
The randomness and masking behind the batches of data.py: every random number of a batch keyed by (batch key,
global sample index), Gamma/Dirichlet draws, budget splits, MaskGIT mask ratios, and T5-style span masking, both
as the batched torch ops the batch makers use and as the scalar reference functions they are tested against.
"""
import functools
import math

import numpy as np
import torch

# -----------------------------------------------------------------------------
# keyed randomness: every random number of a batch is a hash of (batch key, global sample index, stream, counter).
# A rank then draws only its own slice of the global batch (sample i of the global batch gets the same numbers
# whichever rank builds it, and however many there are), so 8 ranks x b see exactly what 1 rank x 8b sees without
# any rank drawing the other ranks' samples; and the batch depends on nothing but its key, so a prefetching thread
# and an exact resume need no generator state.

MASK32 = 0xFFFFFFFF


def hash32(x):
    """A 32-bit integer mixing hash (a bijection with good avalanche: xor-shift, multiply, twice), on Python ints or
    on int64 tensors holding values < 2^32. Its multiplier is < 2^27, so every product stays < 2^59: int64 never
    overflows."""
    x = ((x ^ (x >> 16)) * 0x45d9f3b) & MASK32
    x = ((x ^ (x >> 16)) * 0x45d9f3b) & MASK32
    return x ^ (x >> 16)


def batch_key(generator_or_key):
    """A batch's 62-bit key: a plain int is the key itself; a torch.Generator gives one draw (the same on every rank
    that seeds it alike)."""
    if isinstance(generator_or_key, torch.Generator):
        return int(torch.randint(2 ** 62, (1,), generator=generator_or_key))
    return int(generator_or_key) & (2 ** 62 - 1)


def make_key(seed, *counters):
    """A 62-bit batch key from small ints, e.g. make_key(seed, iteration, micro_step): no state to save."""
    h = hash32(seed & MASK32) ^ hash32(seed >> 32)
    for c in counters:
        h = hash32(h ^ hash32(int(c) + 0x9e3779b9))
    return (hash32(h ^ 0x85ebca6b) << 30 | hash32(h) >> 2) & (2 ** 62 - 1)


def sample_seeds(key, index):
    """(B,) global sample indices -> (B,) 32-bit per-sample seeds of the batch `key`."""
    k = hash32(hash32(key & 0x7FFFFFFF) ^ (key >> 31))
    return hash32(torch.as_tensor(index, dtype=torch.long) ^ k)


@functools.lru_cache(maxsize=256)
def _counters(stream, n):
    return hash32(torch.arange(n, dtype=torch.long) ^ hash32(stream * 0x9e3779b9))


def keyed_bits(seeds, stream, n):
    """(B,) seeds -> (B, n) int64 random 32-bit values, one per (sample, stream, counter)."""
    return hash32(seeds[:, None] ^ _counters(stream, n))


def keyed_uniform(seeds, stream, n):
    """(B,) seeds -> (B, n) float64 uniforms in [0, 1), one per (sample, stream, counter); 32 bits each."""
    return keyed_bits(seeds, stream, n).double() * 2.0 ** -32


def keyed_sort_keys(seeds, stream, n):
    """(B, n) int32 random sort keys: 31 of the 32 bits (sorting int32 rows is several times faster than float64)."""
    return (keyed_bits(seeds, stream, n) >> 1).int()


def box_muller(u1, u2):
    """Two equal-shape uniforms in [0, 1) -> twice as many standard normals, concatenated on the last dim."""
    r = torch.sqrt(-2.0 * torch.log1p(-u1))
    return torch.cat([r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)], dim=-1)


GAMMA_CANDIDATES = 6  # Marsaglia-Tsang proposals per draw


def log_gamma(alpha, u):
    """log of Gamma(alpha) draws, alpha (B, M) > 0, from u (B, M, 2 * GAMMA_CANDIDATES + 1) uniforms. As
    Gamma(alpha + 1) * U^(1/alpha) in log space, so a tiny alpha gives a hugely negative log (one modality then
    takes nearly everything, as it should) where a plain gamma draw underflows to 0. Gamma(alpha + 1), shape >= 1,
    by Marsaglia-Tsang with a fixed number of proposals: the first accepted one is used; each is rejected with
    probability < 5%, so all 6 are with probability < 2e-8, and such a draw falls back to d = the mode."""
    K = GAMMA_CANDIDATES
    d = alpha + (1.0 - 1.0 / 3.0)  # (B, M) for shape alpha + 1
    c = 1.0 / torch.sqrt(9.0 * d)
    z = box_muller(u[..., :K // 2], u[..., K // 2:K])  # (B, M, K) proposals (last: reductions over K are fast)
    v = (1.0 + c[..., None] * z) ** 3
    log_v = torch.log(v.clamp_min(1e-300))
    accept = (v > 0) & (torch.log1p(-u[..., K:2 * K]) < 0.5 * z * z + d[..., None] * (1.0 - v + log_v))
    first = accept.int().argmax(-1, keepdim=True)  # (B, M, 1) the first accepted proposal (0 if none)
    log_v = torch.where(accept.any(-1), log_v.gather(-1, first)[..., 0], 0.0)
    return torch.log(d) + log_v + torch.log1p(-u[..., 2 * K]) / alpha


def dirichlet_weights(alpha, u):
    """(B, M) Dirichlet(alpha) draws (alpha 0: weight 0), from u as in log_gamma; rows with no alpha > 0 are 0."""
    on = alpha > 0
    log_g = torch.where(on, log_gamma(alpha.clamp_min(1e-30), u), -math.inf)
    top = log_g.max(1, keepdim=True).values
    w = torch.where(on, torch.exp(log_g - torch.where(torch.isinf(top), 0.0, top)), 0.0)
    return w / w.sum(1, keepdim=True).clamp_min(1e-300)


def waterfill(budget, weights, available):
    """Real-valued proportional split: x = min(available, t * weights) with t chosen so that x sums to budget,
    which must be <= the available total of the weighted modalities (those with weight 0 get 0). The modalities
    that fill up are those with the smallest available / weight; the first j of them (in that order) are full
    iff t_j, the t that places the rest in proportion, exceeds the j-th one's available / weight."""
    ratio = torch.where(weights > 0, available / weights.clamp_min(1e-300), math.inf)  # (B, M) t at which each fills
    ratio, order = ratio.sort(1)
    a, w = available.gather(1, order), weights.gather(1, order)
    full = a.cumsum(1) - a  # available of the ones before j
    rest = w.flip(1).cumsum(1).flip(1)  # weight of j and after
    t = (budget[:, None] - full) / rest.clamp_min(1e-300)  # (B, M)
    j = (t > ratio).sum(1, keepdim=True).clamp_max(weights.size(1) - 1)
    t = t.gather(1, j)
    return torch.where(weights > 0, torch.minimum(available, t * weights), 0.0)


def split_budget(budget, weights, available, jitter):
    """Split budget (B,) tokens across modalities in proportion to weights (B, M), at most available (B, M)
    each: what a full modality cannot take goes to the others, still in proportion to their weights; weight-0
    modalities take tokens only when every weighted one is full (then evenly); a modality with nothing available
    takes nothing. Exactly, in real numbers (waterfill), then rounded by largest remainder: the leftover tokens go
    to the modalities with the largest fractional shares (ties broken by `jitter` (B, M) uniforms), which keeps
    every count within one token of its exact share. -> (B, M) int64 counts summing to min(budget, available)."""
    available = available.double()
    budget = torch.minimum(budget.double(), available.sum(1))
    weighted = torch.where(weights > 0, available, 0.0)
    x = waterfill(torch.minimum(budget, weighted.sum(1)), weights, weighted)
    spill = budget - x.sum(1)  # > 0 only when every weighted modality is full: spread evenly over the others
    if bool((spill > 1e-9).any()):  # (rare: a Dirichlet weight underflows to 0 only for alphas far below 0.1)
        x = x + waterfill(spill.clamp_min(0), ((weights <= 0) & (available > 0)).double(), available - weighted)
    counts = torch.minimum(x.floor(), available)  # (a share a hair under a whole number gets it back below)
    left = (budget - counts.sum(1)).round().long()  # < M tokens
    frac = torch.where(counts < available, x - counts + 1e-7 * jitter, -1.0)
    rank = (frac[:, None, :] > frac[:, :, None]).sum(2)  # (B, M) how many modalities have a larger remainder
    return (counts + (rank < left[:, None])).long()


def masking_ratio(schedule, r):
    """Share of tokens to mask for a uniform draw r in [0, 1): the MaskGIT training schedules.
    'cosine' cos(pi/2 r) (MaskGIT: more heavily masked grids), 'linear' 1 - r. (Same curves as
    model.masking_schedule, which the decoder uses; kept here so data.py does not import the model.)"""
    if schedule == 'cosine':
        return torch.cos(0.5 * math.pi * r)
    if schedule == 'linear':
        return 1.0 - r
    raise ValueError(f"unknown mask_schedule {schedule!r}: choose cosine, linear or uniform")

# -----------------------------------------------------------------------------
# span masking (T5, 4M) and the batch helpers around it

def compact(values, keep, n):
    """values (B, T), keep (B, T) bool with at most n True per row -> (B, n + 1): the kept values in order, then
    -1; the last column is a dummy that takes the writes of the dropped values (callers slice it off)."""
    dest = torch.where(keep, keep.cumsum(1) - 1, n)
    out = torch.full((len(values), n + 1), -1, dtype=values.dtype)
    out.scatter_(1, dest, values)
    out[:, n] = -1
    return out


def random_composition(total, parts, rng):
    """total split into `parts` positive integers, uniformly among all such splits."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)


def span_mask(n, num_masked, rng, max_spans, mean_span=3):
    """(n,) bool: num_masked of n positions masked, in contiguous spans of mean length ~mean_span (at most
    max_spans spans; all masked positions form a single span when num_masked == n)."""
    mask = np.zeros(n, dtype=bool)
    if num_masked <= 0:
        return mask
    num_spans = int(np.clip(round(num_masked / mean_span), 1, min(num_masked, n - num_masked + 1, max_spans)))
    lengths = random_composition(num_masked, num_spans, rng)
    # the unmasked tokens as num_spans + 1 gaps; the inner gaps are >= 1 so spans never touch, the outer may be 0
    gaps = random_composition(n - num_masked + 2, num_spans + 1, rng)
    gaps[0] -= 1
    gaps[-1] -= 1
    pos = 0
    for gap, length in zip(gaps, lengths):
        pos += gap
        mask[pos:pos + length] = True
        pos += length
    return mask


def span_corrupt(seq, mask, first_sentinel, eos):
    """seq (list of ids), mask (bool per id) -> (input ids, target ids): the input is seq with every masked span
    replaced by the next sentinel, then <eos>; the target is each sentinel followed by its span, then <eos>."""
    inp, tgt, sentinel = [], [], first_sentinel - 1
    for i, tok in enumerate(seq):
        if mask[i]:
            if i == 0 or not mask[i - 1]:  # a span starts
                sentinel += 1
                inp.append(sentinel)
                tgt.append(sentinel)
            tgt.append(int(tok))
        else:
            inp.append(int(tok))
    return inp + [eos], tgt + [eos]


def span_reconstruct(inp, tgt, first_sentinel, eos):
    """The inverse of span_corrupt: input and target ids -> the original sequence (without <eos>)."""
    spans, current = {}, None
    for tok in tgt:
        if tok == eos:
            break
        if tok >= first_sentinel:
            current = spans.setdefault(tok, [])
        elif current is not None:
            current.append(tok)
    out = []
    for tok in inp:
        if tok == eos:
            break
        out += spans.get(tok, []) if tok >= first_sentinel else [tok]
    return out


LAST = 2 ** 31 - 1  # sorts after every int32 key


def ranks(keys):
    """(B, n) keys -> (B, n) the rank of each key in its row (0 = smallest)."""
    order = keys.argsort(1)
    return torch.empty_like(order).scatter_(1, order, torch.arange(keys.size(1)).expand_as(order))


def span_mask_batch(length, num_masked, keys, max_spans, mean_span=3):
    """span_mask for a batch: real lengths (B,), num_masked (B,), keys (B, 2N + 2) random int32 -> (B, N) bool. The same
    spans as span_mask: num_spans as there, the span lengths a uniform composition of num_masked (num_spans - 1
    distinct cuts among 1..num_masked-1), the gaps one of length - num_masked + 2 into num_spans + 1 parts (cuts
    c_1 < ... < c_s among 1..length-num_masked+1); the j-th masked token, in span t, then sits at j + c_(t+1) - 1.
    A uniform random subset of size s is the s positions with the smallest random keys."""
    B, N = keys.size(0), (keys.size(1) - 2) // 2
    k = num_masked
    s = torch.round(k.double() / mean_span).long().clamp_min(1)
    s = torch.minimum(s, torch.minimum(torch.minimum(k, length - k + 1), torch.as_tensor(max_spans))).clamp_min(1)
    s = torch.where(k > 0, s, 0)  # (B,)
    j = torch.arange(N)
    valid = (j >= 1) & (j < k[:, None])  # (B, N) length cuts: 1..k-1
    cut_len = valid & (ranks(torch.where(valid, keys[:, :N], LAST)) < (s - 1)[:, None])
    g = torch.arange(N + 2)
    valid = (g >= 1) & (g <= (length - k + 1)[:, None])  # (B, N + 2) gap cuts: 1..length-k+1
    cut_gap = valid & (ranks(torch.where(valid, keys[:, N:], LAST)) < s[:, None])
    nth = torch.where(cut_gap, cut_gap.cumsum(1) - 1, N + 2)  # which cut each one is
    c = torch.zeros(B, N + 3, dtype=torch.long).scatter_(1, nth, g.expand(B, -1))  # (B, N + 3) the gap cuts in order
    span = cut_len.long().cumsum(1)  # (B, N) span of the j-th masked token
    pos = j + c.gather(1, span.clamp_max(N + 1)) - 1
    pos = torch.where(j < k[:, None], pos, N)  # N: a dummy column
    return torch.zeros(B, N + 1, dtype=torch.bool).scatter_(1, pos, True)[:, :N]


def span_corrupt_batch(seq, mask, length, first_sentinel, eos):
    """span_corrupt for a batch: seq (B, N) ids, mask (B, N) (False past each real length (B,)) -> input ids
    (B, N + 1), their lengths (B,), target ids (B, 2N + 1), their lengths (B,); past the lengths: eos."""
    B, N = seq.shape
    start = mask & ~torch.cat([torch.zeros(B, 1, dtype=torch.bool), mask[:, :-1]], dim=1)  # a span starts
    sentinel = first_sentinel + start.long().cumsum(1) - 1
    real = torch.arange(N) < length[:, None]
    emit = real & (~mask | start)  # the input keeps unmasked tokens, and one sentinel per span
    dest = torch.where(emit, emit.long().cumsum(1) - 1, N + 1)
    inp = torch.zeros((B, N + 2), dtype=seq.dtype) + eos
    inp = inp.scatter_(1, dest, torch.where(mask, sentinel, seq))[:, :N + 1]
    in_len = emit.sum(1) + 1  # with <eos>
    n_out = mask.long() + start.long()  # the target holds a span's sentinel, then its tokens
    at = n_out.cumsum(1) - n_out
    tgt = torch.zeros((B, 2 * N + 2), dtype=seq.dtype) + eos
    tgt.scatter_(1, torch.where(start, at, 2 * N + 1), sentinel)
    tgt.scatter_(1, torch.where(mask, at + start.long(), 2 * N + 1), seq)
    return inp, in_len, tgt[:, :2 * N + 1], n_out.sum(1) + 1
