"""
Sample from a trained nano4M model.

    python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3 --max_new_tokens=500
    python sample.py --out_dir=... --start=FILE:prompt.txt --temperature=0.8 --top_p=0.9
    python sample.py --out_dir=... --kv_cache=False      # the slow reference path, for comparison

--mode=ar: autoregressive generation with a KV cache (gpt family).
"""
import os
import sys
import time

import torch

from configurator import ConfigError, configure
from data import DataError, load_meta, text_tokenizer
from model import ModelConfig, build_model

# -----------------------------------------------------------------------------
mode = 'ar'                 # 'ar'
init_from = 'resume'        # 'resume' (out_dir/<ckpt>.pt) or 'scratch' (an untrained model, for smoke tests)
out_dir = 'out'
ckpt = 'ckpt'               # 'ckpt' (latest) or 'best'
start = '\n'                # prompt, or FILE:path to read it from a file
num_samples = 3
max_new_tokens = 500
temperature = 0.8           # 0 is greedy; < 1 sharper, > 1 more random
top_k = 200                 # 0 disables
top_p = 1.0                 # nucleus sampling; 1.0 disables
stop = ''                   # stop a sample at this text (must be one token), e.g. '\n\n' is not one char; '' never stops
kv_cache = True
seed = 1337
device = ''                 # '' picks cuda, then mps, then cpu
dtype = 'float32'           # decoding one token at a time is launch/memory bound: bf16 weights made it ~20x
                            # slower on an H100 (torch 2.11, batch 1: 53 vs 2.5 ms/token) and gain nothing here
compile = False
# -----------------------------------------------------------------------------
_config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]


def load_model(out_dir, ckpt='ckpt', device='cpu'):
    """A checkpoint written by train.py -> (model in eval mode, checkpoint dict). Never unpickles code."""
    path = os.path.join(out_dir, f'{ckpt}.pt')
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `python train.py <config> "
                                f"--out_dir={out_dir}`, or pass the --out_dir of a finished run")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = build_model(ModelConfig.from_dict(checkpoint['model_config']))
    model.load_state_dict(checkpoint['model'])
    model.eval().to(device)
    return model, checkpoint


def main():
    try:
        configure(globals(), keys=_config_keys)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    from train import pick_device, pick_dtype
    device_name = pick_device(device)
    device_type = 'cuda' if device_name.startswith('cuda') else device_name
    torch.manual_seed(seed)
    generator = torch.Generator(device=device_name).manual_seed(seed)

    try:
        if init_from == 'resume':
            model, checkpoint = load_model(out_dir, ckpt, device_name)
            # the checkpoint carries its dataset's meta.json, so decoding never depends on data/ still matching
            meta = checkpoint.get('data_meta') or load_meta(checkpoint['config']['dataset'])
        else:
            raise SystemExit("sample.py: init_from must be 'resume' for now")
    except (FileNotFoundError, DataError) as e:
        sys.exit(f"sample.py: {e}")
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[pick_dtype(dtype, device_type)]
    model.to(ptdtype) if ptdtype != torch.float32 else None
    if compile:
        model = torch.compile(model)

    if mode != 'ar':
        sys.exit(f"sample.py: unknown --mode={mode!r}; this model supports --mode=ar")
    if meta.get('kind') != 'text':
        sys.exit(f"sample.py: --mode=ar on {meta.get('kind')} data is not supported yet")
    tok = text_tokenizer(meta)
    prompt = start
    if prompt.startswith('FILE:'):
        with open(prompt[5:], encoding='utf-8') as f:
            prompt = f.read()
    try:
        ids = tok.encode(prompt)
        stop_ids = tok.encode(stop) if stop else []
    except ValueError as e:
        sys.exit(f"sample.py: {e}")
    if len(stop_ids) > 1:
        sys.exit(f"sample.py: --stop={stop!r} is {len(stop_ids)} tokens; it must be exactly one token")
    x = torch.tensor(ids, dtype=torch.long, device=device_name)[None, :]
    with torch.no_grad():
        for k in range(num_samples):
            t0 = time.time()
            y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None,
                               top_p=top_p if top_p < 1.0 else None, stop_token=stop_ids[0] if stop_ids else None,
                               kv_cache=kv_cache, generator=generator)
            dt = time.time() - t0
            print(tok.decode(y[0].tolist()))
            print(f'--------------- ({y.size(1) - x.size(1)} tokens in {dt:.2f}s, kv_cache={kv_cache})')


if __name__ == '__main__':
    main()
