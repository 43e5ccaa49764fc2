"""
Scores class-conditional image generators on Fashion-MNIST with what we can compute ourselves, and times them.

    python eval.py --mode=classifier        # train the judge once: a small CNN on real train images (~1 min CPU)
    python eval.py --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu
    python eval.py --mode=speed --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu
    python eval.py --mode=speed --dataset=clevr --maskgit_dir=out-clevr-maskgit-cpu --gpt_dir=out-clevr-gpt-cpu
    python eval.py --mode=speed --dataset=clevr --speed_shape=6x8x256 --speed_batch=128  # the GPU configs' shape

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
num_scenes = 1000           # --mode=4m: val scenes scored
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
                raise ValueError(f"--speed_shape={speed_shape!r}: write layers x heads x width, e.g. 6x8x256")
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
        raise ValueError(f"--speed_dtypes={speed_dtypes!r} --speed_threads={speed_threads!r}: e.g. "
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
def predict_from(model, inputs, target, batch_size=250, ordered=False):
    """One pass per batch: {name: (N, L) tokens} -> (N, L_target) predicted tokens of `target`."""
    n = len(next(iter(inputs.values())))
    out = []
    for i in range(0, n, batch_size):
        batch = {k: torch.from_numpy(v[i:i + batch_size]).long() for k, v in inputs.items()}
        logits = model.predict(batch, target).float()  # (B, L, V)
        out.append((median_bin(logits.softmax(-1)) if ordered else logits.argmax(-1)).numpy())
    return np.concatenate(out)


def fourm_any_to_any_from_rgb(model, dataset, num_scenes=1000, batch_size=250):
    """rgb -> semseg pixel mIoU and rgb -> depth pixel abs-rel (sky excluded) on num_scenes val scenes, each as
    (model, per-position prior, token-grid bound). Returns a dict of floats."""
    from tokenizer import depth_abs_rel, miou
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
    for k, tokens in candidates.items():
        results[f'semseg_miou_{k}'] = miou(decoder.decode('semseg', tokens), raw['semseg'], num_classes)

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
        else:
            sys.exit(f"eval.py: unknown --mode={mode!r}; choose table, speed, classifier or 4m")
    except (DataError, FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"eval.py: {e}")


if __name__ == '__main__':
    main()
