"""
Score tables for trained nano4M models.

    python eval.py --task=4m --out_dir=out-nano4m-cpu      # one-pass rgb->semseg mIoU and rgb->depth abs-rel

4m: on the val scenes (>= 500), every rgb token is the input and one pass of the decoder predicts all semseg
(or depth) tokens; predictions are decoded to full resolution and scored against the rendered ground truth,
next to the per-position prior (the most common token of each cell in the train split: what a model that
ignores the input gets) and the token-grid bound (the val tokens themselves: the best the 8x8 tokens allow).
"""
import argparse
import json
import sys

import numpy as np
import torch

from data import DataError, TokenDecoder, dataset_dir, load_meta, load_tokens

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='4m', choices=['4m'])
    parser.add_argument('--out_dir', required=True, help='the training run to score (its ckpt.pt)')
    parser.add_argument('--ckpt', default='ckpt')
    parser.add_argument('--num_scenes', type=int, default=1000)
    parser.add_argument('--json', default='', help='also write the figures to this file')
    args = parser.parse_args(argv)
    from sample import load_model
    try:
        model, checkpoint = load_model(args.out_dir, args.ckpt, 'cpu')
        results = fourm_any_to_any_from_rgb(model, checkpoint['config']['dataset'], args.num_scenes)
    except (FileNotFoundError, DataError, KeyError) as e:
        sys.exit(f"eval.py: {e}")
    print_fourm_table(results)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main()
