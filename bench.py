"""
Measures speed: training tokens/s and MFU for a model shape, and sampling tokens/s with and without the KV
cache. Figures are printed as ratios measured in the same run, since absolute times on shared machines are noisy.

    python bench.py                                    # the CPU recipe's shape, block_size 512
    python bench.py --n_layer=6 --n_head=6 --n_embd=384 --batch_size=64 --train_block_size=256 --compile=True
    python bench.py --pos=rope --mlp=relu2 --optimizer=muon   # any architecture option (model.py, issue 8)
    python bench.py --mode=data                        # batch construction vs the model's step (prepared clevr)

--mode=data: samples/s of data.py's batch construction on ONE thread, per rank at world sizes 1 and 8, for
config/nano4m.py's and config/nano4m_cpu.py's 4M masking and for MaskGIT/GPT image batches at
config/clevr_maskgit.py's settings (on --data_dataset, default clevr), next to the 4M models' own training
samples/s (forward + backward + optimizer step) on this device; and the padding share of the 4M batches.

Time to a target loss for each option: speedrun.py.
"""
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import torch

from configurator import ConfigError, configure
from model import ModelConfig, build_model, configure_optimizer, flops_per_token, num_params

# -----------------------------------------------------------------------------
mode = 'model'              # 'model': the model's speed; 'data': batch construction (see above)
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
dtype = ''
compile = False
peak_flops = 0.0
seed = 1337
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


def read_config(path):
    """The settings a config file sets (it is plain Python, exec'd as train.py's configurator does)."""
    settings = {}
    exec(open(path).read(), settings)
    return {k: v for k, v in settings.items() if not k.startswith('_')}


def batch_rate(data, batch_size, world_size):
    """Samples/s of one rank's get_batch at this world size (best of 3 runs of data_batches batches)."""
    data.get_batch('train', batch_size, 0, 0, world_size)  # loads the split
    best = math.inf
    for run in range(3):
        t0 = time.perf_counter()
        for i in range(data_batches):
            data.get_batch('train', batch_size, 1000 * run + i, i % world_size, world_size)
        best = min(best, (time.perf_counter() - t0) / data_batches)
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
        b = data.get_batch('train', 512, 7)
        pad_in, pad_tgt = b['enc_pad'].float().mean().item(), b['dec_pad'].float().mean().item()
        torch.set_num_threads(threads)
        model, params = model_rate(data, cfg, B, device_name, autocast)
        print(f"{path:22s} 4M batch {B}: world size 1 {rates[0]:8,.0f}, world size 8 {rates[1]:8,.0f} samples/s/rank | "
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
    try:
        configure(globals(), keys=_config_keys)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if mode not in ('model', 'data'):
        sys.exit(f"config error: --mode must be 'model' or 'data', not {mode!r}")
    from train import lookup_peak_flops, pick_device, pick_dtype
    device_name = pick_device(device)
    device_type = 'cuda' if device_name.startswith('cuda') else device_name
    dtype_name = pick_dtype(dtype, device_type)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype_name]
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
