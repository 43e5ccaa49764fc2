"""
Sample from a trained nano4M model.

    python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3 --max_new_tokens=500
    python sample.py --out_dir=... --start=FILE:prompt.txt --temperature=0.8 --top_p=0.9
    python sample.py --out_dir=... --kv_cache=False      # the slow reference path, for comparison

--mode=ar: autoregressive generation with a KV cache (gpt family): text, or images on an image dataset.
--mode=maskgit: iterative parallel decoding (maskgit family) of class- or caption-conditional images.
Images are decoded with the dataset's tokenizer and written as one PNG grid, one row per class (or per caption:
--num_captions val scenes from --sample_idx, each row starting with the scene's own image; or --caption=TEXT):

    python sample.py --out_dir=out-fashion-mnist-maskgit-cpu --mode=maskgit --steps=8 --cfg_scale=2.0
    python sample.py --out_dir=out-fashion-mnist-maskgit-cpu --mode=maskgit --scheme=roar --return_history=True
    python sample.py --out_dir=out-fashion-mnist-gpt-cpu --mode=ar --cfg_scale=2.0
    python sample.py --out_dir=out-clevr-maskgit-cpu --mode=maskgit --sample_idx=0 --num_captions=6 --num_samples=4
    python sample.py --out_dir=out-clevr-gpt-cpu --mode=ar --caption="a large red metal cube in the middle left"

--mode=flow: Euler (or --method=heun) integration of a flow model's velocity from noise, --steps steps, with CFG;
Fashion-MNIST one row per class, clevr one row per caption (rgb latents decoded by the dataset's tokenizer):

    python sample.py --out_dir=out-flow-fashion-mnist-cpu --mode=flow --steps=16 --cfg_scale=2.0
    python sample.py --out_dir=out-flow-clevr-cpu --mode=flow --caption="a large red metal cube in the middle left"
    python sample.py --out_dir=out-flow-fashion-mnist-cpu --mode=flow --return_history=True   # the trajectory strip

--mode=vqa: a vlm model answers a question about val scene --sample_idx (or a 64x64 PNG, --image=FILE), greedily
with the KV cache; without --question it captions the scene and answers the scene's own val questions:

    python sample.py --mode=vqa --out_dir=out-vlm-clevr-cpu --sample_idx=3 --question="how many red things are left of the cube ?"
    python sample.py --mode=vqa --out_dir=out-vlm-clevr-cpu --sample_idx=3

--mode=chain: chained any-to-any generation (4m family). Each generated modality joins the inputs of the next step:

    python sample.py --mode=chain --out_dir=out-nano4m-cpu --chain="caption->semseg->depth->rgb" --sample_idx=3
    python sample.py --mode=chain --out_dir=out-nano4m-cpu --chain="caption->semseg->rgb" \
        --caption="a large red metal cube in the middle left"
    python sample.py --mode=chain --out_dir=... --chain="rgb->depth@scheme=maskgit,steps=1,temperature=0->normals"

The first element lists the condition (modalities joined by '+'), taken from val scene --sample_idx (and the
next --num_samples - 1 scenes) or, for a caption, from --caption. Every later element is one generated modality,
optionally with its own settings after '@': scheme (maskgit | roar | ar), steps, temperature, top_k, top_p,
cfg_scale; the defaults come from the flags of the same names. A sequence modality (caption, boxes) of a model
trained with seq_masking='span' is decoded autoregressively (scheme ar, KV-cached, until <eos>):

    python sample.py --mode=chain --out_dir=out-nano4m-cpu --chain="rgb->caption@temperature=0" --sample_idx=3
    python sample.py --mode=chain --out_dir=out-nano4m-cpu --chain="caption->rgb@cfg_scale=3" --caption="..."
 Writes one PNG per sample (condition, each generated modality,
and the ground truth below it for a val scene) and the generated text under out_dir/chain/.
"""
import os
import sys
import time

import numpy as np
import torch

from common import DTYPES, CheckpointError, load_model, pick_device, pick_dtype
from configurator import ConfigError, configure
from data import (DataError, TokenDecoder, dataset_dir, decode_image_tokens, decode_words, encode_words, flow_images,
                  flow_view, image_view, load_meta, load_tokens, save_image_grid, text_panel, text_tokenizer, vqa_image,
                  vqa_question)
from decoding import generate_image_tokens

# -----------------------------------------------------------------------------
mode = 'ar'                 # 'ar' (gpt, lstm, kgram_mlp) | 'maskgit' (maskgit) | 'flow' (flow) | 'chain' (4m) | 'vqa' (vlm)
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
compile = False             # refused: torch.compile is for training (train.py --compile=True); see main()
# images (both modes): num_samples per class, one row per class
steps = 8                   # maskgit and chain (per-step default): decoding steps
scheme = 'maskgit'          # maskgit and chain (per-step default): 'maskgit' (confidence) | 'roar' (random order);
                            # chain: a sequence modality of a seq_masking='span' model always uses 'ar' (autoregressive)
schedule = 'cosine'         # maskgit: how many tokens stay masked after each step
choice_temperature = 4.5    # maskgit: Gumbel noise on the confidence, annealed to 0 over the steps
cfg_scale = 1.0             # classifier-free guidance: 1 = plain conditional, 0 = unconditional, > 1 guided
                            # (chain: per-step default; the unconditional prediction has the step's inputs removed)
method = 'euler'            # flow: 'euler' | 'heun' (2nd order, two velocity evaluations per step)
return_history = False      # maskgit, flow: also save the decoding process (flow: the trajectory) as an image strip
image_out = ''              # the PNG; '' writes out_dir/samples_<mode>.png
num_captions = 4            # caption-conditioned images (clevr): rows = val scenes from --sample_idx (or --caption)
classes = ''                # class-conditioned images: comma-separated class ids or names for the rows ('' = every class)
# --mode=chain (4m)
chain = 'caption->semseg->depth->rgb'  # condition(s) '->' generated modalities, each optionally '@key=value,...'
sample_idx = 0              # first val scene to condition on (and to show as ground truth)
caption = ''                # condition on this text instead of a val scene's caption
chain_dir = ''              # where PNGs and text go; '' = out_dir/chain
# --mode=vqa (vlm): ask --question about val scene --sample_idx, or about the 64x64 PNG --image
question = ''               # '' asks the scene's own val questions (with their true answers) and captions it
image = ''                  # a PNG to ask about instead of a val scene
# -----------------------------------------------------------------------------
_config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]


def history_strip(dataset, meta, history, picks):
    """Decoding history -> images (len(picks) * steps, H, W, C): the picked samples' grids after every step,
    still-masked tokens painted grey. Rows = samples, columns = steps."""
    gh, gw = meta['grid']
    frames = []
    for r in picks:
        for tokens, mask in history:
            img = decode_image_tokens(dataset, tokens[r:r + 1].masked_fill(mask[r:r + 1], 0), meta)[0].copy()
            ph, pw = img.shape[0] // gh, img.shape[1] // gw
            hidden = mask[r].view(gh, gw).cpu().numpy().repeat(ph, 0).repeat(pw, 1)
            img[hidden] = 128
            frames.append(img)
    return frames


def image_conditions(dataset, meta, device_name):
    """The conditions of the picture's rows -> (cond (rows, cond_len), row names, ground-truth images or None).
    Class labels: every class. A multimodal set: --caption, or val scenes --sample_idx.. (their ground truth
    is shown first in each row)."""
    if 'num_classes' in meta:
        names = meta.get('classes', [str(c) for c in range(meta['num_classes'])])
        ids = list(range(meta['num_classes']))
        if classes:
            lookup = {**{str(i): i for i in ids}, **{n.lower(): i for i, n in enumerate(names)}}
            wanted = [c.strip() for c in classes.split(',') if c.strip()]
            unknown = [c for c in wanted if c.lower() not in lookup]
            if unknown or not wanted:
                raise ValueError(f"--classes={classes!r}: unknown class {', '.join(map(repr, unknown)) or '(none given)'}; "
                                 f"use ids 0..{len(ids) - 1} or names {', '.join(names)}")
            ids = [lookup[c.lower()] for c in wanted]
        return torch.tensor(ids, device=device_name)[:, None], [names[i] for i in ids], None
    spec = {'words': meta['cond_words'], 'num_tokens': meta['cond_len']}
    if caption:
        if not meta['cond_words']:
            raise ValueError(f"--caption needs a model conditioned on captions; this one is conditioned on "
                             f"{meta['cond_modality'] or 'nothing'}")
        return torch.from_numpy(encode_words(spec, caption))[None].to(device_name), [caption], None
    val = {n: np.load(os.path.join(dataset_dir(dataset), 'val', f'{n}.npy')) for n in
           (meta['image_modality'], meta['cond_modality']) if n}
    n_val = len(val[meta['image_modality']])
    if not 0 <= sample_idx <= n_val - num_captions:
        raise ValueError(f"--sample_idx={sample_idx} --num_captions={num_captions}: the val split has {n_val} scenes")
    rows = slice(sample_idx, sample_idx + num_captions)
    cond = val[meta['cond_modality']][rows] if meta['cond_modality'] else np.zeros((num_captions, 1))
    names = [decode_words(spec, c) if meta['cond_words'] else f'val {sample_idx + i}' for i, c in enumerate(cond)]
    truth = decode_image_tokens(dataset, val[meta['image_modality']][rows].astype(np.int64), meta)
    return torch.from_numpy(cond.astype(np.int64)).to(device_name), names, truth


def write_rows(images, truth, names, what, seconds):
    """num_samples generated images per condition -> one PNG row per condition (names them); for val scenes (truth
    given) each row starts with the scene's own image. Returns the PNG's path."""
    path = image_out or os.path.join(out_dir, f'samples_{mode}.png')
    count, per_row = len(images), num_samples
    if truth is not None:  # each row: the val scene's image, then the generated ones
        images = np.concatenate([truth[:, None], images.reshape(len(truth), num_samples, *images.shape[1:])], 1)
        images, per_row = images.reshape(-1, *images.shape[2:]), num_samples + 1
    save_image_grid(path, images, per_row=per_row)
    print(f"{count} images ({what}) in {seconds:.2f}s -> {path}"
          + (" (first column: the val scene's own image)" if truth is not None else '') + "; rows:")
    print('\n'.join(f'  {n}' for n in names))
    return path


def sample_images(model, dataset, meta, device_name, generator):
    """Write num_samples images per condition as a PNG grid: one row per class, or per caption (val scenes
    from --sample_idx, ground truth first, or --caption)."""
    cond, names, truth = image_conditions(dataset, meta, device_name)
    t0 = time.time()
    tokens, history = generate_image_tokens(
        model, cond.repeat_interleave(num_samples, dim=0), image_view(meta), steps, scheme, schedule, temperature, top_k or None,
        top_p if top_p < 1.0 else None, choice_temperature, cfg_scale, generator, return_history=True, kv_cache=kv_cache)
    dt = time.time() - t0
    what = f"{steps} steps, scheme {scheme}" if mode == 'maskgit' else f"autoregressive, kv_cache={kv_cache}"
    path = write_rows(decode_image_tokens(dataset, tokens, meta), truth, names, f"{what}, cfg_scale {cfg_scale}", dt)
    if return_history and history:
        strip = history_strip(dataset, meta, history, picks=range(0, len(tokens), num_samples))  # one per row
        hpath = path.replace('.png', '_history.png')
        save_image_grid(hpath, np.stack(strip), per_row=len(history))
        print(f"decoding history ({len(history)} steps per row) -> {hpath}")


def sample_flow(model, dataset, meta, device_name, generator):
    """Write num_samples flow samples per condition as a PNG grid (rows as sample_images), and with
    --return_history the trajectory: x after every step, one row per condition."""
    if steps < 1:
        raise ValueError(f"--steps={steps}: flow sampling needs at least one step")
    if method not in ('euler', 'heun'):
        raise ValueError(f"--method={method!r}: choose euler or heun")
    cond, names, truth = image_conditions(dataset, meta, device_name)
    if truth is None and 'num_classes' not in meta:  # a caption: the tokenizer decodes, so check it is there
        flow_images(dataset, meta, torch.zeros(1, meta['in_channels'], meta['image_size'], meta['image_size']))
    t0 = time.time()
    x, history = model.generate(cond.repeat_interleave(num_samples, dim=0), steps, method, cfg_scale, generator,
                                return_history=True)
    dt = time.time() - t0
    path = write_rows(flow_images(dataset, meta, x), truth, names, f"{method}, {steps} steps, cfg_scale {cfg_scale}", dt)
    if return_history:
        picks = list(range(0, len(x), num_samples))  # the first sample of each row
        strip = np.stack([flow_images(dataset, meta, h[picks]) for h in history], 1)  # (rows, steps + 1, H, W, C)
        hpath = path.replace('.png', '_history.png')
        save_image_grid(hpath, strip.reshape(-1, *strip.shape[2:]), per_row=len(history))
        print(f"trajectory (noise, then x after each of {steps} steps, per row) -> {hpath}")


def main():
    try:
        configure(globals(), keys=_config_keys)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if compile:  # generation runs a changing sequence length every step: compiling recompiles, and the
        # compiled wrapper hides model.generate/config/modality_id; training is where compile pays off
        sys.exit("sample.py: --compile=True is for training (train.py --compile=True); sampling runs uncompiled, "
                 "drop --compile")
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
            if checkpoint['model_config']['model_type'] in ('gpt', 'maskgit', 'flow') and meta.get('kind') in ('image', 'multimodal'):
                cfg = checkpoint['config']
                if checkpoint['model_config']['model_type'] == 'flow':
                    meta = flow_view(meta, cfg.get('image_modality', 'rgb'), cfg.get('cond_modality', 'caption'),
                                     cfg.get('flow_space', 'latent'))
                else:
                    meta = image_view(meta, cfg.get('image_modality', 'rgb'), cfg.get('cond_modality', 'caption'))
        else:
            raise SystemExit("sample.py: init_from must be 'resume' for now")
    except (CheckpointError, DataError) as e:
        sys.exit(f"sample.py: {e}")
    ptdtype = DTYPES[pick_dtype(dtype, device_type)]
    model.to(ptdtype) if ptdtype != torch.float32 else None

    family = model.config.model_type
    modes = {'ar': ('gpt', 'lstm', 'kgram_mlp'), 'maskgit': ('maskgit',), 'flow': ('flow',), 'chain': ('4m',),
             'vqa': ('vlm',)}
    if mode not in modes:
        sys.exit(f"sample.py: unknown --mode={mode!r}; choose ar (gpt, lstm, kgram_mlp), maskgit (maskgit), flow (flow), "
                 f"chain (4m) or vqa (vlm)")
    if family not in modes[mode]:
        other = [m for m, families in modes.items() if family in families]
        sys.exit(f"sample.py: --mode={mode} needs a {' or '.join(modes[mode])} model, but {out_dir} holds a {family} "
                 f"model: use --mode={other[0] if other else '?'}")
    if mode in ('chain', 'vqa'):
        try:
            (run_chain if mode == 'chain' else run_vqa)(model, dataset, meta, generator, device_name)
        except (ValueError, DataError) as e:  # DataError: the dataset (val scenes, tokenizers) is gone
            sys.exit(f"sample.py: {e}")
        return
    if meta.get('kind') == 'image':
        try:
            with torch.no_grad():
                (sample_flow if mode == 'flow' else sample_images)(model, dataset, meta, device_name, generator)
        except (ValueError, DataError) as e:
            sys.exit(f"sample.py: {e}")
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
        if not ids:  # --start= (empty): start from a newline, the usual document separator, else token 0
            ids = tok.encode('\n') if '\n' in getattr(tok, 'stoi', {'\n': 0}) else [0]
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


# -----------------------------------------------------------------------------
# visual question answering (vlm)

def run_vqa(model, dataset, meta, generator, device_name):
    """Answer --question about val scene --sample_idx (or the PNG --image) greedily with the KV cache; with no
    --question, caption the scene and answer two of its val questions per family next to their true answers."""
    vqa, words = meta['vqa'], meta['vqa']['words']
    vision = model.config.vision
    picture = None
    if vision == 'none':
        print(f"note: {out_dir} is the blind model (vision='none'): it answers from the question alone")
    else:
        picture = vqa_image(dataset, meta, vision, sample_idx, image).to(device_name)
    where = image or f"val scene {sample_idx}"
    eos = words.index('<eos>')

    def ask(ids, max_new_tokens):
        x = torch.tensor(ids, dtype=torch.long, device=device_name)[None, :]
        y = model.generate(x, max_new_tokens, image=picture, stop_token=eos, kv_cache=kv_cache)
        return ' '.join(words[i] for i in y[0, len(ids):].tolist() if i != eos)

    with torch.no_grad():
        if question:
            ids = vqa_question(vqa, question)
            print(f"{where}: {' '.join(words[i] for i in ids)}\nanswer: {ask(ids, 4)}")
            return
        if not image and vision != 'none':
            spec = meta['modalities']['caption']
            print(f"{where}, caption: {ask([words.index(vqa['caption_prompt'])], spec['num_tokens'])}")
            print(f"true caption: {decode_words(spec, load_tokens(dataset, 'val')['caption'][sample_idx])}")
        path = os.path.join(dataset_dir(dataset), 'val', 'questions.json')
        if image or not os.path.exists(path):
            raise ValueError("--question=TEXT is needed for a PNG (or a dataset without val questions.json), e.g. "
                             "--question='how many red things are left of the cube ?'")
        import json
        with open(path) as f:
            asked = [q for q in json.load(f) if q['scene'] == sample_idx]
        for q in [q for f in vqa['families'] for q in [q for q in asked if q['family'] == f][:2]]:  # two per family
            print(f"{q['text']}  ->  {ask(vqa_question(vqa, q['text']), 4)}   (true: {q['answer']}, {q['family']})")


# -----------------------------------------------------------------------------
# chained generation (4m)

STEP_KEYS = {'scheme': str, 'steps': int, 'temperature': float, 'top_k': int, 'top_p': float, 'cfg_scale': float}


STEP_RANGES = {'scheme': "one of maskgit, roar, ar", 'steps': "an integer >= 1", 'temperature': "a number >= 0",
               'top_k': "an integer >= 0 (0 disables)", 'top_p': "a number in (0, 1]", 'cfg_scale': "a number >= 0"}


def step_value(key, text, part):
    """One '@key=value' of a chain step, checked: steps=0 would decode nothing, a negative temperature inverts
    the distribution, and int('x') would say nothing about which flag was wrong."""
    ok = {'scheme': lambda v: v in ('maskgit', 'roar', 'ar'), 'steps': lambda v: v >= 1,
          'temperature': lambda v: v >= 0, 'top_k': lambda v: v >= 0, 'top_p': lambda v: 0 < v <= 1,
          'cfg_scale': lambda v: v >= 0}[key]
    try:
        value = STEP_KEYS[key](text)
    except ValueError:
        value = None
    if value is None or value != value or not ok(value):  # value != value: nan
        raise ValueError(f"--chain: {key}={text} in {part!r} is not valid; {key} must be {STEP_RANGES[key]}")
    return value


def parse_chain(text, defaults):
    """'caption->semseg@steps=4,temperature=0.5->rgb' -> (['caption'], [{'target': 'semseg', 'steps': 4, ...}, ...])."""
    parts = [p.strip() for p in text.split('->')]
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"--chain={text!r}: write condition->target->target..., e.g. caption->semseg->rgb")
    conditions = [c.strip() for c in parts[0].split('+')]
    plan = []
    for part in parts[1:]:
        target, _, options = part.partition('@')
        step = dict(defaults, target=target.strip())
        for item in filter(None, options.split(',')):
            key, _, value = item.partition('=')
            if key not in STEP_KEYS:
                raise ValueError(f"--chain: unknown step option {key!r} in {part!r}; use {', '.join(STEP_KEYS)}")
            step[key] = step_value(key, value, part)
        plan.append(step)
    return conditions, plan


def chain_figure(columns, scale=2):
    """columns: list of (title, top panel, bottom panel or None) -> one uint8 picture with titles."""
    from PIL import Image, ImageDraw
    size = 64 * scale
    title_h = 14
    rows = 1 + any(bottom is not None for _, _, bottom in columns)
    canvas = Image.new('RGB', (len(columns) * (size + 4), title_h + rows * (size + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (title, top, bottom) in enumerate(columns):
        x = c * (size + 4)
        draw.text((x + 2, 1), title, fill=(0, 0, 0))
        for r, panel in enumerate((top, bottom)):
            if panel is not None:
                panel = Image.fromarray(panel).resize((size, size), Image.NEAREST)
                canvas.paste(panel, (x, title_h + r * (size + 4)))
    return canvas


def prepare_command(dataset, meta):
    """The prepare.py call that (re)builds `dataset`: multimodal sets come from `prepare.py clevr`."""
    if meta.get('kind') == 'multimodal':
        return 'python prepare.py clevr' + (f' --name={dataset}' if dataset != 'clevr' else '')
    return f'python prepare.py {dataset}'


def check_tokenizers(dataset, meta, names):
    """Before any decoding: every fsq modality of the chain decodes with the dataset's tokenizer file, which the
    checkpoint does not carry; a deleted data/<dataset>/ would otherwise surface as a traceback after generating."""
    for name in names:
        spec = meta['modalities'][name]
        if spec.get('codec') == 'fsq' and spec.get('tokenizer'):
            path = os.path.join(dataset_dir(dataset), spec['tokenizer'])
            if not os.path.exists(path):
                raise DataError(f"the {name} tokenizer {path} is missing (the chain decodes {name} with the dataset's "
                                f"tokenizer): rebuild the dataset with `{prepare_command(dataset, meta)}`")


def run_chain(model, dataset, meta, generator, device_name):
    specs = meta['modalities']
    defaults = {'scheme': None, 'steps': steps, 'temperature': temperature, 'top_k': top_k, 'top_p': top_p,
                'cfg_scale': cfg_scale}
    conditions, plan = parse_chain(chain, defaults)
    for name in conditions + [s['target'] for s in plan]:
        model.modality_id(name)  # raises with the list of known modalities
    for step in plan:  # a sequence of a span-masking model is autoregressive; everything else takes --scheme
        ar = bool(model.is_ar[model.modality_id(step['target'])])
        step['scheme'] = step['scheme'] or ('ar' if ar else scheme)
    decoder = TokenDecoder(dataset, meta)
    check_tokenizers(dataset, meta, conditions + [s['target'] for s in plan])
    truth = None
    if caption:
        if len(conditions) != 1 or 'words' not in specs[conditions[0]]:
            raise ValueError(f"--caption conditions on a text modality alone: start the chain with it, e.g. "
                             f"--chain=caption->{plan[0]['target']}")
        cap_name = conditions[0]
        inputs = {cap_name: torch.from_numpy(encode_words(specs[cap_name], caption))[None].expand(num_samples, -1)}
    else:
        if not os.path.exists(os.path.join(dataset_dir(dataset), 'meta.json')):
            raise DataError(f"dataset {dataset!r} is missing ({dataset_dir(dataset)}), and the chain conditions on its "
                            f"val scenes: rebuild it with `{prepare_command(dataset, meta)}`, or give --caption=TEXT")
        val = load_tokens(dataset, 'val')
        n_val = len(next(iter(val.values())))
        if not 0 <= sample_idx <= n_val - num_samples:
            raise ValueError(f"--sample_idx={sample_idx}: the val split has {n_val} scenes")
        rows = slice(sample_idx, sample_idx + num_samples)
        truth = {n: torch.from_numpy(val[n][rows]) for n in val}
        inputs = {n: truth[n] for n in conditions}
    inputs = {n: x.to(device_name).long() for n, x in inputs.items()}
    generated = {}
    for step in plan:
        t0 = time.time()
        tokens = model.generate(inputs, step['target'], scheme=step['scheme'], steps=step['steps'],
                                temperature=step['temperature'], top_k=step['top_k'] or None,
                                top_p=step['top_p'] if step['top_p'] < 1.0 else None, generator=generator,
                                cfg_scale=step['cfg_scale'], kv_cache=kv_cache)
        generated[step['target']] = tokens
        inputs = {**inputs, step['target']: tokens}  # the next step sees what this one made
        how = 'autoregressive' if step['scheme'] == 'ar' else f"{step['scheme']} {step['steps']} steps"
        print(f"{step['target']}: {how}, temperature {step['temperature']}, cfg_scale {step['cfg_scale']} "
              f"({time.time() - t0:.2f}s)")

    def panel(name, tokens):
        if 'words' in specs[name]:
            return text_panel(decode_words(specs[name], tokens), 64 * 2, 64 * 2)
        return decoder.to_rgb(name, tokens[None])[0]

    folder = chain_dir or os.path.join(out_dir, 'chain')
    os.makedirs(folder, exist_ok=True)
    stem = chain.split('@')[0].replace('->', '-').replace('+', '_') if '@' not in chain else \
        '-'.join([conditions[0]] + [s['target'] for s in plan])
    for k in range(num_samples):
        cond_inputs = {n: inputs[n][k].cpu().numpy() for n in conditions}
        columns = [(f'{n} (given)', panel(n, cond_inputs[n]), None) for n in conditions]
        if truth is not None:  # the second row is the val scene's ground truth: say so under the condition
            columns[0] = (columns[0][0], columns[0][1], text_panel('ground truth of the generated modalities ->', 128, 128))
        texts = []
        for step in plan:
            name = step['target']
            gen = generated[name][k].cpu().numpy()
            gt = panel(name, truth[name][k].numpy()) if truth is not None else None
            how = step['scheme'] if step['scheme'] == 'ar' else f"{step['scheme']} {step['steps']}"
            columns.append((f"{name} ({how})", panel(name, gen), gt))
            if 'words' in specs[name]:
                texts.append(f'{name}: {decode_words(specs[name], gen)}')
        for n in conditions:
            if 'words' in specs[n]:
                texts.insert(0, f'{n} (given): {decode_words(specs[n], cond_inputs[n])}')
        if truth is not None:
            for n in specs:
                if 'words' in specs[n] and n in truth:
                    texts.append(f'{n} (ground truth): {decode_words(specs[n], truth[n][k].numpy())}')
        tag = f'val{sample_idx + k}' if truth is not None else f'caption_s{k}'
        path = os.path.join(folder, f'{stem}_{tag}.png')
        chain_figure(columns).save(path)
        with open(path[:-4] + '.txt', 'w') as f:
            f.write('\n'.join(texts) + '\n')
        print(f"sample {k}: {path}" + ''.join(f"\n  {t}" for t in texts))


if __name__ == '__main__':
    main()
