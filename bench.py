"""
Measures speed: training tokens/s and MFU for a model shape, and sampling tokens/s with and without the KV
cache. Figures are printed as ratios measured in the same run, since absolute times on shared machines are noisy.

    python bench.py                                    # the CPU recipe's shape, block_size 512
    python bench.py --n_layer=6 --n_head=6 --n_embd=384 --batch_size=64 --train_block_size=256 --compile=True
    python bench.py --pos=rope --mlp=relu2 --optimizer=muon   # any architecture option (model.py, issue 8)

Time to a target loss for each option: speedrun.py.
"""
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import torch

from configurator import ConfigError, configure
from model import ModelConfig, build_model, configure_optimizer, flops_per_token, num_params

# -----------------------------------------------------------------------------
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


def main():
    try:
        configure(globals(), keys=_config_keys)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    from train import lookup_peak_flops, pick_device, pick_dtype
    device_name = pick_device(device)
    device_type = 'cuda' if device_name.startswith('cuda') else device_name
    dtype_name = pick_dtype(dtype, device_type)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype_name]
    autocast = nullcontext() if dtype_name == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
    torch.manual_seed(seed)
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
