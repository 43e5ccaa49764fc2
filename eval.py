"""
Scores trained models against baselines and bounds, with judges we train ourselves (judges.py).

    python eval.py --mode=classifier        # train the Fashion-MNIST judge once: a small CNN (~1 min CPU)
    python eval.py --mode=fashion_mnist --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu
    python eval.py --mode=flow --flow_dir=out-flow-fashion-mnist-cpu   # the same table with a flow model's rows

fashion_mnist: class-conditional image generators. FID needs Inception weights we cannot install offline, so the
judge is our own classifier (>= 90% test accuracy), saved as data/<dataset>/classifier.pt:
  fidelity   share of generated images the classifier puts in the class they were conditioned on
  FD         Frechet distance between Gaussians fitted to the classifier's penultimate features of generated
             images and of the 10,000 real test images. NOT Inception FID: same formula, a much smaller
             feature space, so the numbers only compare rows of this table with each other
  diversity  mean pairwise feature distance within a class, relative to real test images (1.0 = as diverse)
  images/s   generation throughput at the table's batch (all classes at once), tokens -> pixels excluded
(sampling speed on its own, MaskGIT vs AR at batch 1 and large batches: bench.py --mode=speed)
flow rows: a flow model (--flow_dir) sampled with --flow_method (Euler) at every --flow_steps x --flow_cfg; --mode=flow
is --mode=fashion_mnist (add --maskgit_dir/--gpt_dir for the token families' rows in the same table).
Reference rows: real validation images (the floor FD can reach) and the test images' own tokens decoded by the
tokenizer (the 'tokenizer bound': what any generator over these tokens can reach at best).

    python eval.py --mode=caption_rgb --flow_dir=out-flow-clevr-cpu --maskgit_dir=out-clevr-maskgit-cpu \
        --gpt_dir=out-clevr-gpt-cpu --out_dir=out-nano4m-cpu --num_scenes=300 --grid_dir=caption_rgb

caption_rgb: caption -> rgb on clevr for every family side by side: objects found (the scorecard's judge) and a
realism Frechet distance in the judge's conv features of whole images, with real, tokenizer-bound and chance rows.

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
written to out_dir/scorecard.md. A model with edges (prepare.py clevr --extras=edges) also gets rgb->edges (F1 of
the decoded edge map), edges->rgb (the judge) and the chained caption->edges->rgb beside caption->rgb.

    python eval.py --mode=sr --out_dir=out-nano4m-sr-cpu --num_scenes=300
    python eval.py --mode=transfer --out_dir=out-nano4m-cpu --finetuned=out-transfer-ft100,... --scratch=out-transfer-scratch100,...

sr: rgb_low (32x32) -> rgb_high (64x64) by MaskGIT steps vs bilinear / bicubic upsampling and the tokenizer bound:
PSNR, the F1 of Sobel edges (blur costs there what PSNR forgives) and the judge; sr.md and sr_examples.png.
transfer: a held-out modality (rgb->normals by default) learned by fine-tuning a model trained without it
(train.py --init_from) vs from scratch at the same iterations, beside the model trained on all from the start;
transfer.md and transfer.png in out_dir.
"""
import json
import os
import sys
import time

import numpy as np
import torch

from common import CheckpointError, load_model
from configurator import ConfigError, configure
from data import (DataError, TokenDecoder, clevr_pixels, dataset_dir, decode_image_tokens, decode_words, flow_images, flow_view,
                  image_view, load_meta, load_tokens, save_image_grid, save_line_plot, text_panel, vlm_images, vlm_input)
from decoding import generate_image_tokens
from judges import (accuracy, frechet_distance, judged_objects, load_classifier, load_object_judge, mean_pairwise_distance,
                    predict, score, train_classifier)

# -----------------------------------------------------------------------------
mode = 'fashion_mnist'      # fashion_mnist | flow (the same) | classifier (its judge) | 4m, scorecard, vqa, sr, transfer (clevr)
dataset = 'fashion_mnist'
maskgit_dir = ''            # out_dir of a maskgit run ('' skips its rows)
gpt_dir = ''                # out_dir of a gpt run on the same data
flow_dir = ''               # out_dir of a flow run on the same data
flow_steps = (1, 2, 4, 8, 16, 32)  # flow: sampling steps of its rows
flow_cfg = (1.0, 2.0, 3.0)  # flow: CFG scales of its rows (each steps value at each scale)
flow_method = 'euler'       # flow: 'euler' | 'heun'
ckpt = 'ckpt'
per_class = 50              # generated images per class for the table
maskgit_steps = (4, 8, 12, 16)
roar_steps = 8
temperature = 1.0
choice_temperature = 4.5
cfg_scale = 2.0             # the guided columns; 1.0 is the plain conditional model
classifier_epochs = 5
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
grid_dir = ''               # --mode=caption_rgb: write a picture grid per row here
vlm_dir = ''                # --mode=vqa: the vlm run(s) to score, comma-separated (the first gets the picture)
blind_dir = ''              # --mode=vqa: the same language model trained on the questions alone (vision='none')
sr_steps = (1, 2, 4, 8, 16) # --mode=sr: MaskGIT steps of the 4M rows (out_dir: the super-resolution run)
finetuned = ''              # --mode=transfer: comma-separated runs fine-tuned with --init_from (out_dir: the full run)
scratch = ''                # --mode=transfer: comma-separated runs of the same lengths from scratch
direction = 'rgb->normals'  # --mode=transfer: the direction into the held-out modality
seed = 1337
device = 'cpu'
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------


def fashion_mnist_table():
    meta = load_meta(dataset)
    d = dataset_dir(dataset)
    clf = load_classifier(dataset, classifier_epochs)
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
            tokens = generate_image_tokens(model, labels.to(device), image_view(meta), temperature=temperature,
                                           choice_temperature=choice_temperature, cfg_scale=scale, generator=gen, **kw)
            dt = time.perf_counter() - t0
            s = score(clf, decode_image_tokens(dataset, tokens), labels, real_feats, real_div)
            rows.append((name, scale, s, len(labels) / dt))
            print(f"  {name:<40} cfg {scale:<4} fidelity {s['fidelity'] * 100:5.1f}%  FD {s['fd']:8.2f}  "
                  f"diversity {s['diversity']:.2f}  {len(labels) / dt:8.1f} images/s", flush=True)
    if flow_dir:  # pixels straight out of the model: no tokenizer between it and the judge
        model, checkpoint = load_model(flow_dir, ckpt, device)
        if model.config.model_type != 'flow':
            raise DataError(f"--flow_dir={flow_dir} holds a {model.config.model_type} model, not a flow model")
        view = flow_view(checkpoint.get('data_meta') or meta)
        for steps in flow_steps:
            for scale in flow_cfg:
                gen = torch.Generator().manual_seed(seed)
                t0 = time.perf_counter()
                x = model.generate(labels.to(device), steps, flow_method, scale, gen)
                dt = time.perf_counter() - t0
                s = score(clf, flow_images(dataset, view, x), labels, real_feats, real_div)
                name = f'flow, {flow_method} {steps}'
                rows.append((name, scale, s, len(labels) / dt))
                print(f"  {name:<40} cfg {scale:<4} fidelity {s['fidelity'] * 100:5.1f}%  FD {s['fd']:8.2f}  "
                      f"diversity {s['diversity']:.2f}  {len(labels) / dt:8.1f} images/s", flush=True)
    print()
    print("| scheme | CFG scale | fidelity | FD (classifier features) | diversity | images/s |")
    print("|---|---|---|---|---|---|")
    for name, scale, s, ips in rows:
        print(f"| {name} | {scale} | {s['fidelity'] * 100:.1f}% | {s['fd']:.2f} | {s['diversity']:.2f} | "
              f"{'' if ips is None else f'{ips:.1f}'} |")


def caption_to_rgb_table(n=300, num_reference=2000, steps=8, flow_steps=16, scales=(1.0, 3.0), grid_dir=''):
    """caption -> rgb on clevr, every family side by side on the first n val scenes: flow models (--flow_dir,
    comma-separated: latent or pixel space), the caption-conditioned MaskGIT (--maskgit_dir) and GPT (--gpt_dir), and
    the 4M (--out_dir), each without guidance and at the other CFG scales, next to real images, the tokenizer bound
    and another scene's image (the chance floor). Two figures per row: objects found (the scorecard's judge: right
    colour and shape where the scene has them) and a realism Frechet distance (the judge's conv features of the
    whole image against num_reference train-split renders), which blotchy pictures cannot pass. With grid_dir,
    one PNG per row (8 scenes, real first)."""
    import clevr
    dirs = [('flow', d) for d in flow_dir.split(',') if d] + [('maskgit', maskgit_dir), ('gpt', gpt_dir), ('4m', out_dir)]
    dirs = [(kind, d) for kind, d in dirs if d]
    if not dirs:
        raise DataError("--mode=caption_rgb needs at least one of --flow_dir, --maskgit_dir, --gpt_dir, --out_dir")
    models = [(kind, d, *load_model(d, ckpt, device)) for kind, d in dirs]
    data_name = models[0][3]['config']['dataset']
    meta = load_meta(data_name)
    for kind, d, model, checkpoint in models:
        if checkpoint['config']['dataset'] != data_name or model.config.model_type != kind:
            raise DataError(f"{d} holds a {model.config.model_type} model on {checkpoint['config']['dataset']!r}; "
                            f"expected a {kind} model on {data_name!r}")
    truth = render_val_truth(data_name, n)
    judge = load_object_judge(os.path.join(dataset_dir(data_name), 'object_judge.pt'), seed)
    objects = judged_objects(truth['visible'])
    reference = judge.scene_features(clevr.render_scenes(num_reference, seed=clevr.SPLIT_SEEDS['train'],
                                                         resolution=meta.get('resolution', 64), modalities=('rgb',))['rgb'])
    view = image_view(meta, 'rgb', 'caption')
    val = load_tokens(data_name, 'val')
    cond = torch.from_numpy(val['caption'][:n]).long().to(device)
    rows = []

    def add(name, images, scale='', images_per_s=None, source=''):
        found = float(np.mean(judge.found(images, objects)))
        fd = frechet_distance(judge.scene_features(images), reference)
        rows.append((f'{name} ({source})' if source else name, scale, found, fd, images_per_s))
        print(f"  {rows[-1][0]:<60} {scale!s:<4} objects found {found:.3f}  realism FD {fd:8.3f}"
              + ('' if images_per_s is None else f"  {images_per_s:7.1f} images/s"), flush=True)
        if grid_dir:
            picture = np.asarray(images[:8])
            pictures.append(picture if picture.dtype == np.uint8 else (picture * 255).round().astype(np.uint8))
            slug = ''.join(c if c.isalnum() else '_' for c in f"{name}_cfg{scale}")
            save_image_grid(os.path.join(grid_dir, f"{len(rows):02d}_{slug}.png"),
                            np.concatenate([pictures[0], pictures[-1]]), per_row=8)
    pictures = []
    add('real val images', truth['rgb'])
    add('val tokens decoded (tokenizer bound)', decode_image_tokens(data_name, val['rgb'][:n], view))
    add("another scene's image (chance)", np.roll(truth['rgb'], 1, 0))
    for kind, d, model, checkpoint in models:
        for scale in scales:
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            if kind == 'flow':
                fview = flow_view(meta, 'rgb', 'caption', checkpoint['config'].get('flow_space', 'latent'))
                x = model.generate(cond, flow_steps, flow_method, scale, gen)
                dt = time.perf_counter() - t0
                images, name = flow_images(data_name, fview, x), f"flow ({fview['space']}), {flow_method} {flow_steps}"
            elif kind == '4m':
                tokens = generate_batched(model, {'caption': val['caption'][:n]}, 'rgb', scheme='maskgit', steps=steps,
                                          temperature=temperature, cfg_scale=scale, generator=gen)
                dt = time.perf_counter() - t0
                images, name = decode_image_tokens(data_name, tokens, view), f'4M, MaskGIT {steps}'
            else:
                kw = dict(steps=steps, scheme='maskgit') if kind == 'maskgit' else dict()
                tokens = generate_image_tokens(model, cond, view, temperature=temperature, cfg_scale=scale,
                                               choice_temperature=choice_temperature, generator=gen, **kw)
                dt = time.perf_counter() - t0
                images, name = decode_image_tokens(data_name, tokens, view), (f'MaskGIT T={steps}' if kind == 'maskgit'
                                                                             else 'GPT (AR, KV cache)')
            add(name, images, scale, n / dt, source=d)
    if grid_dir:  # every row in one picture: scenes 0-7 across, one row per table row, in the table's order
        print(f"picture grids in {grid_dir}/, all rows: "
              f"{save_image_grid(os.path.join(grid_dir, 'all.png'), np.concatenate(pictures), per_row=8)}")
    print(f"\n| caption -> rgb, {n} val scenes | CFG | objects with right colour + shape in place | realism FD "
          f"(vs {num_reference} train renders) | images/s |\n|---|---|---|---|---|")
    for name, scale, found, fd, ips in rows:
        print(f"| {name} | {scale} | {found:.3f} | {fd:.2f} | {'' if ips is None else f'{ips:.1f}'} |")


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


def render_val_truth(dataset, n):
    """Ground truth of val scenes 0..n-1, rendered again (scene i of a split is a pure function of its seed), checked
    against the prepared caption tokens so a mismatched dataset is caught."""
    import clevr
    meta = load_meta(dataset)
    truth = clevr.render_scenes(n, seed=clevr.SPLIT_SEEDS['val'], resolution=meta.get('resolution', 64),
                                modalities=('rgb', 'depth', 'depth_valid', 'normals', 'semseg', 'edges', 'caption'))
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
    from tokenizer import depth_abs_rel, depth_delta1, edge_f1, miou, normals_angular_error
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
    if target == 'edges':  # the edges tokenizer decodes to a 1-channel map: an edge where it is above 0.5
        return {'edge F1 (higher)': edge_f1(decoder.decode('edges', tokens)[..., 0], truth['edges'][:n])}
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
        found = judge.found(images, objects)
        return {'objects with right colour + shape in place (higher)': float(np.mean(found))}
    raise ValueError(f"no scorecard metric for target {target!r}")


SCORECARD_DIRECTIONS = ('rgb->depth', 'rgb->normals', 'rgb->semseg', 'rgb->caption', 'caption->rgb', 'rgb->boxes',
                        'rgb->edges', 'edges->rgb')


def scorecard(model_dir, specialist_dirs=(), random_dir='', num_scenes=1000, cfg_scales=(1.0, 3.0), steps=8,
              temperature=1.0, seed=1337, log=print):
    """Every direction of SCORECARD_DIRECTIONS the model knows, on the first num_scenes val scenes. Returns
    (rows, notes): rows of (direction, metric, 4M, prior or chance, tokenizer bound, specialist or None).

    The prior or chance column is what a model that ignores its input gets: for a dense target (depth, normals,
    semseg) the per-position prior of the train split (the most common token of each cell; depth its median bin),
    for caption, boxes and rgb the true tokens of another val scene (the next one)."""
    model, checkpoint = load_model(model_dir)
    dataset, meta = checkpoint['config']['dataset'], checkpoint['data_meta']
    val, train = load_tokens(dataset, 'val'), load_tokens(dataset, 'train')
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
        judge = load_object_judge(os.path.join(dataset_dir(dataset), 'object_judge.pt'), seed, log)  # once per dataset
        objects = judged_objects(truth['visible'])
        real = judge.found(truth['rgb'], objects)
        other = judge.found(np.roll(truth['rgb'], 1, 0), objects)
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
        if target in ('depth', 'normals', 'semseg'):
            prior = np.tile(per_position_prior(train[target], spec['vocab_size'], median=target == 'depth'), (n, 1))
        else:
            prior = np.roll(val[target][:n], 1, axis=0)
        scored = {'4M': score_direction(direction, predict(model), truth, spec, decoder, judge, n),
                  'prior': score_direction(direction, prior, truth, spec, decoder, judge, n),
                  'bound': score_direction(direction, val[target][:n], truth, spec, decoder, judge, n)}
        if direction in specialists:
            scored['specialist'] = score_direction(direction, predict(specialists[direction]), truth, spec, decoder, judge, n)
        for metric in scored['4M']:
            rows.append((direction, metric, scored['4M'][metric], scored['prior'][metric], scored['bound'][metric],
                         scored['specialist'][metric] if 'specialist' in scored else None))
        if direction == 'caption->rgb':  # classifier-free guidance on caption -> rgb
            for cfg in cfg_scales:
                if cfg != 1.0:
                    s = score_direction(direction, predict(model, cfg), truth, spec, decoder, judge, n)
                    rows.append((f'{direction}, CFG scale {cfg:g}', metric, s[metric], None, None, None))
        if target == 'caption' and random_dir:  # random-token vs span masking of the caption
            other, _ = load_model(random_dir)
            s = score_direction(direction, predict(other), truth, spec, decoder, judge, n)
            which = 'span' if model.is_ar[model.modality_id('caption')] else 'random-token'
            other_kind = 'span' if other.is_ar[other.modality_id('caption')] else 'random-token'
            notes.append(f"rgb->caption: the 4M column is {which} masking; the {other_kind}-masking row is {random_dir}")
            for metric in s:
                rows.append((f'{direction}, {other_kind} masking', metric, s[metric], None, None, None))
        log(f"  {direction}: {time.time() - t0:.1f}s")
    if {'caption', 'edges', 'rgb'} <= set(model.names):  # 4M's chained generation: caption -> edges, then both -> rgb
        g = torch.Generator().manual_seed(seed)
        edges = generate_batched(model, {'caption': val['caption'][:n]}, 'edges', scheme='maskgit', steps=steps,
                                 temperature=temperature, generator=g)
        images = generate_batched(model, {'caption': val['caption'][:n], 'edges': edges}, 'rgb', scheme='maskgit',
                                  steps=steps, temperature=temperature, generator=g)
        for metric, v in score_direction('caption->rgb', images, truth, meta['modalities']['rgb'], decoder, judge, n).items():
            rows.append(('caption->edges->rgb (chained)', metric, v, None, None, None))
    notes.append(f"{n} val scenes; 4M = {model_dir}; images one pass (depth: median bin), sequences greedy "
                 f"({'autoregressive' if model.is_ar.any() else f'MaskGIT {steps} steps'}), caption->rgb MaskGIT "
                 f"{steps} steps at temperature {temperature:g} (the 4M and specialist columns without guidance)")
    return rows, notes


def scorecard_markdown(rows, notes):
    """The scorecard as a markdown table (plus notes), the way eval.py prints and writes it."""
    fmt = lambda v: '' if v is None else f'{v:.3f}'
    lines = ['| direction | metric | 4M | prior / chance | beats it | tokenizer bound | specialist | specialist - 4M |',
             '|---|---|---|---|---|---|---|---|']
    for direction, metric, model, prior, bound, specialist in rows:
        gap = '' if specialist is None else f'{specialist - model:+.3f}'
        beats = '' if prior is None else ('yes' if (model < prior if '(lower)' in metric else model > prior) else 'NO')
        lines.append(f'| {direction} | {metric} | {fmt(model)} | {fmt(prior)} | {beats} | {fmt(bound)} | '
                     f'{fmt(specialist)} | {gap} |')
    return '\n'.join(lines + [''] + [f'- {note}' for note in notes]) + '\n'

# -----------------------------------------------------------------------------
# visual question answering (vlm)

def vlm_answers(model_dir, dataset, questions, scenes, batch_size=500):
    """A vlm run's greedy answers (answer words) to the val questions (N, L) about val scenes (N,)."""
    model, checkpoint = load_model(model_dir, ckpt, device)
    if checkpoint['config']['dataset'] != dataset:
        raise DataError(f"{model_dir} was trained on {checkpoint['config']['dataset']!r}, not {dataset!r}")
    meta = checkpoint['data_meta']
    words, vision = meta['vqa']['words'], model.config.vision
    images = None if vision == 'none' else vlm_images(dataset, 'val', meta, vision)
    out = []
    for i in range(0, len(questions), batch_size):
        q = torch.from_numpy(questions[i:i + batch_size]).long().to(device)
        image = None if images is None else vlm_input(images[scenes[i:i + batch_size]]).to(device)
        ids = model.answer(q, image, pad=words.index('<pad>'), eos=words.index('<eos>'))
        out += [words[a] for a in ids[:, 0].tolist()]
    return out, checkpoint


def vqa_table(dataset, vlm_dir, blind_dir='', fourm_dir='', n_pictures=12, seed=1337):
    """Per-family accuracy on every val question of clevr: the vlm, the blind model, the majority answer of each
    family (from the train split), the 4M model answering through its chain (rgb -> caption greedily, then the
    question's program run on the objects the caption names; the family's majority answer where a reference in it
    picks no object or several) and the same program on the true caption (the most a caption can tell: positions
    in it are only left-to-right order and front/middle/back)."""
    import clevr
    meta = load_meta(dataset)
    if 'vqa' not in meta:
        raise DataError(f"dataset {dataset!r} has no questions: rebuild it with `python prepare.py clevr`")
    d = dataset_dir(dataset)
    with open(os.path.join(d, 'val', 'questions.json')) as f:
        val = json.load(f)
    families = meta['vqa']['families']
    questions = np.load(os.path.join(d, 'val', 'questions.npy')).astype(np.int64)
    scenes = np.load(os.path.join(d, 'val', 'question_scene.npy')).astype(np.int64)
    truth = [q['answer'] for q in val]
    family = [q['family'] for q in val]
    rows, notes = {}, []

    train_answers = np.load(os.path.join(d, 'train', 'answers.npy'))
    train_family = np.load(os.path.join(d, 'train', 'question_family.npy'))
    words = meta['vqa']['words']
    majority = {f: words[np.bincount(train_answers[train_family == k]).argmax()] for k, f in enumerate(families)}
    rows['majority answer per family (train)'] = [majority[f] for f in family]

    def program_answers(caption_of_scene):
        # each question's program run on the objects a caption names; where a reference picks no object or
        # several, the program has no answer and the family's majority answer stands in for it
        answers = [clevr.execute(q['program'], clevr.objects_from_caption(caption_of_scene[q['scene']])) for q in val]
        unanswered = sum(a is None for a in answers)
        return [majority[f] if a is None else a for a, f in zip(answers, family)], unanswered

    captions = [clevr.decode_caption(c) for c in load_tokens(dataset, 'val')['caption']]
    answers, unanswered = program_answers(captions)
    rows['program on the true caption (bound of the 4M chain)'] = answers
    notes.append(f"program on the true caption: {unanswered:,} questions without a unique referent in it "
                 f"({100 * unanswered / len(val):.1f}%, answered with the family's majority)")
    if fourm_dir:
        model, checkpoint = load_model(fourm_dir, ckpt, device)
        spec = checkpoint['data_meta']['modalities']['caption']
        needed = sorted(set(scenes.tolist()))
        rgb = load_tokens(dataset, 'val')['rgb']
        t0 = time.time()
        tokens = sequence_tokens(model, {'rgb': rgb[needed]}, 'caption', seed, scorecard_steps)
        generated = dict(zip(needed, (decode_words(spec, t) for t in tokens)))
        answers, unanswered = program_answers(generated)
        rows[f'4M chain: rgb -> caption -> program ({fourm_dir})'] = answers
        notes.append(f"4M chain: {len(needed)} captions in {time.time() - t0:.0f}s, {checkpoint['iter_num']} "
                     f"iterations of {fourm_dir}; {unanswered:,} questions without a unique referent in the generated "
                     f"caption ({100 * unanswered / len(val):.1f}%, answered with the family's majority)")
    vlm_dirs = [r for r in vlm_dir.split(',') if r]
    for name, run in [('blind', blind_dir)] + [('vlm', r) for r in vlm_dirs]:
        if run:
            t0 = time.time()
            answers, checkpoint = vlm_answers(run, dataset, questions, scenes)
            rows[f"{name}: {run} ({checkpoint['model_config']['vision']}, {checkpoint['iter_num']} iterations)"] = answers
            notes.append(f"{name}: {len(answers)} answers in {time.time() - t0:.1f}s")

    header = f"| {len(val):,} val questions | " + ' | '.join(families) + " | overall |"
    lines = [header, '|' + '---|' * (len(families) + 2)]
    counts = {f: family.count(f) for f in families}
    results = {}
    for name, answers in rows.items():
        right = [a == t for a, t in zip(answers, truth)]
        per = {f: float(np.mean([r for r, g in zip(right, family) if g == f])) for f in families}
        results[name] = {**per, 'overall': float(np.mean(right))}
        lines.append(f"| {name} | " + ' | '.join(f"{100 * per[f]:.1f}" for f in families) + f" | {100 * np.mean(right):.1f} |")
    lines.append('| questions | ' + ' | '.join(f"{counts[f]:,}" for f in families) + f" | {len(val):,} |")

    # what the families hide: which attribute a query asks for, and whether a question needs a spatial relation
    def has_relation(node):
        if isinstance(node, dict):
            return node.get('relate') is not None or any(has_relation(v) for v in node.values())
        return isinstance(node, list) and any(has_relation(v) for v in node)
    groups = {f"query {a}": [q['family'] == 'query_attribute' and q['program']['attribute'] == a for q in val]
              for a in ('size', 'colour', 'material', 'shape')}
    relational = [has_relation(q['program']) for q in val]
    groups['with a relation'] = relational
    groups['without'] = [not r for r in relational]
    lines += ['', f"| by kind | " + ' | '.join(groups) + " |", '|' + '---|' * (len(groups) + 1)]
    for name, answers in rows.items():
        right = np.array([a == t for a, t in zip(answers, truth)])
        per = {g: float(right[np.array(m)].mean()) if any(m) else float('nan') for g, m in groups.items()}
        results[name].update(per)
        lines.append(f"| {name} | " + ' | '.join(f"{100 * v:.1f}" for v in per.values()) + " |")
    lines.append('| questions | ' + ' | '.join(f"{sum(m):,}" for m in groups.values()) + " |")
    table_md = '\n'.join(lines) + '\n\n' + '\n'.join(f"- {n}" for n in notes) + '\n'
    print(table_md)

    if vlm_dirs and n_pictures:  # val scenes, each with one question, the vlm's answer and the truth
        answers = rows[[k for k in rows if k.startswith('vlm')][0]]
        picks, seen = [], set()
        for i, q in enumerate(val):
            if q['scene'] not in seen and families.index(q['family']) == len(picks) % len(families):
                picks.append(i)
                seen.add(q['scene'])
            if len(picks) == n_pictures:
                break
        pixels = clevr_pixels(dataset, 'val', meta['val_scenes'], meta['resolution'])
        from PIL import Image
        panels = []
        for i in picks:
            scene = np.asarray(Image.fromarray(pixels[val[i]['scene']]).resize((192, 192), Image.NEAREST))
            mark = 'right' if answers[i] == truth[i] else 'WRONG'
            words_panel = text_panel(f"{val[i]['text']} model: {answers[i]} ({mark}) true: {truth[i]}", 192, 72)
            panels.append(np.concatenate([scene, words_panel], 0))
        path = os.path.join(vlm_dirs[0], 'vqa_examples.png')
        save_image_grid(path, np.stack(panels), per_row=6, scale=1)
        print(f"wrote {path}")
    path = os.path.join(vlm_dirs[0] if vlm_dirs else '.', 'vqa.md')
    with open(path, 'w') as f:
        f.write(table_md)
    return results


# -----------------------------------------------------------------------------
# 4M extensions: super-resolution and transfer to a held-out modality

def image_scores(images, truth_rgb, truth_edges, judge, objects):
    """Generated or upsampled (N, 64, 64, 3) images in [0, 1] against the renders: PSNR, the edge F1 of their Sobel
    edges (blur loses edges, so it costs here what PSNR forgives) and the object judge's share of objects found."""
    from clevr import sobel_edges
    from tokenizer import edge_f1, psnr
    images = np.asarray(images, dtype=np.float32)
    return {'PSNR dB': psnr(images, truth_rgb / 255.0),
            'edge F1': edge_f1(sobel_edges((images * 255).round().clip(0, 255).astype(np.uint8)), truth_edges),
            'objects found': float(np.mean(judge.found(images, objects)))}


def super_resolution_table(model_dir, num_scenes=300, steps_list=(1, 2, 4, 8, 16), temperature=1.0, seed=1337,
                           low='rgb_low', high='rgb_high', n_pictures=6):
    """rgb_low (32x32 pixels, 8x8 tokens) -> rgb_high (64x64, 16x16 tokens) by a 4M, against upsampling the low
    decode (bilinear, bicubic), the high tokenizer's bound and the truth; MaskGIT steps vs quality. Writes
    sr.md and sr_examples.png into model_dir."""
    import torch.nn.functional as F
    model, checkpoint = load_model(model_dir)
    dataset, meta = checkpoint['config']['dataset'], checkpoint['data_meta']
    for name in (low, high):
        if name not in model.names:
            raise DataError(f"{model_dir} has no {name!r} modality: train config/nano4m_sr_cpu.py (its data comes "
                            f"from python prepare.py clevr --extras=sr)")
    val = load_tokens(dataset, 'val')
    n = min(num_scenes, len(val[high]))
    truth = render_val_truth(dataset, n)
    objects = judged_objects(truth['visible'])
    judge = load_object_judge(os.path.join(dataset_dir(dataset), 'object_judge.pt'), seed)
    decoder = TokenDecoder(dataset, meta)
    low_images = torch.from_numpy(decoder.decode(low, val[low][:n])).permute(0, 3, 1, 2)  # (n, 3, 32, 32)
    size = truth['rgb'].shape[1]
    up = lambda x, how: F.interpolate(x, size=(size, size), mode=how, **({} if how == 'nearest' else {'align_corners': False}))
    truth_low = torch.from_numpy(truth['rgb'].astype(np.float32) / 255).permute(0, 3, 1, 2)
    truth_low = F.avg_pool2d(truth_low, size // low_images.shape[-1])
    rows, pictures = {}, {}

    def add(name, images, seconds=None):
        images = images.permute(0, 2, 3, 1).clamp(0, 1).numpy() if torch.is_tensor(images) else images
        rows[name] = dict(image_scores(images, truth['rgb'], truth['edges'], judge, objects),
                          **({'s per image': seconds / n} if seconds is not None else {}))
        pictures[name] = images[:n_pictures]
    pictures['low decode'] = up(low_images, 'nearest').permute(0, 2, 3, 1).numpy()[:n_pictures]
    add('low decode, bilinear', up(low_images, 'bilinear'))
    add('low decode, bicubic', up(low_images, 'bicubic'))
    add('true 32x32, bicubic (best upsampling of a perfect low image)', up(truth_low, 'bicubic'))
    t0 = time.time()
    add('4M one pass, argmax', decoder.decode(high, predict_from(model, {low: val[low][:n]}, high)), time.time() - t0)
    for steps in steps_list:
        t0 = time.time()
        tokens = generate_batched(model, {low: val[low][:n]}, high, scheme='maskgit', steps=steps,
                                  temperature=temperature, generator=torch.Generator().manual_seed(seed))
        add(f'4M MaskGIT {steps} steps', decoder.decode(high, tokens), time.time() - t0)
    add(f'{high} tokenizer bound (true tokens)', decoder.decode(high, val[high][:n]))
    add('truth (the renders)', truth['rgb'].astype(np.float32) / 255)

    metrics = list(next(iter(rows.values())))
    lines = ['| rgb 32x32 -> 64x64 | ' + ' | '.join(metrics) + ' |', '|---' * (len(metrics) + 1) + '|']
    for name, r in rows.items():
        lines.append(f'| {name} | ' + ' | '.join(f'{r[m]:.3f}' if m in r else '' for m in metrics) + ' |')
    notes = [f"{n} val scenes; 4M = {model_dir} ({checkpoint['iter_num']} iterations); MaskGIT at temperature "
             f"{temperature:g}, cosine schedule; edge F1 = Sobel edges of the output vs of the render; objects found = "
             f"the scorecard's object judge (colour + shape in place)"]
    table_md = '\n'.join(lines) + '\n\n' + '\n'.join(f'- {x}' for x in notes) + '\n'
    print(table_md)
    with open(os.path.join(model_dir, 'sr.md'), 'w') as f:
        f.write(table_md)
    columns = ['low decode', 'low decode, bicubic', f'4M MaskGIT {steps_list[-2] if len(steps_list) > 1 else steps_list[0]} steps',
               f'{high} tokenizer bound (true tokens)', 'truth (the renders)']
    labels = ['8x8 tokens', 'bicubic', '4M', '16x16 bound', 'truth']
    panels = [text_panel(label, size, 16) for label in labels]
    for i in range(min(n_pictures, n)):
        panels += [(pictures[c][i] * 255).round().clip(0, 255).astype(np.uint8) for c in columns]
    path = save_image_grid(os.path.join(model_dir, 'sr_examples.png'), np.stack(
        [np.pad(p, ((0, size - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels]), per_row=len(columns))
    print(f"wrote {path}")
    return rows


def transfer_table(full_dir, finetuned, scratch, direction='rgb->normals', num_scenes=500, seed=1337):
    """A modality held out of pretraining, then learned: `direction`'s metric of each fine-tuned run (trained from
    a 4M without the target modality, train.py --init_from) and each scratch run, against their training
    iterations, beside the model trained on everything from the start (full_dir). Writes transfer.md and
    transfer.png into full_dir."""
    source, target = direction.split('->')
    model, checkpoint = load_model(full_dir)
    dataset, meta = checkpoint['config']['dataset'], checkpoint['data_meta']
    val, train = load_tokens(dataset, 'val'), load_tokens(dataset, 'train')
    n = min(num_scenes, len(val[target]))
    truth = render_val_truth(dataset, n)
    decoder, spec = TokenDecoder(dataset, meta), meta['modalities'][target]

    def score(m):
        tokens = predict_from(m, {source: val[source][:n]}, target, ordered=target == 'depth')
        return score_direction(direction, tokens, truth, spec, decoder, None, n)
    metric = None
    results = {'fine-tuned': [], 'from scratch': []}
    for group, dirs in (('fine-tuned', finetuned), ('from scratch', scratch)):
        for d in dirs:
            m, ck = load_model(d)
            s = score(m)
            metric = next(iter(s))
            results[group].append((ck['iter_num'], s[metric], ck['config'].get('init_from', 'scratch')))
    full = score(model)
    metric = metric or next(iter(full))
    prior = score_direction(direction, np.tile(per_position_prior(train[target], spec['vocab_size'], median=target == 'depth'), (n, 1)),
                            truth, spec, decoder, None, n)[metric]
    bound = score_direction(direction, val[target][:n], truth, spec, decoder, None, n)[metric]
    budgets = sorted({it for g in results.values() for it, _, _ in g})
    lines = [f'| {direction}: {metric} | ' + ' | '.join(f'{b} iterations' for b in budgets) + ' |',
             '|---' * (len(budgets) + 1) + '|']
    for group, got in results.items():
        by = {it: v for it, v, _ in got}
        lines.append(f'| {group} | ' + ' | '.join(f'{by[b]:.3f}' if b in by else '' for b in budgets) + ' |')
    lines += ['', f"| reference | {metric} |", '|---|---|',
              f"| all modalities from the start, {checkpoint['iter_num']} iterations ({full_dir}) | {full[metric]:.3f} |",
              f"| per-position prior of the train split | {prior:.3f} |", f"| tokenizer bound (true tokens) | {bound:.3f} |"]
    sources = sorted({src for g in results.values() for _, _, src in g} - {'scratch'})
    notes = [f"{n} val scenes; fine-tuned from {', '.join(sources) or '-'} (pretrained without {target})"]
    table_md = '\n'.join(lines) + '\n\n' + '\n'.join(f'- {x}' for x in notes) + '\n'
    print(table_md)
    with open(os.path.join(full_dir, 'transfer.md'), 'w') as f:
        f.write(table_md)
    series = {g: ([it for it, _, _ in sorted(got)], [v for _, v, _ in sorted(got)]) for g, got in results.items() if got}
    series[f'all from start ({checkpoint["iter_num"]} it)'] = ([budgets[0] if budgets else 1], [full[metric]])
    series['prior'] = ([budgets[0] if budgets else 1], [prior])
    series['tokenizer bound'] = ([budgets[0] if budgets else 1], [bound])
    path = save_line_plot(os.path.join(full_dir, 'transfer.png'), series, 'training iterations on data with ' + target,
                          metric, title=f'{direction}: transfer vs scratch')
    print(f"wrote {path}")
    return results

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
        elif mode in ('fashion_mnist', 'flow'):
            fashion_mnist_table()
        elif mode == 'caption_rgb':
            caption_to_rgb_table(min(num_scenes, 1000), grid_dir=grid_dir)
        elif mode == '4m':
            model, checkpoint = load_model(out_dir, ckpt, 'cpu')
            results = fourm_any_to_any_from_rgb(model, checkpoint['config']['dataset'], num_scenes)
            print_fourm_table(results)
            if json_out:
                with open(json_out, 'w') as f:
                    json.dump(results, f, indent=1)
        elif mode == 'vqa':
            results = vqa_table('clevr' if dataset == 'fashion_mnist' else dataset, vlm_dir, blind_dir, out_dir, seed=seed)
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
        elif mode == 'sr':
            super_resolution_table(out_dir, num_scenes, sr_steps, temperature, seed)
        elif mode == 'transfer':
            transfer_table(out_dir, [d for d in finetuned.split(',') if d], [d for d in scratch.split(',') if d],
                           direction, num_scenes, seed)
        else:
            sys.exit(f"eval.py: unknown --mode={mode!r}; choose fashion_mnist, flow, caption_rgb, classifier, 4m, "
                     f"scorecard, vqa, sr or transfer "
                     f"(sampling speed moved to bench.py --mode=speed)")
    except (DataError, CheckpointError, FileNotFoundError, KeyError, ConfigError) as e:
        sys.exit(f"eval.py: {e}")


if __name__ == '__main__':
    main()
