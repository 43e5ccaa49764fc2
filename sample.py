"""
Sample from a trained nano4M model.

    python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3 --max_new_tokens=500
    python sample.py --out_dir=... --start=FILE:prompt.txt --temperature=0.8 --top_p=0.9
    python sample.py --out_dir=... --kv_cache=False      # the slow reference path, for comparison

--mode=ar: autoregressive generation with a KV cache (gpt family): text, or images on an image dataset.
--mode=maskgit: iterative parallel decoding (maskgit family) of class-conditional images.
Images are decoded with the dataset's tokenizer and written as one PNG grid, one row per class:

    python sample.py --out_dir=out-fashion-mnist-maskgit-cpu --mode=maskgit --steps=8 --cfg_scale=2.0
    python sample.py --out_dir=out-fashion-mnist-maskgit-cpu --mode=maskgit --scheme=roar --return_history=True
    python sample.py --out_dir=out-fashion-mnist-gpt-cpu --mode=ar --cfg_scale=2.0
"""
import os
import sys
import time

import torch

from configurator import ConfigError, configure
from data import DataError, decode_image_tokens, load_meta, save_image_grid, text_tokenizer
from model import ModelConfig, autoregressive_decode, build_model, iterative_decode

# -----------------------------------------------------------------------------
mode = 'ar'                 # 'ar' (gpt family) | 'maskgit' (maskgit family)
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
# images (both modes): num_samples per class, one row per class
steps = 8                   # maskgit: decoding steps
scheme = 'maskgit'          # maskgit: 'maskgit' (confidence) | 'roar' (random order)
schedule = 'cosine'         # maskgit: how many tokens stay masked after each step
choice_temperature = 4.5    # maskgit: Gumbel noise on the confidence, annealed to 0 over the steps
cfg_scale = 1.0             # classifier-free guidance: 1 = plain conditional, 0 = unconditional, > 1 guided
return_history = False      # maskgit: also save the decoding process as an image strip
image_out = ''              # the PNG; '' writes out_dir/samples_<mode>.png
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


def generate_image_tokens(model, labels, meta, steps=8, scheme='maskgit', schedule='cosine', temperature=1.0,
                          top_k=None, top_p=None, choice_temperature=4.5, cfg_scale=1.0, generator=None,
                          return_history=False, kv_cache=True):
    """Class labels (B,) -> image token grids (B, L) from either family (and, for maskgit with return_history,
    the (tokens, mask) after each step). gpt: autoregressive after the class token, id codebook_size + label;
    the unconditional stream for guidance starts from the 'no class' token. maskgit: iterative decoding from a
    fully masked grid, the class as conditioning prefix ('no class' when dropped)."""
    K, num_classes = meta['codebook_size'], meta['num_classes']
    gh, gw = meta['grid']
    B, device = labels.size(0), labels.device
    if model.config.model_type == 'gpt':
        prefix = (K + labels)[:, None]
        uncond = torch.full_like(prefix, K + num_classes)
        tokens = autoregressive_decode(model, prefix, gh * gw, vocab_limit=K, temperature=temperature, top_k=top_k,
                                       top_p=top_p, cfg_scale=cfg_scale, uncond_prefix=uncond, generator=generator,
                                       kv_cache=kv_cache)
        return (tokens, []) if return_history else tokens
    cond = labels[:, None]
    null = torch.full_like(cond, num_classes)

    def predict_logits(tokens, mask, cond_dropped):
        return model(tokens, mask, null if cond_dropped else cond, compute_loss=False)[0]
    tokens = torch.zeros(B, gh * gw, dtype=torch.long, device=device)
    mask = torch.ones(B, gh * gw, dtype=torch.bool, device=device)
    out = iterative_decode(predict_logits, tokens, mask, steps, scheme, schedule, temperature, top_k, top_p,
                           choice_temperature, cfg_scale, generator, return_history)
    return (out[0], out[2]) if return_history else out[0]


def history_strip(dataset, meta, history, picks):
    """Decoding history -> images (len(picks) * steps, H, W, C): the picked samples' grids after every step,
    still-masked tokens painted grey. Rows = samples, columns = steps."""
    gh, gw = meta['grid']
    frames = []
    for r in picks:
        for tokens, mask in history:
            img = decode_image_tokens(dataset, tokens[r:r + 1].masked_fill(mask[r:r + 1], 0))[0].copy()
            ph, pw = img.shape[0] // gh, img.shape[1] // gw
            hidden = mask[r].view(gh, gw).cpu().numpy().repeat(ph, 0).repeat(pw, 1)
            img[hidden] = 128
            frames.append(img)
    return frames


def sample_images(model, dataset, meta, device_name, generator):
    """Write num_samples images per class as a PNG grid (rows = classes)."""
    import numpy as np
    num_classes = meta['num_classes']
    labels = torch.arange(num_classes, device=device_name).repeat_interleave(num_samples)
    t0 = time.time()
    tokens, history = generate_image_tokens(
        model, labels, meta, steps, scheme, schedule, temperature, top_k or None, top_p if top_p < 1.0 else None,
        choice_temperature, cfg_scale, generator, return_history=True, kv_cache=kv_cache)
    dt = time.time() - t0
    path = image_out or os.path.join(out_dir, f'samples_{mode}.png')
    save_image_grid(path, decode_image_tokens(dataset, tokens), per_row=num_samples)
    what = f"{steps} steps, scheme {scheme}" if mode == 'maskgit' else f"autoregressive, kv_cache={kv_cache}"
    print(f"{len(labels)} images ({what}, cfg_scale {cfg_scale}) in {dt:.2f}s -> {path} "
          f"(rows: {', '.join(meta.get('classes', map(str, range(num_classes))))})")
    if return_history and history:
        strip = history_strip(dataset, meta, history, picks=range(0, len(labels), num_samples))  # one per class
        hpath = path.replace('.png', '_history.png')
        save_image_grid(hpath, np.stack(strip), per_row=len(history))
        print(f"decoding history ({len(history)} steps per row) -> {hpath}")


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
            dataset = checkpoint['config']['dataset']
            meta = checkpoint.get('data_meta') or load_meta(dataset)
        else:
            raise SystemExit("sample.py: init_from must be 'resume' for now")
    except (FileNotFoundError, DataError) as e:
        sys.exit(f"sample.py: {e}")
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[pick_dtype(dtype, device_type)]
    model.to(ptdtype) if ptdtype != torch.float32 else None
    if compile:
        model = torch.compile(model)

    family = model.config.model_type if not compile else model._orig_mod.config.model_type
    modes = {'ar': ('gpt', 'lstm', 'kgram_mlp'), 'maskgit': ('maskgit',)}
    if mode not in modes:
        sys.exit(f"sample.py: unknown --mode={mode!r}; choose ar (gpt, lstm, kgram_mlp) or maskgit (maskgit family)")
    if family not in modes[mode]:
        other = [m for m, families in modes.items() if family in families]
        sys.exit(f"sample.py: --mode={mode} needs a {' or '.join(modes[mode])} model, but {out_dir} holds a {family} "
                 f"model: use --mode={other[0] if other else '?'}")
    if meta.get('kind') == 'image':
        with torch.no_grad():
            sample_images(model, dataset, meta, device_name, generator)
        return
    if meta.get('kind') != 'text':
        sys.exit(f"sample.py: --mode=ar on {meta.get('kind')} data is not supported")
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
