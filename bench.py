"""
Measures speed. Figures are printed as ratios measured in the same run, since absolute times on shared machines
are noisy; no test is timed, timing goals live here.

--mode=model (default): training tokens/s and MFU for a model shape, and sampling tokens/s with and without the
KV cache.

    python bench.py                                    # the CPU recipe's shape, block_size 512
    python bench.py --n_layer=6 --n_head=6 --n_embd=384 --batch_size=64 --train_block_size=256 --compile=True
    python bench.py --pos=rope --mlp=relu2 --optimizer=muon   # any architecture option (model.py)

--mode=speed: image sampling, MaskGIT T=8 vs AR with a KV cache, at batch 1 and at a large batch (see speed());
with --flow_dir, instead a flow model at each Euler step count beside them, one run (see flow_speed()).

    python bench.py --mode=speed --maskgit_dir=out-fashion-mnist-maskgit-cpu --gpt_dir=out-fashion-mnist-gpt-cpu
    python bench.py --mode=speed --dataset=clevr --maskgit_dir=out-clevr-maskgit-cpu --gpt_dir=out-clevr-gpt-cpu
    python bench.py --mode=speed --dataset=clevr --speed_shape=6x8x256 --speed_batch=64   # the GPU configs' shape
    python bench.py --mode=speed --flow_dir=out-flow-fashion-mnist-cpu --maskgit_dir=out-fashion-mnist-maskgit-cpu \
        --gpt_dir=out-fashion-mnist-gpt-cpu

--mode=render: clevr.py scenes rendered per second on one thread (~1,000 on one core).

--mode=data: samples/s of data.py's batch construction on ONE thread, per rank at world sizes 1 and 8, for
config/nano4m.py's and config/nano4m_cpu.py's 4M masking and for MaskGIT/GPT image batches at
config/clevr_maskgit.py's settings (on --data_dataset, default clevr), next to the 4M models' own training
samples/s (forward + backward + optimizer step) on this device; and the padding share of the 4M batches.

    python bench.py --mode=data

Time to a target loss for each option: speedrun.py.
"""
import copy
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import torch

from common import DTYPES, CheckpointError, load_model, lookup_peak_flops, pick_device, pick_dtype
from configurator import ConfigError, configure
from data import DataError, image_view, load_meta
from decoding import generate_image_tokens
from model import ModelConfig, build_model, flops_per_token, num_params
from optim import configure_optimizer

# -----------------------------------------------------------------------------
mode = 'model'              # 'model' | 'data' | 'speed' | 'render' (see above)
data_dataset = 'clevr'      # --mode=data: the prepared multimodal dataset
data_batches = 20           # --mode=data: timed batches per measurement (best of 3 runs)
model_steps = 2             # --mode=data: timed training steps of each 4M config's model, after one warm-up
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 512
vocab_size = 65
dropout = 0.0
bias = True
batch_size = 12
train_block_size = 64       # sequence length for the training measurement
train_steps = 20            # timed steps, after `warmup_steps`
warmup_steps = 5
sample_tokens = 500         # tokens generated per sampling measurement
sample_batch_size = 1
device = ''
dtype = 'auto'
compile = False
peak_flops = 0.0
seed = 1337
# --mode=speed
dataset = 'fashion_mnist'
image_modality = 'rgb'      # a multimodal dataset (clevr): the image and the conditioning modality, as in training
cond_modality = 'caption'
maskgit_dir = ''            # out_dir of a maskgit run ('' = random weights of its shape)
gpt_dir = ''                # out_dir of a gpt run on the same data
flow_dir = ''               # out_dir of a flow run on the same data: adds the flow table (see flow_speed())
flow_steps = '1,2,4,8,16,32'  # its Euler step counts
ckpt = 'ckpt'
speed_batch = 256           # the 'large batch' of the speed table on the dataset's grid (same tokens on the other)
speed_grid = 16             # the second grid of the speed table (random weights, same model shape)
speed_shape = ''            # '' = the trained models' shapes; 'LxHxC' (e.g. 6x8x256) = random weights of that shape
speed_dtypes = 'float32,bfloat16'  # each scheme is timed in each (weights cast) and reported at its fastest
speed_threads = 2           # ...and with 1 up to this many torch threads
speed_reps = 7              # batch 1: the best of this many rounds over all settings (large batches: one round)
# --mode=render
render_scenes = 1000
# ...and every other ModelConfig field (the architecture options: --pos=rope --optimizer=muon ...)
# -----------------------------------------------------------------------------
for _f in fields(ModelConfig):
    globals().setdefault(_f.name, _f.default)
_config_keys = [k for k, v in globals().items()
                if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None)))]


def sync(device_name):
    if device_name.startswith('cuda'):
        torch.cuda.synchronize()


def bench_train(model, device_name, autocast):
    optimizer = configure_optimizer(model, 0.1, 1e-4, (0.9, 0.95), device_name.split(':')[0])
    x = torch.randint(vocab_size, (batch_size, train_block_size), device=device_name)
    y = torch.randint(vocab_size, (batch_size, train_block_size), device=device_name)
    train_model = torch.compile(model) if compile else model
    for step in range(warmup_steps + train_steps):
        if step == warmup_steps:
            sync(device_name)
            t0 = time.perf_counter()
        with autocast:
            _, loss, _ = train_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device_name)
    dt = (time.perf_counter() - t0) / train_steps
    return batch_size * train_block_size / dt, dt


def bench_sample(model, device_name, use_cache):
    """Sampling runs in float32 as sample.py does (see its dtype comment)."""
    x = torch.zeros((sample_batch_size, 1), dtype=torch.long, device=device_name)
    gen = torch.Generator(device=device_name).manual_seed(seed)
    with torch.no_grad():
        model.generate(x, 8, kv_cache=use_cache, generator=gen)  # warm-up
        sync(device_name)
        t0 = time.perf_counter()
        model.generate(x, sample_tokens, kv_cache=use_cache, generator=gen)
        sync(device_name)
    return sample_tokens * sample_batch_size / (time.perf_counter() - t0)


def speed_models(meta, grid):
    """{'maskgit': model, 'gpt': model} for a grid (h, w): the trained models on the dataset's own grid, otherwise
    random weights of their shape (or of speed_shape 'LxHxC'): speed does not depend on the weights."""
    K, V, P = meta['codebook_size'], meta['cond_vocab_size'], meta['cond_len']
    L = grid[0] * grid[1]
    models = {}
    for family, folder in (('maskgit', maskgit_dir), ('gpt', gpt_dir)):
        trained = load_model(folder, ckpt, device)[0] if folder else None
        if trained is not None and not speed_shape and list(grid) == list(meta['grid']):
            models[family] = trained
            continue
        if trained is not None and not speed_shape:
            shape = trained.config.to_dict()
        else:
            try:
                n_layer, n_head, n_embd = (int(x) for x in (speed_shape or '4x4x128').split('x'))
            except ValueError:
                raise ConfigError(f"--speed_shape={speed_shape!r}: write layers x heads x width, e.g. 6x8x256")
            shape = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        if family == 'maskgit':
            shape.update(model_type='maskgit', codebook_size=K, grid_h=grid[0], grid_w=grid[1], cond_vocab_size=V,
                         cond_len=P, block_size=P + L)
        else:
            shape.update(model_type='gpt', vocab_size=K + V + 1, block_size=P + L - 1)
        torch.manual_seed(seed)
        models[family] = build_model(ModelConfig(**shape)).eval()
    return models


def speed():
    """Latency at batch 1 and throughput at a large batch: MaskGIT T=8 vs AR with a KV cache, on the dataset's
    grid and on a speed_grid x speed_grid grid, conditioned like the dataset (a class token, or 51 caption tokens
    on clevr). Each scheme is timed at every dtype in speed_dtypes and 1..speed_threads threads and reported
    at its fastest, with the setting that gave it: neither scheme is handicapped by a setting that suits the
    other. Batch 1: the best of speed_reps rounds, each round timing every setting once (so a change of the
machine's load hits every setting alike); large batch: one round. A batch-1 warm-up first. No CFG.

    What to expect: MaskGIT T=8 runs 8 passes over all P + L tokens, AR with a KV cache L passes over one token
    (L token-passes, plus attention over the cache). At batch 1 each AR step is latency bound (a few dozen small
    kernels per layer, ~0.5 ms on a CPU core whatever the work), so 8 steps beat L steps; at a large batch both
    are compute bound and AR's ~8x fewer FLOPs win. On a CPU MaskGIT's pass over a few hundred tokens is itself
    compute bound, so bf16 matmuls (avx512_bf16 / AMX) and a second thread speed MaskGIT up, while AR's one-token
    steps gain little from either; on a GPU a 300-token pass costs about what a 1-token pass does."""
    meta = image_view(load_meta(dataset), image_modality, cond_modality)
    dtypes = [d.strip() for d in speed_dtypes.split(',') if d.strip()]
    threads = list(range(1, speed_threads + 1))
    if any(d not in ('float32', 'bfloat16') for d in dtypes) or not dtypes or not threads:
        raise ConfigError(f"--speed_dtypes={speed_dtypes!r} --speed_threads={speed_threads!r}: e.g. "
                         f"--speed_dtypes=float32,bfloat16 --speed_threads=2")
    grids = [tuple(meta['grid'])] + ([(speed_grid, speed_grid)] if [speed_grid] * 2 != list(meta['grid']) else [])
    P, default_threads = meta['cond_len'], torch.get_num_threads()
    print(f"dataset {dataset}: condition {P} token(s); dtypes {dtypes}, threads {threads}; no CFG")
    rows = []
    for grid in grids:
        models = speed_models(meta, grid)
        shapes = ', '.join(f"{f} {m.config.n_layer}x{m.config.n_head}x{m.config.n_embd}" for f, m in models.items())
        cast = {(f, d): copy.deepcopy(m).to(getattr(torch, d)) for f, m in models.items() for d in dtypes}
        L = grid[0] * grid[1]
        m = {**meta, 'grid': list(grid)}
        # the large batch holds about speed_batch grids of the dataset's size: the same tokens on both grids
        for batch in (1, max(1, speed_batch * meta['grid'][0] * meta['grid'][1] // L)):
            cond = torch.randint(meta['cond_vocab_size'], (batch, P), generator=torch.Generator().manual_seed(seed))
            settings = [(family, kw, d, t) for family, kw in (('maskgit', dict(steps=8)), ('gpt', dict()))
                        for d in dtypes for t in threads]
            times = {(family, d, t): [] for family, _, d, t in settings}  # -> seconds of each run
            for r in range(speed_reps if batch == 1 else 1):  # rounds over every setting, so load changes hit all
                for family, kw, d, t in settings:
                    torch.set_num_threads(t)
                    gen = torch.Generator().manual_seed(seed + r)
                    if r == 0:
                        generate_image_tokens(cast[(family, d)], cond[:1], m, generator=gen, **kw)  # warm-up
                    t0 = time.perf_counter()
                    generate_image_tokens(cast[(family, d)], cond, m, generator=gen, **kw)
                    times[(family, d, t)].append(time.perf_counter() - t0)
            best = {}
            for (family, d, t), ts in times.items():
                dt = min(ts)
                print(f"  {grid[0]}x{grid[1]} batch {batch:<4} {family:<8} {d:<9} {t} thread(s): {dt * 1000:9.1f} ms"
                      f"   ({shapes})", flush=True)
                if family not in best or dt < best[family][0]:
                    best[family] = (dt, f"{d}, {t} thr")
            torch.set_num_threads(default_threads)
            rows.append((grid, P, batch, best))
    print()
    print("| grid | tokens (+ condition) | batch | MaskGIT T=8 ms/batch | its setting | AR + KV cache ms/batch | its setting "
          "| MaskGIT img/s | AR img/s | MaskGIT speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (gh, gw), P, batch, best in rows:
        (t_mg, s_mg), (t_ar, s_ar) = best['maskgit'], best['gpt']
        ratio = t_ar / t_mg
        print(f"| {gh}x{gw} | {gh * gw} + {P} | {batch} | {t_mg * 1000:.1f} | {s_mg} | {t_ar * 1000:.1f} | {s_ar} | "
              f"{batch / t_mg:.1f} | {batch / t_ar:.1f} | {ratio:.2f}x{' (AR wins)' if ratio < 1 else ''} |")


def flow_speed():
    """Images/s of a flow model at each Euler step count beside MaskGIT T=8 and AR with a KV cache, in one run on
    the dataset's own grid: batch 1 (the best of speed_reps rounds) and speed_batch images; float32 and the
    default threads for every row (the flow family is trained and sampled in float32), no CFG (guidance doubles
    the batch of every scheme alike). A flow step is one pass over the image's patches (no condition tokens on
    Fashion-MNIST; on clevr the caption words as prefix), so k steps cost about k/8 of MaskGIT T=8's passes."""
    meta = load_meta(dataset)
    flow = load_model(flow_dir, ckpt, device)[0]
    if flow.config.model_type != 'flow':
        raise ConfigError(f"--flow_dir={flow_dir} holds a {flow.config.model_type} model, not a flow model")
    view = image_view(meta, image_modality, cond_modality)
    token_models = speed_models(view, tuple(view['grid']))
    steps_list = [int(x) for x in flow_steps.split(',') if x.strip()]
    schemes = [(f'flow, Euler {k}', lambda c, g, k=k: flow.generate(c, k, 'euler', 1.0, g)) for k in steps_list]
    schemes += [('MaskGIT T=8', lambda c, g: generate_image_tokens(token_models['maskgit'], c, view, steps=8, generator=g)),
                ('AR, KV cache', lambda c, g: generate_image_tokens(token_models['gpt'], c, view, generator=g))]
    P = view['cond_len']
    rows = {}
    with torch.no_grad():
        for batch in (1, speed_batch):
            cond = torch.randint(view['cond_vocab_size'], (batch, P), generator=torch.Generator().manual_seed(seed))
            cond = (cond[:, 0] if P == 1 else cond).to(device)
            for r in range(speed_reps if batch == 1 else 1):
                for name, fn in schemes:
                    if r == 0:
                        fn(cond[:1], torch.Generator(device).manual_seed(seed))  # warm-up
                    t0 = time.perf_counter()
                    fn(cond, torch.Generator(device).manual_seed(seed + r))
                    dt = time.perf_counter() - t0
                    rows[(name, batch)] = min(rows.get((name, batch), dt), dt)
    print(f"dataset {dataset}, {torch.get_num_threads()} threads, float32, no CFG; flow {flow_dir}, "
          f"MaskGIT {maskgit_dir or 'random weights'}, AR {gpt_dir or 'random weights'}")
    print(f"| scheme | batch 1 ms | batch 1 img/s | batch {speed_batch} img/s |\n|---|---|---|---|")
    for name, _ in schemes:
        print(f"| {name} | {rows[(name, 1)] * 1000:.1f} | {1 / rows[(name, 1)]:.1f} | {speed_batch / rows[(name, speed_batch)]:.1f} |")


def render():
    """clevr.py's renderer on one thread: the rgb images of render_scenes scenes."""
    import clevr
    torch.set_num_threads(1)
    clevr.render_scenes(10, seed=0, modalities=('rgb',))  # warm-up
    t0 = time.perf_counter()
    clevr.render_scenes(render_scenes, seed=0, modalities=('rgb',))
    dt = time.perf_counter() - t0
    print(f"clevr: {render_scenes} scenes in {dt:.2f}s on one thread, {render_scenes / dt:,.0f} scenes/s")


def read_config(path):
    """The settings a config file sets."""
    return configure({}, argv=[path], keys=[], allow_new=True)


def batch_rate(data, batch_size, world_size, chunk=1):
    """Samples/s of one rank's batch construction at this world size (best of 3 runs of data_batches batches), one
    batch per call, or `chunk` per get_batches call as BatchPrefetcher builds them."""
    data.get_batch('train', batch_size, 0, 0, world_size)  # loads the split
    best = math.inf
    for run in range(3):
        t0 = time.perf_counter()
        for i in range(0, data_batches, chunk):
            keys = [1000 * run + i + j for j in range(chunk)]
            if chunk == 1:
                data.get_batch('train', batch_size, keys[0], i % world_size, world_size)
            else:
                data.get_batches('train', batch_size, keys, i % world_size, world_size)
        best = min(best, (time.perf_counter() - t0) / (len(range(0, data_batches, chunk)) * chunk))
    return batch_size / best


def model_rate(data, cfg, batch_size, device_name, autocast):
    """Training samples/s (forward + backward + AdamW step) of the config's 4M model on this device."""
    keys = ('n_layer', 'n_layer_dec', 'n_head', 'n_embd', 'dropout', 'bias', 'grid_conv', 'seq_masking')
    args = {k: cfg[k] for k in keys if k in cfg}
    model = build_model(ModelConfig(model_type='4m', **args, **data.model_args)).to(device_name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {k: v.to(device_name) for k, v in data.get_batch('train', batch_size, 0).items()}
    for step in range(1 + model_steps):
        if step == 1:
            sync(device_name)
            t0 = time.perf_counter()
        with autocast:
            _, loss, _ = model(**batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device_name)
    return batch_size * model_steps / (time.perf_counter() - t0), num_params(model)


def bench_data(device_name, autocast):
    from data import FourMData, ImageTokenData
    threads = torch.get_num_threads()
    print(f"batch construction on 1 CPU thread, samples/s per rank; models on {device_name} "
          f"({threads} threads on CPU)")
    for path in ('config/nano4m.py', 'config/nano4m_cpu.py'):
        cfg = read_config(path)
        data = FourMData(data_dataset, cfg)
        B = cfg['batch_size']
        torch.set_num_threads(1)
        rates = [batch_rate(data, B, ws) for ws in (1, 8)]
        chunked = [batch_rate(data, B, ws, chunk=4) for ws in (1, 8)]
        b = data.get_batch('train', 512, 7)
        pad_in, pad_tgt = b['enc_pad'].float().mean().item(), b['dec_pad'].float().mean().item()
        torch.set_num_threads(threads)
        model, params = model_rate(data, cfg, B, device_name, autocast)
        print(f"{path:22s} 4M batch {B}: world size 1 {rates[0]:8,.0f}, world size 8 {rates[1]:8,.0f} samples/s/rank; "
              f"4 batches per call (BatchPrefetcher) {chunked[0]:8,.0f} / {chunked[1]:8,.0f} | "
              f"model {params / 1e6:.1f}M params trains {model:,.1f} samples/s | padding: inputs {pad_in:.1%}, "
              f"targets {pad_tgt:.1%}")
    cfg = read_config('config/clevr_maskgit.py')
    torch.set_num_threads(1)
    for family in ('maskgit', 'gpt'):
        data = ImageTokenData(data_dataset, family, cfg['mask_schedule'], cfg['cond_drop'], cfg['image_modality'],
                              cfg['cond_modality'])
        rates = [batch_rate(data, cfg['batch_size'], ws) for ws in (1, 8)]
        print(f"clevr_maskgit.py-like  {family:7s} batch {cfg['batch_size']}: world size 1 {rates[0]:8,.0f}, "
              f"world size 8 {rates[1]:8,.0f} samples/s/rank (on {data_dataset})")
    torch.set_num_threads(threads)


def main():
    global device
    try:
        configure(globals(), keys=_config_keys)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if mode == 'speed':
        device = pick_device(device)  # trained models load onto it (load_model needs a device, not '')
        try:
            return flow_speed() if flow_dir else speed()
        except (ConfigError, DataError, CheckpointError) as e:
            sys.exit(f"bench.py: {e}")
    if mode == 'render':
        return render()
    if mode not in ('model', 'data'):
        sys.exit(f"bench.py: unknown --mode={mode!r}; choose model, data, speed or render")
    device_name = pick_device(device)
    device_type = 'cuda' if device_name.startswith('cuda') else device_name
    dtype_name = pick_dtype(dtype, device_type)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
    ptdtype = DTYPES[dtype_name]
    autocast = nullcontext() if dtype_name == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
    torch.manual_seed(seed)
    if mode == 'data':
        return bench_data(device_name, autocast)
    model_args = {f.name: globals()[f.name] for f in fields(ModelConfig)}
    config = ModelConfig(**{**model_args, 'block_size': max(block_size, train_block_size)})
    model = build_model(config).to(device_name)
    name = torch.cuda.get_device_name() if device_type == 'cuda' else device_type
    print(f"{model_type} {n_layer}x{n_head}x{n_embd}, {num_params(model) / 1e6:.2f}M params, block_size {config.block_size}, "
          f"on {name} ({dtype_name}, compile={compile}, {torch.get_num_threads()} threads)")

    tok_s, dt = bench_train(model, device_name, autocast)
    peak = peak_flops or lookup_peak_flops(device_type, dtype_name)
    flops = flops_per_token(model, train_block_size) * tok_s
    mfu = f", MFU {flops / peak * 100:.1f}% of {peak / 1e12:.3g} TFLOP/s" if peak else ''
    print(f"train: batch {batch_size} x {train_block_size}: {dt * 1000:.1f} ms/iter, {tok_s:,.0f} tokens/s, "
          f"{flops / 1e9:,.1f} GFLOP/s{mfu}")

    model.eval()
    cached = bench_sample(model, device_name, True)
    uncached = bench_sample(model, device_name, False)
    print(f"sample {sample_tokens} tokens (batch {sample_batch_size}): KV cache {cached:,.0f} tokens/s, "
          f"no cache {uncached:,.0f} tokens/s -> KV cache {cached / uncached:.1f}x faster")


if __name__ == '__main__':
    main()
