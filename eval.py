"""
Scores class-conditional image generators on Fashion-MNIST with what we can compute ourselves, and times them.

    python eval.py --mode=classifier        # train the judge once: a small CNN on real train images (~1 min CPU)
    python eval.py --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu
    python eval.py --mode=speed --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu
    python eval.py --mode=speed --dataset=clevr --maskgit_dir=out-clevr-maskgit-cpu --gpt_dir=out-clevr-gpt-cpu
    python eval.py --mode=speed --dataset=clevr --speed_shape=6x8x256 --speed_batch=64   # the GPU configs' shape

FID needs Inception weights we cannot install offline, so the judge is our own classifier (>= 90% test
accuracy), saved as data/<dataset>/classifier.pt and loadable with torch.load(weights_only=True):
  fidelity   share of generated images the classifier puts in the class they were conditioned on
  FD         Frechet distance between Gaussians fitted to the classifier's penultimate features of generated
             images and of the 10,000 real test images. NOT Inception FID: same formula, a much smaller
             feature space, so the numbers only compare rows of this table with each other
  diversity  mean pairwise feature distance within a class, relative to real test images (1.0 = as diverse)
  images/s   generation throughput at the table's batch (all classes at once), tokens -> pixels excluded
Reference rows: real validation images (the floor FD can reach) and the test images' own tokens decoded by the
tokenizer (the 'tokenizer bound': what any generator over these tokens can reach at best).

    python eval.py --mode=4m --out_dir=out-nano4m-cpu   # one-pass rgb->semseg mIoU and rgb->depth abs-rel

4m: on the val scenes (>= 500), every rgb token is the input and one pass of the decoder predicts all semseg
(or depth) tokens; predictions are decoded to full resolution and scored against the rendered ground truth,
next to the per-position prior (the most common token of each cell in the train split: what a model that
ignores the input gets) and the token-grid bound (the val tokens themselves: the best the 8x8 tokens allow).

    python eval.py --mode=scorecard --out_dir=out-nano4m-cpu --num_scenes=200 \
        --specialists=out-spec-rgb-depth,out-spec-rgb-caption --random_dir=out-random1200

scorecard: on the first num_scenes val scenes, re-rendered by clevr.py for exact ground truth, the directions
rgb->depth (abs-rel, delta<1.25), rgb->normals (mean angular error), rgb->semseg (mIoU), rgb->caption (attribute
accuracy after matching objects, exact scene match), caption->rgb (objects a judge trained on ground-truth renders
finds with the right colour and shape where the scene has them), rgb->boxes (mean IoU after matching), each as
the 4M model, the tokenizer bound (ground-truth tokens decoded) and a specialist trained on that direction alone;
plus caption->rgb at each CFG scale and rgb->caption of a model with the other sequence masking. Printed and
written to out_dir/scorecard.md.
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import ConfigError, configure
from data import DataError, TokenDecoder, dataset_dir, decode_image_tokens, image_view, load_meta, load_tokens

# -----------------------------------------------------------------------------
mode = 'table'              # 'table' | 'speed' | 'classifier' (Fashion-MNIST) | '4m' (clevr, any-to-any)
dataset = 'fashion_mnist'
maskgit_dir = ''            # out_dir of a maskgit run ('' skips its rows)
gpt_dir = ''                # out_dir of a gpt run on the same data
ckpt = 'ckpt'
per_class = 50              # generated images per class for the table
maskgit_steps = (4, 8, 12, 16)
roar_steps = 8
temperature = 1.0
choice_temperature = 4.5
cfg_scale = 2.0             # the guided columns; 1.0 is the plain conditional model
classifier_epochs = 5
speed_batch = 256           # the 'large batch' of the speed table on the dataset's grid (same tokens on the other)
speed_grid = 16             # the second grid of the speed table (random weights, same model shape)
speed_shape = ''            # '' = the trained models' shapes; 'LxHxC' (e.g. 6x8x256) = random weights of that shape
speed_dtypes = 'float32,bfloat16'  # each scheme is timed in each (weights cast) and reported at its fastest
speed_threads = 2           # ...and with 1 up to this many torch threads
speed_reps = 7              # batch 1: the best of this many rounds over all settings (large batches: one round)
image_modality = 'rgb'      # a multimodal dataset (clevr): the image and the conditioning modality, as in training
cond_modality = 'caption'
out_dir = ''                # --mode=4m: the 4m run to score
num_scenes = 1000           # --mode=4m and scorecard: val scenes scored
specialists = ''            # --mode=scorecard: comma-separated out_dirs of specialist runs (their direction is read
                            # from each checkpoint's input_modalities / target_modalities)
random_dir = ''             # --mode=scorecard: a 4m run trained with the other seq_masking, for the rgb->caption row
scorecard_cfg = (1.0, 3.0)  # --mode=scorecard: CFG scales for caption->rgb
scorecard_steps = 8         # --mode=scorecard: MaskGIT steps for generated images (and sequences of 'random' models)
scorecard_temperature = 1.0 # --mode=scorecard: sampling temperature of caption->rgb
json_out = ''               # --mode=4m: also write the figures to this file
seed = 1337
device = 'cpu'
# -----------------------------------------------------------------------------


class Classifier(nn.Module):
    """Two conv layers + two linear layers: ~91% test accuracy on Fashion-MNIST after a few epochs on a CPU.
    features() is the 128-d penultimate layer used for the Frechet distance and diversity."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 128)
        self.out = nn.Linear(128, num_classes)

    def features(self, x):  # x (B, 1, 28, 28) in [0, 1]
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 16, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, 7, 7)
        return F.relu(self.fc(x.flatten(1)))  # (B, 128)

    def forward(self, x):
        return self.out(self.features(x))


def to_input(images):
    """uint8 (N, H, W) or (N, H, W, 1) -> float (N, 1, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    if x.dim() == 4:  # (N, H, W, 1) from the tokenizer's decoder
        x = x[..., 0]
    return x[:, None]  # (N, 1, H, W)


def classifier_path(dataset):
    return os.path.join(dataset_dir(dataset), 'classifier.pt')


def train_classifier(dataset, epochs=3, batch_size=128, seed=0):
    d = dataset_dir(dataset)
    x = to_input(np.load(os.path.join(d, 'train_images.npy')))
    y = torch.from_numpy(np.load(os.path.join(d, 'train_labels.npy')))
    torch.manual_seed(seed)
    model = Classifier(load_meta(dataset)['num_classes'])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in range(len(x) // batch_size):
            ix = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(x[ix]), y[ix])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, dataset, 'test')
        print(f"classifier epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {acc * 100:.2f}% ({time.time() - t0:.0f}s)")
    torch.save({'model': model.state_dict(), 'test_accuracy': acc}, classifier_path(dataset))
    return model.eval()


@torch.no_grad()
def predict(model, images, batch_size=1000):
    """uint8 images -> (predicted class (N,), features (N, 128))."""
    model.eval()
    preds, feats = [], []
    x = to_input(images)
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size])
        feats.append(f)
        preds.append(model.out(f).argmax(1))
    return torch.cat(preds), torch.cat(feats).double()


def accuracy(model, dataset, split):
    d = dataset_dir(dataset)
    pred, _ = predict(model, np.load(os.path.join(d, f'{split}_images.npy')))
    return (pred == torch.from_numpy(np.load(os.path.join(d, f'{split}_labels.npy')))).float().mean().item()


def load_classifier(dataset):
    path = classifier_path(dataset)
    if not os.path.exists(path):
        print(f"no classifier at {path}: training one")
        return train_classifier(dataset, classifier_epochs)
    state = torch.load(path, map_location='cpu', weights_only=True)
    model = Classifier(load_meta(dataset)['num_classes'])
    model.load_state_dict(state['model'])
    return model.eval()


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to features a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64 through symmetric eigensolves."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    sqrt_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(sqrt_a @ s_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b) ** 2).sum().item() + (s_a.trace() + s_b.trace() - 2 * cross).item()


def mean_pairwise_distance(feats, labels):
    """Mean over classes of the mean L2 distance between features of two different images of that class."""
    out = []
    for c in labels.unique():
        f = feats[labels == c]
        d = torch.cdist(f, f)
        n = len(f)
        out.append(d.sum() / (n * (n - 1)))
    return torch.stack(out).mean().item()


def score(clf, images, labels, real_feats, real_div):
    pred, feats = predict(clf, images)
    return {'fidelity': (pred == labels).float().mean().item(), 'fd': frechet_distance(feats, real_feats),
            'diversity': mean_pairwise_distance(feats, labels) / real_div}

# -----------------------------------------------------------------------------


def table():
    from sample import generate_image_tokens, load_model
    meta = load_meta(dataset)
    d = dataset_dir(dataset)
    clf = load_classifier(dataset)
    test_labels = torch.from_numpy(np.load(os.path.join(d, 'test_labels.npy')))
    _, real_feats = predict(clf, np.load(os.path.join(d, 'test_images.npy')))
    real_div = mean_pairwise_distance(real_feats, test_labels)
    print(f"classifier test accuracy {accuracy(clf, dataset, 'test') * 100:.2f}%; "
          f"{per_class} images per class per row; FD = Frechet distance in the classifier's 128-d feature space "
          f"against {len(test_labels):,} real test images (not Inception FID)")
    rows = []
    val_labels = torch.from_numpy(np.load(os.path.join(d, 'val_labels.npy')))
    rows.append(('real val images', '', score(clf, np.load(os.path.join(d, 'val_images.npy')), val_labels,
                                              real_feats, real_div), None))
    test_tokens = np.load(os.path.join(d, 'test_tokens.npy'))
    rows.append(('test tokens, decoded (tokenizer bound)', '',
                 score(clf, decode_image_tokens(dataset, test_tokens), test_labels, real_feats, real_div), None))
    labels = torch.arange(meta['num_classes']).repeat_interleave(per_class)
    runs = []
    if maskgit_dir:
        model, _ = load_model(maskgit_dir, ckpt, device)
        runs += [(f'MaskGIT T={t}', model, dict(steps=t, scheme='maskgit')) for t in maskgit_steps]
        runs += [(f'ROAR T={roar_steps}', model, dict(steps=roar_steps, scheme='roar'))]
    if gpt_dir:
        model, _ = load_model(gpt_dir, ckpt, device)
        runs += [('AR, KV cache', model, dict())]
    for name, model, kw in runs:
        for scale in (1.0, cfg_scale):
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            tokens = generate_image_tokens(model, labels.to(device), meta, temperature=temperature,
                                           choice_temperature=choice_temperature, cfg_scale=scale, generator=gen, **kw)
            dt = time.perf_counter() - t0
            s = score(clf, decode_image_tokens(dataset, tokens), labels, real_feats, real_div)
            rows.append((name, scale, s, len(labels) / dt))
            print(f"  {name:<40} cfg {scale:<4} fidelity {s['fidelity'] * 100:5.1f}%  FD {s['fd']:8.2f}  "
                  f"diversity {s['diversity']:.2f}  {len(labels) / dt:8.1f} images/s", flush=True)
    print()
    print("| scheme | CFG scale | fidelity | FD (classifier features) | diversity | images/s |")
    print("|---|---|---|---|---|---|")
    for name, scale, s, ips in rows:
        print(f"| {name} | {scale} | {s['fidelity'] * 100:.1f}% | {s['fd']:.2f} | {s['diversity']:.2f} | "
              f"{'' if ips is None else f'{ips:.1f}'} |")


def speed_models(meta, grid):
    """{'maskgit': model, 'gpt': model} for a grid (h, w): the trained models on the dataset's own grid, otherwise
    random weights of their shape (or of speed_shape 'LxHxC'): speed does not depend on the weights."""
    from sample import load_model
    from model import ModelConfig, build_model
    K, V, P = meta['codebook_size'], meta['cond_vocab_size'], meta['cond_len']
    L = grid[0] * grid[1]
    models = {}
    for family, folder in (('maskgit', maskgit_dir), ('gpt', gpt_dir)):
        trained = load_model(folder, ckpt, device)[0] if folder else None
        if trained is not None and not speed_shape and list(grid) == list(meta['grid']):
            models[family] = trained
            continue
        if trained is not None and not speed_shape:
            shape = trained.config.to_dict()
        else:
            try:
                n_layer, n_head, n_embd = (int(x) for x in (speed_shape or '4x4x128').split('x'))
            except ValueError:
                raise ConfigError(f"--speed_shape={speed_shape!r}: write layers x heads x width, e.g. 6x8x256")
            shape = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        if family == 'maskgit':
            shape.update(model_type='maskgit', codebook_size=K, grid_h=grid[0], grid_w=grid[1], cond_vocab_size=V,
                         cond_len=P, block_size=P + L)
        else:
            shape.update(model_type='gpt', vocab_size=K + V + 1, block_size=P + L - 1)
        torch.manual_seed(seed)
        models[family] = build_model(ModelConfig(**shape)).eval()
    return models


def speed():
    """Latency at batch 1 and throughput at a large batch: MaskGIT T=8 vs AR with a KV cache, on the dataset's
    grid and on a speed_grid x speed_grid grid, conditioned like the dataset (a class token, or 51 caption tokens
    on clevr). Each scheme is timed at every dtype in speed_dtypes and 1..speed_threads threads and reported
    at its fastest, with the setting that gave it: neither scheme is handicapped by a setting that suits the
    other. Batch 1: the best of speed_reps rounds, each round timing every setting once (so a change of the
machine's load hits every setting alike); large batch: one round. A batch-1 warm-up first. No CFG.

    What to expect: MaskGIT T=8 runs 8 passes over all P + L tokens, AR with a KV cache L passes over one token
    (L token-passes, plus attention over the cache). At batch 1 each AR step is latency bound (a few dozen small
    kernels per layer, ~0.5 ms on a CPU core whatever the work), so 8 steps beat L steps; at a large batch both
    are compute bound and AR's ~8x fewer FLOPs win. On a CPU MaskGIT's pass over a few hundred tokens is itself
    compute bound, so bf16 matmuls (avx512_bf16 / AMX) and a second thread speed MaskGIT up, while AR's one-token
    steps gain little from either; on a GPU a 300-token pass costs about what a 1-token pass does."""
    from sample import generate_image_tokens
    import copy
    meta = image_view(load_meta(dataset), image_modality, cond_modality)
    dtypes = [d.strip() for d in speed_dtypes.split(',') if d.strip()]
    threads = list(range(1, speed_threads + 1))
    if any(d not in ('float32', 'bfloat16') for d in dtypes) or not dtypes or not threads:
        raise ConfigError(f"--speed_dtypes={speed_dtypes!r} --speed_threads={speed_threads!r}: e.g. "
                         f"--speed_dtypes=float32,bfloat16 --speed_threads=2")
    grids = [tuple(meta['grid'])] + ([(speed_grid, speed_grid)] if [speed_grid] * 2 != list(meta['grid']) else [])
    P, default_threads = meta['cond_len'], torch.get_num_threads()
    print(f"dataset {dataset}: condition {P} token(s); dtypes {dtypes}, threads {threads}; no CFG")
    rows = []
    for grid in grids:
        models = speed_models(meta, grid)
        shapes = ', '.join(f"{f} {m.config.n_layer}x{m.config.n_head}x{m.config.n_embd}" for f, m in models.items())
        cast = {(f, d): copy.deepcopy(m).to(getattr(torch, d)) for f, m in models.items() for d in dtypes}
        L = grid[0] * grid[1]
        m = {**meta, 'grid': list(grid)}
        # the large batch holds about speed_batch grids of the dataset's size: the same tokens on both grids
        for batch in (1, max(1, speed_batch * meta['grid'][0] * meta['grid'][1] // L)):
            cond = torch.randint(meta['cond_vocab_size'], (batch, P), generator=torch.Generator().manual_seed(seed))
            settings = [(family, kw, d, t) for family, kw in (('maskgit', dict(steps=8)), ('gpt', dict()))
                        for d in dtypes for t in threads]
            times = {(family, d, t): [] for family, _, d, t in settings}  # -> seconds of each run
            for r in range(speed_reps if batch == 1 else 1):  # rounds over every setting, so load changes hit all
                for family, kw, d, t in settings:
                    torch.set_num_threads(t)
                    gen = torch.Generator().manual_seed(seed + r)
                    if r == 0:
                        generate_image_tokens(cast[(family, d)], cond[:1], m, generator=gen, **kw)  # warm-up
                    t0 = time.perf_counter()
                    generate_image_tokens(cast[(family, d)], cond, m, generator=gen, **kw)
                    times[(family, d, t)].append(time.perf_counter() - t0)
            best = {}
            for (family, d, t), ts in times.items():
                dt = min(ts)
                print(f"  {grid[0]}x{grid[1]} batch {batch:<4} {family:<8} {d:<9} {t} thread(s): {dt * 1000:9.1f} ms"
                      f"   ({shapes})", flush=True)
                if family not in best or dt < best[family][0]:
                    best[family] = (dt, f"{d}, {t} thr")
            torch.set_num_threads(default_threads)
            rows.append((grid, P, batch, best))
    print()
    print("| grid | tokens (+ condition) | batch | MaskGIT T=8 ms/batch | its setting | AR + KV cache ms/batch | its setting "
          "| MaskGIT img/s | AR img/s | MaskGIT speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (gh, gw), P, batch, best in rows:
        (t_mg, s_mg), (t_ar, s_ar) = best['maskgit'], best['gpt']
        ratio = t_ar / t_mg
        print(f"| {gh}x{gw} | {gh * gw} + {P} | {batch} | {t_mg * 1000:.1f} | {s_mg} | {t_ar * 1000:.1f} | {s_ar} | "
              f"{batch / t_mg:.1f} | {batch / t_ar:.1f} | {ratio:.2f}x{' (AR wins)' if ratio < 1 else ''} |")


# -----------------------------------------------------------------------------
# 4m: any-to-any from rgb


def per_position_prior(train_tokens, vocab_size, median=False):
    """(N, L) train tokens -> (L,) the most common token per position, or the median (ordered bins, e.g. depth)."""
    if median:
        return np.median(train_tokens, axis=0).round().astype(np.int64)
    counts = np.stack([(train_tokens == v).sum(0) for v in range(vocab_size)])  # (V, L)
    return counts.argmax(0)


def median_bin(probs):
    """(..., V) probabilities over ordered bins -> (...,) the median bin: the point estimate with the least
    expected absolute error, which suits abs-rel better than the most likely bin."""
    return (probs.cumsum(-1) < 0.5).sum(-1).clamp(max=probs.size(-1) - 1)


@torch.no_grad()
def in_batches(fn, inputs, batch_size=250):
    """fn over the scenes in batches: {name: (N, L) int array} -> fn({name: (B, L) long tensor}) -> (N, ...) array."""
    n = len(next(iter(inputs.values())))
    return np.concatenate([fn({k: torch.from_numpy(v[i:i + batch_size]).long() for k, v in inputs.items()}).numpy()
                           for i in range(0, n, batch_size)])


def predict_from(model, inputs, target, batch_size=250, ordered=False):
    """One pass per batch: {name: (N, L) tokens} -> (N, L_target) predicted tokens of `target`."""
    def one_pass(batch):
        logits = model.predict(batch, target).float()  # (B, L, V)
        return median_bin(logits.softmax(-1)) if ordered else logits.argmax(-1)
    return in_batches(one_pass, inputs, batch_size)


def fourm_any_to_any_from_rgb(model, dataset, num_scenes=1000, batch_size=250):
    """rgb -> semseg pixel mIoU and rgb -> depth pixel abs-rel (sky excluded) on num_scenes val scenes, each as
    (model, per-position prior, token-grid bound). Returns a dict of floats."""
    from tokenizer import class_ious, depth_abs_rel
    meta = load_meta(dataset)
    specs = meta['modalities']
    val, train = load_tokens(dataset, 'val'), load_tokens(dataset, 'train')
    n = min(num_scenes, len(val['rgb']))
    folder = dataset_dir(dataset)
    raw = {k: np.load(f'{folder}/val/raw_{k}.npy')[:n] for k in ('semseg', 'depth', 'depth_valid')}
    decoder = TokenDecoder(dataset, meta)
    inputs = {'rgb': val['rgb'][:n]}
    results = {'scenes': n}

    num_classes = specs['semseg']['vocab_size']
    candidates = {
        'model': predict_from(model, inputs, 'semseg', batch_size),
        'prior': np.tile(per_position_prior(train['semseg'], num_classes), (n, 1)),
        'bound': val['semseg'][:n],
    }
    results['semseg_classes'] = specs['semseg'].get('classes') or [str(c) for c in range(num_classes)]
    for k, tokens in candidates.items():
        ious = class_ious(decoder.decode('semseg', tokens), raw['semseg'], num_classes)
        results[f'semseg_miou_{k}'] = float(np.nanmean(ious))
        results[f'semseg_iou_{k}'] = [float(i) for i in ious]

    candidates = {
        'model': predict_from(model, inputs, 'depth', batch_size, ordered=True),
        'prior': np.tile(per_position_prior(train['depth'], specs['depth']['vocab_size'], median=True), (n, 1)),
        'bound': val['depth'][:n],
    }
    for k, tokens in candidates.items():
        results[f'depth_abs_rel_{k}'] = depth_abs_rel(decoder.decode('depth', tokens), raw['depth'], raw['depth_valid'])
    return results


def print_fourm_table(r):
    print(f"one pass from all rgb tokens, {r['scenes']} val scenes    model   per-position prior   token-grid bound")
    print(f"rgb -> semseg pixel mIoU (higher is better)      {r['semseg_miou_model']:.3f}   "
          f"{r['semseg_miou_prior']:.3f}                {r['semseg_miou_bound']:.3f}")
    print(f"rgb -> depth pixel abs-rel, sky excluded (lower)  {r['depth_abs_rel_model']:.3f}   "
          f"{r['depth_abs_rel_prior']:.3f}                {r['depth_abs_rel_bound']:.3f}")
    if 'semseg_classes' in r:  # where the mIoU comes from
        for i, name in enumerate(r['semseg_classes']):
            print(f"  semseg IoU, {name:<34} {r['semseg_iou_model'][i]:.3f}   {r['semseg_iou_prior'][i]:.3f}"
                  f"                {r['semseg_iou_bound'][i]:.3f}")

# -----------------------------------------------------------------------------
# scorecard: any-to-any directions on val scenes with exact ground truth (re-rendered by clevr.py), each row as
# the 4M model | the tokenizer bound (ground truth -> tokens -> decoded) | a specialist (one direction, same size
# and compute). The metrics are small pure functions, tested on hand-made cases in tests/test_scorecard.py.

CAPTION_ATTRIBUTES = ('size', 'colour', 'material', 'shape', 'depth', 'side')


def parse_caption(text):
    """'a large red metal cube in the back left , a ... .' -> [(size, colour, material, shape, depth, side), ...]:
    per comma-separated phrase, the first word of each attribute's vocabulary (None where there is none)."""
    import clevr
    vocabularies = (clevr.SIZES, clevr.COLOURS, clevr.MATERIALS, clevr.SHAPES, clevr.POSITION_DEPTH, clevr.POSITION_SIDE)
    objects = []
    for phrase in text.replace('.', ',').split(','):
        words = phrase.split()
        if words:
            objects.append(tuple(next((w for w in words if w in vocab), None) for vocab in vocabularies))
    return objects


def best_matching(n_pred, n_true, score):
    """The pairs (i, j) of prediction i and truth j, each used at most once, with the largest total score(i, j):
    brute force over assignments (scenes hold at most a handful of objects)."""
    from itertools import permutations
    if n_pred <= n_true:
        candidates = ([(i, j) for i, j in zip(range(n_pred), p)] for p in permutations(range(n_true), n_pred))
    else:
        candidates = ([(i, j) for i, j in zip(p, range(n_true))] for p in permutations(range(n_pred), n_true))
    return max(candidates, key=lambda pairs: sum(score(i, j) for i, j in pairs))


def caption_scores(pred_text, true_text, max_objects=6):
    """(attribute accuracy, exact match) of a predicted caption: objects are matched to the true ones to agree on
    the most attributes; accuracy = agreeing attributes / (6 x the larger object count), so a missing or an
    extra object costs all its 6 attributes; exact = the same multiset of fully specified objects. Predictions
    past max_objects are not matched (they still count in the denominator)."""
    pred, true = parse_caption(pred_text), parse_caption(true_text)
    denominator = len(CAPTION_ATTRIBUTES) * max(len(pred), len(true))
    if denominator == 0:
        return 1.0, True

    def agree(i, j):
        return sum(a is not None and a == b for a, b in zip(pred[i], true[j]))
    pairs = best_matching(min(len(pred), max_objects), len(true), agree)
    exact = sorted(pred) == sorted(true) if all(None not in o for o in pred) else False
    return sum(agree(i, j) for i, j in pairs) / denominator, exact


def box_iou(a, b):
    """IoU of two inclusive pixel boxes (x0, y0, x1, y1); a generated box with x1 < x0 or y1 < y0 is empty (IoU 0)."""
    area = lambda r: max(r[2] - r[0] + 1, 0) * max(r[3] - r[1] + 1, 0)
    inter = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def boxes_mean_iou(pred, true, max_objects=6):
    """Mean IoU of one scene's predicted boxes against the true ones (lists of (x0, y0, x1, y1)), matched for the
    largest total IoU; unmatched boxes on either side score 0 (mean over the larger count); both empty: 1."""
    n = max(len(pred), len(true))
    if n == 0:
        return 1.0
    pairs = best_matching(min(len(pred), max_objects), len(true), lambda i, j: box_iou(pred[i], true[j]))
    return sum(box_iou(pred[i], true[j]) for i, j in pairs) / n


def objects_found(seen, true_objects):
    """Share of true objects (dicts with 'colour' and 'shape') found: seen holds, per object, the (colour, shape)
    pairs a judge saw in the generated image around the object's place; 1 when there is none to find."""
    if not true_objects:
        return 1.0
    return sum((o['colour'], o['shape']) in pairs for pairs, o in zip(seen, true_objects)) / len(true_objects)


def crop_window(image, box, jitter=(0, 0), margin=3, size=24):
    """The pixels around an inclusive box (x0, y0, x1, y1), grown by `margin` and shifted by jitter (dx, dy),
    sampled to (size, size, 3) float in [0, 1] (nearest pixel, clipped at the borders)."""
    H, W = image.shape[:2]
    x0, y0, x1, y1 = box[0] + jitter[0] - margin, box[1] + jitter[1] - margin, box[2] + jitter[0] + margin, box[3] + jitter[1] + margin
    xs = np.clip(np.floor(x0 + (np.arange(size) + 0.5) * (x1 - x0 + 1) / size), 0, W - 1).astype(int)
    ys = np.clip(np.floor(y0 + (np.arange(size) + 0.5) * (y1 - y0 + 1) / size), 0, H - 1).astype(int)
    crop = np.asarray(image)[ys][:, xs]
    return crop.astype(np.float32) / (255.0 if crop.dtype == np.uint8 else 1.0)


class ObjectJudge(nn.Module):
    """Colour (8) and shape (3 + 'none') of the object in a 24x24 window: a small CNN trained on ground-truth renders
    (windows jittered by up to 3 pixels), the judge of caption -> rgb. A caption places objects only coarsely (a 3x3
    grid of regions, ~16 pixels each), so judge() looks at windows shifted by up to `search` pixels around each
    object's true box: an object drawn about where the scene has it (within ~one token cell) is found."""

    def __init__(self):
        super().__init__()
        import clevr
        self.colours, self.shapes = list(clevr.COLOURS), list(clevr.SHAPES) + ['none']
        self.body = nn.Sequential(  # (N, 3, 24, 24) -> (N, 128)
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 12, 12)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 6, 6)
            nn.Flatten(), nn.Linear(64 * 6 * 6, 128), nn.ReLU())
        self.colour_head, self.shape_head = nn.Linear(128, len(self.colours)), nn.Linear(128, len(self.shapes))

    def forward(self, x):  # x (N, 24, 24, 3) in [0, 1]
        h = self.body(x.permute(0, 3, 1, 2) - 0.5)
        return self.colour_head(h), self.shape_head(h)

    @torch.no_grad()
    def judge(self, images, objects, search=8, stride=4):
        """images (N, H, W, 3), objects per image (dicts with 'box') -> per image, per object the set of
        (colour, shape) pairs seen in the windows shifted by -search..search pixels (step stride) in x and y
        (windows judged empty are left out)."""
        shifts = [(dx, dy) for dx in range(-search, search + 1, stride) for dy in range(-search, search + 1, stride)]
        crops = [crop_window(img, o['box'], jitter=d) for img, objs in zip(images, objects) for o in objs for d in shifts]
        if not crops:
            return [[] for _ in objects]
        colour, shape = (logits.argmax(-1).view(-1, len(shifts)).tolist() for logits in self(torch.from_numpy(np.stack(crops))))
        out, k = [], 0
        for objs in objects:
            out.append([{(self.colours[c], self.shapes[s]) for c, s in zip(colour[k + i], shape[k + i])
                         if self.shapes[s] != 'none'} for i in range(len(objs))])
            k += len(objs)
        return out


def judged_objects(objects, min_pixels=20):
    """The objects caption -> rgb is scored on: visible enough to be judged (>= min_pixels pixels)."""
    return [[o for o in objs if o['visible_pixels'] >= min_pixels] for objs in objects]


def train_object_judge(num_scenes=6000, steps=1000, batch_size=256, seed=0):
    """ObjectJudge on train-split renders: each visible object's jittered window (its colour and shape), and as
    many windows of empty ground ('none'). Deterministic for a seed; ~2 min on one CPU core."""
    import clevr
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    scenes = clevr.render_scenes(num_scenes, seed=clevr.SPLIT_SEEDS['train'], modalities=('rgb', 'instance'))
    judge = ObjectJudge()
    crops, colours, shapes = [], [], []
    for img, inst, objs in zip(scenes['rgb'], scenes['instance'], judged_objects(scenes['objects'])):
        for o in objs:
            crops.append(crop_window(img, o['box'], jitter=rng.integers(-3, 4, 2)))
            colours.append(judge.colours.index(o['colour']))
            shapes.append(judge.shapes.index(o['shape']))
        for _ in range(2):  # empty windows, of an object's typical size, where no object pixel falls
            w, x0, y0 = rng.integers(4, 14), rng.integers(0, 50), rng.integers(16, 50)
            box = (x0, y0, x0 + w, y0 + w)
            if not inst[max(0, y0 - 3):y0 + w + 4, max(0, x0 - 3):x0 + w + 4].any():
                crops.append(crop_window(img, box))
                colours.append(-100)  # no colour to learn
                shapes.append(judge.shapes.index('none'))
    x, c, s = torch.from_numpy(np.stack(crops)), torch.tensor(colours), torch.tensor(shapes)
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ix = torch.randint(len(x), (batch_size,), generator=gen)
        colour_logits, shape_logits = judge(x[ix])  # (no mirroring: the light from the left is a cue to the shape)
        loss = F.cross_entropy(colour_logits, c[ix], ignore_index=-100) + F.cross_entropy(shape_logits, s[ix])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


def load_object_judge(path, seed=0, log=print):
    """The judge saved at path, or a new one trained (deterministically for the seed) and saved there."""
    judge = ObjectJudge()
    if os.path.exists(path):
        judge.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        return judge.eval()
    t0 = time.time()
    judge = train_object_judge(seed=seed)
    torch.save(judge.state_dict(), path)
    log(f"  trained the caption->rgb object judge in {time.time() - t0:.0f}s -> {path}")
    return judge


def render_val_truth(dataset, n):
    """Ground truth of val scenes 0..n-1, rendered again (scene i of a split is a pure function of its seed), checked
    against the prepared caption tokens so a mismatched dataset is caught."""
    import clevr
    meta = load_meta(dataset)
    truth = clevr.render_scenes(n, seed=clevr.SPLIT_SEEDS['val'], resolution=meta.get('resolution', 64),
                                modalities=('rgb', 'depth', 'depth_valid', 'normals', 'semseg', 'caption'))
    prepared = load_tokens(dataset, 'val')['caption'][:n]
    if not np.array_equal(truth['caption'], prepared):
        raise DataError(f"the val scenes of {dataset!r} are not clevr.py's val split: rebuild it with "
                        f"python prepare.py clevr")
    # the objects the caption and boxes name: visible, left to right (as clevr.render_scenes orders them)
    truth['visible'] = [sorted([o for o in objs if o['visible_pixels'] > 0], key=lambda o: o['box'][0] + o['box'][2])
                        for objs in truth['objects']]
    return truth


def direction_of(checkpoint):
    """'rgb->depth' for a specialist checkpoint (its input_modalities and target_modalities)."""
    config = checkpoint['config']
    inputs, targets = config.get('input_modalities') or (), config.get('target_modalities') or ()
    if len(targets) != 1 or not inputs:
        raise DataError(f"a specialist is trained with input_modalities and one target modality "
                        f"(config/nano4m_cpu_specialist.py); this checkpoint has {tuple(inputs)} -> {tuple(targets)}")
    return '+'.join(inputs) + '->' + targets[0]


def generate_batched(model, inputs, target, batch_size=250, **kw):
    """model.generate over the scenes in batches: {name: (N, L) int array} -> (N, L_target) array."""
    return in_batches(lambda batch: model.generate(batch, target, **kw), inputs, batch_size)


def sequence_tokens(model, inputs, target, seed, steps):
    """A caption or boxes, greedily: autoregressive for a span model, else MaskGIT steps at temperature 0."""
    scheme = 'ar' if model.is_ar[model.modality_id(target)] else 'maskgit'
    return generate_batched(model, inputs, target, scheme=scheme, steps=steps, temperature=0,
                            generator=torch.Generator().manual_seed(seed))


def score_direction(direction, tokens, truth, spec, decoder, judge, n):
    """Predicted (N, L) tokens of one direction's target -> {metric name: value}."""
    from data import decode_words
    from tokenizer import depth_abs_rel, miou, normals_angular_error, depth_delta1
    import clevr
    target = direction.split('->')[1]
    if target == 'depth':
        depth = decoder.decode('depth', tokens)
        return {'abs-rel (lower)': depth_abs_rel(depth, truth['depth'][:n], truth['depth_valid'][:n]),
                'delta<1.25 (higher)': depth_delta1(depth, truth['depth'][:n], truth['depth_valid'][:n])}
    if target == 'normals':
        return {'mean angular error, degrees (lower)': normals_angular_error(
            decoder.decode('normals', tokens), truth['normals'][:n], truth['depth_valid'][:n])}
    if target == 'semseg':
        return {'mIoU (higher)': miou(decoder.decode('semseg', tokens), truth['semseg'][:n], spec['vocab_size'])}
    if target == 'caption':
        scores = [caption_scores(decode_words(spec, t), clevr.decode_caption(c)) for t, c in zip(tokens, truth['caption'])]
        return {'attribute accuracy (higher)': float(np.mean([s[0] for s in scores])),
                'exact scene match (higher)': float(np.mean([s[1] for s in scores]))}
    if target == 'boxes':
        ious = [boxes_mean_iou([b[1:] for b in clevr.decode_boxes(t, decoder.size)], [o['box'] for o in objs])
                for t, objs in zip(tokens, truth['visible'])]
        return {'mean IoU (higher)': float(np.mean(ious))}
    if target == 'rgb':
        images = decoder.decode('rgb', tokens)  # (N, H, W, 3) in [0, 1]
        objects = judged_objects(truth['visible'][:n])
        found = [objects_found(seen, objs) for seen, objs in zip(judge.judge(images, objects), objects)]
        return {'objects with right colour + shape in place (higher)': float(np.mean(found))}
    raise ValueError(f"no scorecard metric for target {target!r}")


SCORECARD_DIRECTIONS = ('rgb->depth', 'rgb->normals', 'rgb->semseg', 'rgb->caption', 'caption->rgb', 'rgb->boxes')


def scorecard(model_dir, specialist_dirs=(), random_dir='', num_scenes=1000, cfg_scales=(1.0, 3.0), steps=8,
              temperature=1.0, seed=1337, log=print):
    """Every direction of SCORECARD_DIRECTIONS the model knows, on the first num_scenes val scenes. Returns
    (rows, notes): rows of (direction, metric, 4M, tokenizer bound, specialist or None)."""
    from sample import load_model
    model, checkpoint = load_model(model_dir)
    dataset, meta = checkpoint['config']['dataset'], checkpoint['data_meta']
    val = load_tokens(dataset, 'val')
    n = min(num_scenes, len(val['rgb']))
    truth = render_val_truth(dataset, n)
    decoder = TokenDecoder(dataset, meta)
    specialists = {}
    for d in specialist_dirs:
        spec_model, spec_ckpt = load_model(d)
        specialists[direction_of(spec_ckpt)] = spec_model
    unused = sorted(set(specialists) - set(SCORECARD_DIRECTIONS))
    if unused:
        raise DataError(f"--specialists: no scorecard row for {unused}; the rows are {', '.join(SCORECARD_DIRECTIONS)}")
    judge, notes = None, []
    if 'rgb' in model.names and 'caption' in model.names:
        judge = load_object_judge(os.path.join(model_dir, 'object_judge.pt'), seed, log)
        objects = judged_objects(truth['visible'])
        real = [objects_found(seen, o) for seen, o in zip(judge.judge(truth['rgb'], objects), objects)]
        other = [objects_found(seen, o) for seen, o in zip(judge.judge(np.roll(truth['rgb'], 1, 0), objects), objects)]
        notes.append(f"caption->rgb judge (a small CNN on 24x24 windows within 8 pixels of each object's true box, "
                     f"trained on train-split renders) finds {np.mean(real) * 100:.1f}% of the objects in the real val "
                     f"images, and {np.mean(other) * 100:.1f}% in the image of another scene (the chance floor)")
    rows = []
    for direction in SCORECARD_DIRECTIONS:
        source, target = direction.split('->')
        if source not in model.names or target not in model.names:
            continue
        t0 = time.time()
        inputs = {source: val[source][:n]}
        spec = meta['modalities'][target]

        def predict(m, cfg=1.0):
            if target == 'rgb':
                return generate_batched(m, inputs, 'rgb', scheme='maskgit', steps=steps, temperature=temperature,
                                        cfg_scale=cfg, generator=torch.Generator().manual_seed(seed))
            if spec['kind'] == 'sequence':
                return sequence_tokens(m, inputs, target, seed, steps)
            return predict_from(m, inputs, target, ordered=target == 'depth')
        scored = {'4M': score_direction(direction, predict(model), truth, spec, decoder, judge, n),
                  'bound': score_direction(direction, val[target][:n], truth, spec, decoder, judge, n)}
        if direction in specialists:
            scored['specialist'] = score_direction(direction, predict(specialists[direction]), truth, spec, decoder, judge, n)
        for metric in scored['4M']:
            rows.append((direction, metric, scored['4M'][metric], scored['bound'][metric],
                         scored['specialist'][metric] if 'specialist' in scored else None))
        if target == 'rgb':  # classifier-free guidance on caption -> rgb
            for cfg in cfg_scales:
                if cfg != 1.0:
                    s = score_direction(direction, predict(model, cfg), truth, spec, decoder, judge, n)
                    rows.append((f'{direction}, CFG scale {cfg:g}', metric, s[metric], None, None))
        if target == 'caption' and random_dir:  # random-token vs span masking of the caption
            other, _ = load_model(random_dir)
            s = score_direction(direction, predict(other), truth, spec, decoder, judge, n)
            which = 'span' if model.is_ar[model.modality_id('caption')] else 'random-token'
            other_kind = 'span' if other.is_ar[other.modality_id('caption')] else 'random-token'
            notes.append(f"rgb->caption: the 4M column is {which} masking; the {other_kind}-masking row is {random_dir}")
            for metric in s:
                rows.append((f'{direction}, {other_kind} masking', metric, s[metric], None, None))
        log(f"  {direction}: {time.time() - t0:.1f}s")
    notes.append(f"{n} val scenes; 4M = {model_dir}; images one pass (depth: median bin), sequences greedy "
                 f"({'autoregressive' if model.is_ar.any() else f'MaskGIT {steps} steps'}), caption->rgb MaskGIT "
                 f"{steps} steps at temperature {temperature:g} (the 4M and specialist columns without guidance)")
    return rows, notes


def scorecard_markdown(rows, notes):
    """The scorecard as a markdown table (plus notes), the way eval.py prints and writes it."""
    fmt = lambda v: '' if v is None else f'{v:.3f}'
    lines = ['| direction | metric | 4M | tokenizer bound | specialist | specialist - 4M |', '|---|---|---|---|---|---|']
    for direction, metric, model, bound, specialist in rows:
        gap = '' if specialist is None else f'{specialist - model:+.3f}'
        lines.append(f'| {direction} | {metric} | {fmt(model)} | {fmt(bound)} | {fmt(specialist)} | {gap} |')
    return '\n'.join(lines + [''] + [f'- {note}' for note in notes]) + '\n'

# -----------------------------------------------------------------------------


def main():
    try:
        configure(globals())
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    torch.manual_seed(seed)
    try:
        if mode == 'classifier':
            train_classifier(dataset, classifier_epochs)
        elif mode == 'table':
            table()
        elif mode == 'speed':
            speed()
        elif mode == '4m':
            from sample import load_model
            model, checkpoint = load_model(out_dir, ckpt, 'cpu')
            results = fourm_any_to_any_from_rgb(model, checkpoint['config']['dataset'], num_scenes)
            print_fourm_table(results)
            if json_out:
                with open(json_out, 'w') as f:
                    json.dump(results, f, indent=1)
        elif mode == 'scorecard':
            rows, notes = scorecard(out_dir, [d for d in specialists.split(',') if d], random_dir, num_scenes,
                                    scorecard_cfg, scorecard_steps, scorecard_temperature, seed)
            table_md = scorecard_markdown(rows, notes)
            path = os.path.join(out_dir, 'scorecard.md')
            with open(path, 'w') as f:
                f.write(table_md)
            print(table_md + f"written to {path}")
            if json_out:
                with open(json_out, 'w') as f:
                    json.dump({'rows': rows, 'notes': notes}, f, indent=1)
        else:
            sys.exit(f"eval.py: unknown --mode={mode!r}; choose table, speed, classifier, 4m or scorecard")
    except (DataError, FileNotFoundError, KeyError, ConfigError) as e:
        sys.exit(f"eval.py: {e}")


if __name__ == '__main__':
    main()
