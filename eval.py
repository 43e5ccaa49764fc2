"""
Scores class-conditional image generators on Fashion-MNIST with what we can compute ourselves, and times them.

    python eval.py --mode=classifier        # train the judge once: a small CNN on real train images (~1 min CPU)
    python eval.py --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu
    python eval.py --mode=speed --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu

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
from data import DataError, TokenDecoder, dataset_dir, decode_image_tokens, load_meta, load_tokens

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


def speed():
    """Latency at batch 1 and throughput at a large batch: MaskGIT T=8 vs AR with a KV cache, on the dataset's
    grid (trained models) and on a speed_grid x speed_grid grid (the same shapes, random weights: speed does
    not depend on the weights).

    What to expect: MaskGIT T=8 runs 8 passes over all L tokens (8L token-passes), AR with a KV cache runs L
    passes over one token (L token-passes, plus attention over the cache). At batch 1 each AR step is latency
    bound (a few dozen small kernels per layer, ~1.5 ms on a CPU core whatever the work), so 8 steps beat L
    steps; at a large batch both are compute bound and AR's 8x fewer FLOPs win. On a CPU the 257-token pass is
    itself compute bound (~17 ms for the 4x128 model on one core), which caps MaskGIT's batch-1 advantage at
    ~2x on the 16x16 grid; on a GPU a 257-token pass costs about what a 1-token pass does, and the ratio heads
    for L / T = 32x."""
    from sample import generate_image_tokens, load_model
    from model import ModelConfig, build_model
    meta = load_meta(dataset)
    mg, _ = load_model(maskgit_dir, ckpt, device)
    ar, _ = load_model(gpt_dir, ckpt, device)
    grids = [(tuple(meta['grid']), mg, ar)]
    g = speed_grid
    cfg_mg = ModelConfig(**{**mg.config.to_dict(), 'grid_h': g, 'grid_w': g, 'block_size': g * g + 1})
    cfg_ar = ModelConfig(**{**ar.config.to_dict(), 'block_size': g * g})
    grids.append(((g, g), build_model(cfg_mg).eval(), build_model(cfg_ar).eval()))
    print(f"{torch.get_num_threads()} threads; models: maskgit {mg.config.n_layer}x{mg.config.n_embd}, "
          f"gpt {ar.config.n_layer}x{ar.config.n_embd}; no CFG")
    print("| grid | tokens | batch | MaskGIT T=8 ms/batch | AR + KV cache ms/batch | MaskGIT img/s | AR img/s | MaskGIT speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for (gh, gw), m_mg, m_ar in grids:
        m = {**meta, 'grid': [gh, gw]}
        # the large batch holds about speed_batch grids of the dataset's size: the same tokens on both grids
        for batch in (1, max(1, speed_batch * meta['grid'][0] * meta['grid'][1] // (gh * gw))):
            labels = torch.arange(batch) % meta['num_classes']
            times = {}
            for name, model, kw in (('maskgit', m_mg, dict(steps=8)), ('ar', m_ar, dict())):
                gen = torch.Generator().manual_seed(seed)
                generate_image_tokens(model, labels, m, generator=gen, **kw)  # warm-up
                reps = 5 if batch == 1 else 1
                t0 = time.perf_counter()
                for _ in range(reps):
                    generate_image_tokens(model, labels, m, generator=gen, **kw)
                times[name] = (time.perf_counter() - t0) / reps
            print(f"| {gh}x{gw} | {gh * gw} | {batch} | {times['maskgit'] * 1000:.1f} | {times['ar'] * 1000:.1f} | "
                  f"{batch / times['maskgit']:.1f} | {batch / times['ar']:.1f} | {times['ar'] / times['maskgit']:.2f}x |",
                  flush=True)


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
    except (DataError, FileNotFoundError, KeyError) as e:
        sys.exit(f"eval.py: {e}")


if __name__ == '__main__':
    main()
