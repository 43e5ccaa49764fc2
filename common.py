"""
What the scripts share, so that no script imports another: the device and dtype choice, the per-device peak
FLOP/s for MFU, the learning-rate schedule, and checkpoints (written atomically, loaded without unpickling code).
"""
import math
import os

import torch

from model import ModelConfig, build_model

# -----------------------------------------------------------------------------
# device and dtype

def pick_device(requested=''):
    """'' picks cuda, then mps, then cpu."""
    if requested:
        return requested
    if torch.cuda.is_available():
        return 'cuda'
    if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


def cpu_has_bf16():
    """True on CPUs with native bf16 matmuls (AVX512-BF16 or AMX), where bf16 autocast is ~1.5x faster than fp32;
    elsewhere PyTorch emulates bf16 and it is slower."""
    try:
        flags = open('/proc/cpuinfo').read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def pick_dtype(requested, device_type):
    """'auto' (or ''): bfloat16 on GPUs that have it and on CPUs with native bf16, float32 elsewhere."""
    if requested not in ('', 'auto'):
        if requested not in DTYPES:
            raise ValueError(f"unknown dtype {requested!r}: choose auto, {', '.join(DTYPES)}")
        return requested
    if device_type == 'cuda':
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float32'
    if device_type == 'cpu' and cpu_has_bf16():
        return 'bfloat16'
    return 'float32'


DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Peak dense FLOP/s of ONE device, by device name fragment and dtype, for MFU (vendor dense figures, no sparsity).
# 'tf32' is what float32 matmuls run at on CUDA with TF32 on (train.py turns it on). The CPU entry is a large
# matmul measured on our 2-core AVX-512 VMs (fp32 / bf16); set --peak_flops for your machine.
PEAK_FLOPS = {
    'H200': {'bfloat16': 989e12, 'float16': 989e12, 'tf32': 494e12, 'float32': 67e12},
    'H100': {'bfloat16': 989e12, 'float16': 989e12, 'tf32': 494e12, 'float32': 67e12},
    'A100': {'bfloat16': 312e12, 'float16': 312e12, 'tf32': 156e12, 'float32': 19.5e12},
    'L40S': {'bfloat16': 362e12, 'float16': 362e12, 'tf32': 183e12, 'float32': 91.6e12},
    'A10G': {'bfloat16': 125e12, 'float16': 125e12, 'tf32': 62.5e12, 'float32': 31.2e12},
    'RTX 4090': {'bfloat16': 165e12, 'float16': 165e12, 'tf32': 82.6e12, 'float32': 82.6e12},
    'RTX 3090': {'bfloat16': 71e12, 'float16': 71e12, 'tf32': 35.6e12, 'float32': 35.6e12},
    'V100': {'bfloat16': 125e12, 'float16': 125e12, 'tf32': 15.7e12, 'float32': 15.7e12},  # no TF32 cores
    'T4': {'bfloat16': 65e12, 'float16': 65e12, 'tf32': 8.1e12, 'float32': 8.1e12},
    'cpu': {'bfloat16': 800e9, 'float16': 160e9, 'tf32': 160e9, 'float32': 160e9},
}


def lookup_peak_flops(device_type, dtype):
    """Peak FLOP/s of one device for this dtype, or 0 for an unknown device (then MFU is not printed)."""
    name = torch.cuda.get_device_name() if device_type == 'cuda' else device_type
    if dtype == 'float32' and device_type == 'cuda' and torch.backends.cuda.matmul.allow_tf32:
        dtype = 'tf32'
    for key, table in PEAK_FLOPS.items():
        if key in name:
            return table[dtype]
    return 0.0

# -----------------------------------------------------------------------------
# schedule

def lr_schedule(it, learning_rate, warmup_iters, lr_decay_iters, min_lr, decay_lr=True):
    """Linear warmup, cosine decay to min_lr, then constant."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)

# -----------------------------------------------------------------------------
# checkpoints

class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path, checkpoint):
    """Write to a temp file and rename: a crash mid-write leaves the previous file intact."""
    tmp = path + '.tmp'
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device='cpu'):
    """A checkpoint dict of plain types and tensors (torch.load with weights_only=True: never unpickles code),
    or a one-line CheckpointError that names the fix."""
    if not os.path.exists(path):
        out_dir = os.path.dirname(path) or '.'
        raise CheckpointError(f"no checkpoint at {path}: train one with `python train.py <config> "
                              f"--out_dir={out_dir}`, or pass the --out_dir of a finished run")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, not a checkpoint at all, or pickled code: all unreadable alike
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:120]}): it may be truncated or "
                              f"corrupted; use another one (--ckpt=best, or a ckpt_<iter> kept with --keep_last_n) "
                              f"or re-train") from None
    missing = [k for k in ('model', 'model_config') if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} has no {' or '.join(missing)}: it was not written by train.py")
    return checkpoint


def load_model(out_dir, ckpt='ckpt', device='cpu'):
    """A checkpoint written by train.py -> (model in eval mode, checkpoint dict)."""
    checkpoint = load_checkpoint(os.path.join(out_dir, f'{ckpt}.pt'), device)
    model = build_model(ModelConfig.from_dict(checkpoint['model_config']))
    model.load_state_dict(checkpoint['model'])
    model.eval().to(device)
    return model, checkpoint
