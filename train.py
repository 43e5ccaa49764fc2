"""
One training loop for every nano4M family. Runs on a CPU, one GPU, or many through torchrun:

    python train.py config/train_shakespeare_char_cpu.py
    python train.py config/train_shakespeare_char_cpu.py --batch_size=32 --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_shakespeare_char.py
    torchrun --nnodes=2 --node_rank=0 --rdzv_endpoint=HOST:29500 --nproc_per_node=8 train.py ...   # per node

The batch comes from data.py and the loss from the model family, so this file knows no family.
"""
import gc
import itertools
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from common import (CheckpointError, load_checkpoint, lookup_peak_flops, lr_schedule, pick_device, pick_dtype,
                    save_checkpoint)
from configurator import ConfigError, configure
from data import BatchPrefetcher, DataError, load_data
from masking import make_key
from model import ModelConfig, build_model, flops_per_token, num_params
from optim import configure_optimizer

# -----------------------------------------------------------------------------
# default config (GPT-2 124M on OpenWebText-sized settings); config files and --key=value override these
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False            # evaluate once and exit
always_save_checkpoint = True  # write ckpt.pt at every eval; best.pt is kept separately when val improves
keep_last_n = 0              # also keep the last n checkpoints as ckpt_<iter>.pt (0: none)
init_from = 'scratch'        # 'scratch', 'resume' (continue out_dir/ckpt.pt), or another run's out_dir: a fine-tune
                             # from its weights (this config's model and data, e.g. a 4m with more modalities;
                             # iteration, optimizer, schedule and best val loss start fresh)
# wandb logging (off by default; WANDB_MODE=offline works without a network)
wandb_log = False
wandb_project = 'nano4m'
wandb_run_name = 'run'
# data
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1  # micro-steps per optimizer step, summed over all ranks
batch_size = 12              # micro-batch size per rank
block_size = 1024            # image datasets: 0 takes the grid's length from the data
# image families (gpt, maskgit) on a multimodal dataset (clevr): which modality is the image, which the condition
image_modality = 'rgb'       # a modality with a learned tokenizer
cond_modality = 'caption'    # its tokens are the conditioning prefix; '' for unconditional
flow_space = 'latent'        # flow on a multimodal dataset: 'latent' (the rgb tokenizer's) or 'pixels' (the renders)
caption_frac = 0.25          # vlm: the share of batches that caption the image instead of answering a question
# model
model_type = 'gpt'
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True
vocab_size = 0               # 0: what the dataset needs (from meta.json)
# ...and every other ModelConfig field (model.py) is a config key too, with the dataclass's default
# 4m multimodal masking (data.FourMData)
train_modalities = ()        # which of the dataset's modalities take part; () = all of them
input_budget = (1, 128)      # input tokens per sample, uniform in [min, max]; min == max: fixed, no padding
target_budget = (1, 128)     # target tokens per sample, likewise
dirichlet_alphas = (1.0,)    # mixture of Dirichlet alphas splitting each budget across modalities: each entry one
                             # alpha for all modalities or a tuple with one per modality (0: never takes part)
input_modalities = ()        # which may be inputs; () = all. A specialist for one direction: e.g.
target_modalities = ()       # input_modalities=('rgb',), target_modalities=('depth',) (config/nano4m_cpu_specialist.py)
input_drop = 0.0             # per sample, each modality's inputs are all dropped with this probability (for CFG)
# (seq_masking='span', a ModelConfig field: T5-style span masking and autoregressive decoding of sequences)
# optimizer (AdamW; --optimizer=muon and --muon_lr are ModelConfig fields, see model.py)
learning_rate = 6e-4
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0              # 0 disables clipping
# learning rate schedule: linear warmup, cosine decay to min_lr, then constant
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000
min_lr = 6e-5
max_seconds = 0.0            # a time budget for the loop, evals included (0: none). At the end of the warm-up,
                             # max_iters and lr_decay_iters shrink to what fits, so the cosine still ends at min_lr
# system
backend = ''                 # '' picks nccl on CUDA, gloo otherwise
device = ''                  # '' picks cuda, then mps, then cpu
dtype = 'auto'               # 'auto' (bfloat16 on GPUs and CPUs that have it, else float32) | 'float32' | 'bfloat16' | 'float16'
compile = False              # torch.compile the model
deterministic = False        # torch.use_deterministic_algorithms, for bit-exact resume checks
peak_flops = 0.0             # per-device peak FLOP/s for MFU; 0 looks the device up in common.PEAK_FLOPS
seed = 1337
# -----------------------------------------------------------------------------
for _f in fields(ModelConfig):
    globals().setdefault(_f.name, _f.default)
_config_keys = [k for k, v in globals().items()
                if not k.startswith('_') and isinstance(v, (int, float, bool, str, tuple, list, dict, type(None)))]


class TrainingError(RuntimeError):
    pass

# ModelConfig fields a fine-tune (init_from=<out_dir>) may change: what the data fixes, and how to train rather than
# what the weights compute. Every other field must be the source run's.
FREE_IN_FINE_TUNE = ('modalities', 'vocab_size', 'block_size', 'dropout', 'optimizer', 'muon_lr', 'muon_momentum',
                     'label_smoothing', 'mask_schedule', 'cond_drop', 't_sampling')


def source_checkpoint(model_args, data):
    """init_from=<out_dir>: that run's checkpoint, if its weights can start this run's model; otherwise a one-line
    sys.exit that names the fix."""
    path = os.path.join(init_from, 'ckpt.pt')
    if os.path.realpath(init_from) == os.path.realpath(out_dir):
        sys.exit(f"init_from error: --init_from={init_from} is this run's own out_dir: continue it with "
                 f"--init_from=resume, or write the fine-tune to another --out_dir")
    if not os.path.exists(path):
        sys.exit(f"init_from error: {path} does not exist: init_from is 'scratch', 'resume' or the out_dir of a "
                 f"finished run; train that run first (python train.py <config> --out_dir={init_from})")
    try:
        source = load_checkpoint(path)
        saved = ModelConfig.from_dict(source['model_config']).to_dict()
    except (CheckpointError, ValueError) as e:
        sys.exit(f"init_from error: {e}")
    if saved['model_type'] != model_type:
        sys.exit(f"init_from error: {init_from} holds a {saved['model_type']!r} model but this config trains "
                 f"model_type={model_type!r}: fine-tune with the source's family (--model_type={saved['model_type']})")
    source_dataset = source.get('config', {}).get('dataset')
    if source_dataset != dataset:
        sys.exit(f"init_from error: {init_from} was trained on dataset {source_dataset!r} but this config uses "
                 f"{dataset!r}: fine-tune on the source's dataset (--dataset={source_dataset})")
    for k, v in saved.items():
        if k not in FREE_IN_FINE_TUNE and v != model_args[k]:
            sys.exit(f"init_from error: {init_from} has {k}={v!r} but this config asks for {model_args[k]!r}: use "
                     f"the source run's architecture (--{k}={v})")
    if model_type == '4m':
        names = [m['name'] for m in model_args['modalities']]
        missing = [m['name'] for m in saved['modalities'] if m['name'] not in names]
        absent = [n for n in missing if n not in data.meta['modalities']]
        if absent:
            sys.exit(f"init_from error: {init_from} was trained on {', '.join(absent)}, which dataset {dataset!r} no "
                     f"longer has: every modality of the source must take part; re-run the prepare.py command it was "
                     f"trained on")
        if missing:
            wanted = ','.join(repr(n) for n in data.meta['modalities'] if n in names or n in missing)
            sys.exit(f"init_from error: {init_from} was trained on {', '.join(missing)}, which this run's "
                     f"train_modalities {tuple(names)} leave out: every modality of the source must take part "
                     f"(--train_modalities=\"({wanted})\")")
    return source


def load_source_weights(model, source):
    """The source checkpoint's weights into the newly built model (a 4m moves each modality's rows to where it sits
    here and keeps the new modalities' init) -> the line that says what was loaded; a one-line sys.exit if they
    do not fit."""
    try:
        if model_type == '4m':
            new = model.load_pretrained(source['model'], source['model_config']['modalities'])
            M = len(model.names)
            loaded = f"{M - len(new)} of {M} modalities loaded; new: {', '.join(new) or 'none'}"
        else:
            model.load_state_dict(source['model'])
            loaded = "all weights loaded"
    except (ValueError, RuntimeError) as e:  # (load_state_dict's list of mismatches starts on its second line)
        reason = ' '.join(str(e).split('\n', 1)[-1].split())[:300]
        saved = source['model_config']
        fix = ('fine-tune on the data the source was trained on' if model_type == '4m' else
               f"use the source's --block_size={saved['block_size']} and --vocab_size={saved['vocab_size']}")
        sys.exit(f"init_from error: {init_from}'s weights do not fit this model ({reason}): {fix}, or train from "
                 f"scratch (--init_from=scratch)")
    return f"init_from {init_from} (step {source.get('iter_num')}): {loaded}"


def get_lr(it):
    return lr_schedule(it, learning_rate, warmup_iters, lr_decay_iters, min_lr, decay_lr)


def real_token_count(batch, total):
    """Tokens of a batch of `total` positions that are not padding (4m marks its padding in *_pad; the other
    families have none)."""
    pads = [v for k, v in batch.items() if k.endswith('_pad')]
    return sum(int(p.numel() - p.sum()) for p in pads) if pads else total


def rng_state():
    state = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def fit_budget(budget, elapsed, it, step_time, eval_time, eval_interval):
    """The iteration a time budget ends at: from iteration `it`, `elapsed` seconds into the loop, steps of
    `step_time` seconds and an eval of `eval_time` seconds at every multiple of eval_interval and at the end."""
    n = max(0, int((budget - elapsed) / step_time))
    while n > 0:
        evals = (it + n) // eval_interval - it // eval_interval + ((it + n) % eval_interval != 0)
        if elapsed + n * step_time + evals * eval_time <= budget:
            break
        n -= 1
    return it + n


def main():
    global config, max_iters, lr_decay_iters
    try:
        config = configure(globals(), keys=_config_keys)
    except ConfigError as e:
        sys.exit(f"config error: {e}")

    # -------------------------------------------------------------------------
    # distributed setup: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE
    ddp = int(os.environ.get('RANK', -1)) != -1
    device_name = pick_device(device)
    world_size = int(os.environ.get('WORLD_SIZE', 1)) if ddp else 1
    grad_accum = gradient_accumulation_steps
    if grad_accum % world_size != 0:  # checked before joining the process group, so no rank hangs
        sys.exit(f"config error: gradient_accumulation_steps={grad_accum} must be divisible by the number of "
                 f"ranks ({world_size}): use --gradient_accumulation_steps={world_size * max(1, round(grad_accum / world_size))}")
    if ddp:
        rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
        if device_name.startswith('cuda'):
            device_name = f'cuda:{local_rank}'
            torch.cuda.set_device(device_name)
        init_process_group(backend=backend or ('nccl' if device_name.startswith('cuda') else 'gloo'))
    else:
        rank, local_rank = 0, 0
    master = rank == 0
    grad_accum //= world_size
    device_type = 'cuda' if device_name.startswith('cuda') else device_name
    try:
        ptdtype_name = pick_dtype(dtype, device_type)
    except ValueError as e:
        sys.exit(f"config error: {e}")
    if master:
        print(json.dumps({**config, 'device': device_name, 'dtype': ptdtype_name, 'world_size': world_size}, indent=None))
        os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed + rank)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = getattr(torch, ptdtype_name)  # torch.float32, torch.bfloat16, torch.float16
    autocast = nullcontext() if ptdtype_name == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)

    # -------------------------------------------------------------------------
    # data and model
    try:
        data = load_data(dataset, model_type, block_size, config)
    except DataError as e:
        sys.exit(f"data error: {e}")
    # every batch's randomness is keyed by (seed, iteration, micro-step) and each sample's by its index in the global
    # batch (masking.make_key): a rank builds only its own slice, 2 ranks x b see exactly what 1 rank x 2b sees, and a
    # resumed run continues the data stream from iter_num alone

    model_args = {f.name: config[f.name] for f in fields(ModelConfig)}
    for k, v in data.model_args.items():  # what the dataset fixes (vocabulary, grids, modalities), unless set
        if model_args[k] in (0, '', None, ()):
            model_args[k] = v
    iter_num, best_val_loss, checkpoint, source = 0, 1e9, None, None
    budget_fixed = max_seconds <= 0  # else max_iters is fitted to max_seconds at the end of the warm-up (the loop)
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    if init_from == 'resume':
        if not os.path.exists(ckpt_path):
            sys.exit(f"init_from='resume' but {ckpt_path} does not exist: train with --init_from=scratch first, "
                     f"or point --out_dir at the run to continue")
        try:
            checkpoint = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            sys.exit(f"resume error: {e}")
        saved = checkpoint['model_config']
        for k in saved:
            if k != 'dropout' and saved[k] != model_args.get(k):
                sys.exit(f"resume error: the checkpoint in {out_dir} has {k}={saved[k]!r} but the config asks for "
                         f"{model_args.get(k)!r}; resume with the run's own config, or use another --out_dir")
        if checkpoint['config'].get('dataset') != dataset:
            sys.exit(f"resume error: the checkpoint in {out_dir} was trained on dataset "
                     f"{checkpoint['config'].get('dataset')!r}, not {dataset!r}")
        if checkpoint.get('data_meta') != data.meta:
            changed = sorted(k for k in set(data.meta) | set(checkpoint['data_meta'])
                             if data.meta.get(k) != checkpoint['data_meta'].get(k))
            sys.exit(f"resume error: data/{dataset}/meta.json changed since the checkpoint was written ({', '.join(changed)} "
                     f"differ): re-run the prepare.py command the run was trained on, or start a new --out_dir")
        model_args = dict(saved, dropout=dropout)
        iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
        if checkpoint.get('schedule'):  # a time-budgeted run continues the schedule its budget fixed
            max_iters, lr_decay_iters = checkpoint['schedule']['max_iters'], checkpoint['schedule']['lr_decay_iters']
            budget_fixed = True
    elif init_from != 'scratch':  # a fine-tune: only the weights come from the source run
        source = source_checkpoint(model_args, data)
    if model_args['vocab_size'] < data.model_args.get('vocab_size', 0):
        sys.exit(f"config error: vocab_size={model_args['vocab_size']} is smaller than dataset {dataset!r}'s "
                 f"vocabulary ({data.model_args['vocab_size']}); use --vocab_size=0 to take the dataset's")
    model_config = ModelConfig(**model_args)
    # the sequence length the model sees: image datasets fix it (grid + conditioning), 4m the padded inputs + targets
    tokens_per_iter = grad_accum * world_size * batch_size * model_config.block_size
    model = build_model(model_config)
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
    if source is not None:
        loaded = load_source_weights(model, source)
        source = None  # free memory
        if master:
            print(loaded)
    model.to(device_name)
    if master:
        print(f"{model_type} model: {num_params(model) / 1e6:.2f}M parameters; "
              f"{tokens_per_iter:,} tokens per iteration ({grad_accum} micro-steps x {world_size} ranks x "
              f"{batch_size} x {model_config.block_size})")
        if model_config.mup:
            m = model_config.n_embd / model_config.mup_base_width
            print(f"muP: width {model_config.n_embd} = {m:g} x base width {model_config.mup_base_width}: hidden matrices "
                  f"init std x {m ** -0.5:.3g}, AdamW lr x {1 / m:.3g}; attention q.k/head_dim; logits x {1 / m:.3g}")

    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype_name == 'float16'))
    optimizer = configure_optimizer(model, weight_decay, learning_rate, (beta1, beta2), device_type,
                                    ns_dtype=torch.bfloat16 if ptdtype_name == 'bfloat16' else torch.float32)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint['world_size'] == world_size:
            torch.set_rng_state(checkpoint['rng_state'][rank]['torch'])
            if device_type == 'cuda' and 'cuda' in checkpoint['rng_state'][rank]:
                torch.cuda.set_rng_state(checkpoint['rng_state'][rank]['cuda'])
        elif master:
            print(f"note: resuming on {world_size} ranks from a checkpoint of {checkpoint['world_size']}: the data "
                  f"order continues exactly, dropout's random stream is re-seeded")
    checkpoint = None  # free memory

    raw_model = model
    if compile:
        if master:
            print("compiling the model... (takes a minute)")
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)

    flops_token = flops_per_token(raw_model, model_config.block_size)
    peak = peak_flops or lookup_peak_flops(device_type, ptdtype_name)  # of one device: MFU is per device
    # batches are built on a background thread a few steps ahead (data.BatchPrefetcher), overlapping the model step
    step_keys = (make_key(seed, it, micro) for it in itertools.count(iter_num) for micro in range(grad_accum))
    train_batches = BatchPrefetcher(data, 'train', batch_size, step_keys, rank, world_size,
                                    pin_memory=device_type == 'cuda')
    # the families whose loss averages over a data-dependent number of tokens (MaskGIT's masked ones, 4M's targets
    # per modality) are told the whole optimizer step's count, so every micro-batch on every rank weighs its share
    count_loss_tokens = getattr(raw_model, 'loss_tokens', None)

    def batch_to_device(batch):
        if device_type == 'cuda':  # pinned by the prefetcher (eval batches are pinned here)
            return {k: (v if v.is_pinned() else v.pin_memory()).to(device_name, non_blocking=True) for k, v in batch.items()}
        return {k: v.to(device_name) for k, v in batch.items()}

    @torch.no_grad()
    def estimate_loss():
        """Mean loss over eval_iters batches per split, drawn from a fixed seed so every eval (and a resumed
        run's) sees the same batches."""
        out = {}
        model.eval()
        for split in ('train', 'val'):
            losses = torch.zeros(eval_iters)
            metrics_sum = {}
            for k in range(eval_iters):
                batch = data.get_batch(split, batch_size, make_key(seed + 10_000, k), rank, world_size)
                with autocast:
                    _, loss, metrics = model(**batch_to_device(batch))
                losses[k] = loss.item()
                for name, value in metrics.items():  # e.g. per-modality losses; NaN: undefined for this batch
                    value = float(value)
                    if math.isfinite(value):
                        total, count = metrics_sum.get(name, (0.0, 0))
                        metrics_sum[name] = (total + value, count + 1)
            mean = losses.mean().to(device_name)
            if ddp:
                torch.distributed.all_reduce(mean, op=torch.distributed.ReduceOp.AVG)
            out[split] = mean.item()
            for name, (total, count) in metrics_sum.items():
                out[f'{split}/{name}'] = total / count
        model.train()
        return out

    def write_checkpoint(reason, best=False):
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            raise TrainingError(f"non-finite weights at step {iter_num}: not saving them. The last good checkpoint "
                                f"is {ckpt_path}; lower --learning_rate, then --init_from=resume")
        ckpt = {
            'model': raw_model.state_dict(),  # the raw model: no '_orig_mod.' or 'module.' prefixes
            'optimizer': optimizer.state_dict(),
            'model_config': model_config.to_dict(),
            'config': config,
            'iter_num': iter_num,
            'best_val_loss': best_val_loss,
            'data_meta': data.meta,  # what the tokens mean: sample.py decodes with it, resume checks it
            'world_size': world_size,
            'schedule': {'max_iters': max_iters, 'lr_decay_iters': lr_decay_iters} if max_seconds and budget_fixed else None,
            'rng_state': gathered(rng_state()),
        }
        if not master:
            return
        save_checkpoint(ckpt_path, ckpt)
        if best:
            save_checkpoint(os.path.join(out_dir, 'best.pt'), ckpt)
        if keep_last_n > 0:
            save_checkpoint(os.path.join(out_dir, f'ckpt_{iter_num:07d}.pt'), ckpt)
            kept = sorted(f for f in os.listdir(out_dir) if f.startswith('ckpt_') and f.endswith('.pt'))
            for old in kept[:-keep_last_n]:
                os.remove(os.path.join(out_dir, old))
        print(f"saved checkpoint at step {iter_num} to {out_dir} ({reason})")

    def gathered(state):
        """Each rank's copy of its RNG state, as a list indexed by rank (only rank 0 saves it)."""
        if not ddp:
            return [state]
        states = [None] * world_size
        torch.distributed.all_gather_object(states, state)
        return states

    metrics_file = open(os.path.join(out_dir, 'metrics.jsonl'), 'a') if master else None

    def log_metrics(record):
        if not master:
            return
        metrics_file.write(json.dumps(record) + '\n')
        metrics_file.flush()
        if wandb_log:
            wandb.log(record, step=record['iter'])

    if wandb_log and master:
        import wandb
        mode = os.environ.get('WANDB_MODE', '')
        if mode not in ('offline', 'disabled', 'dryrun') and not wandb.login(prompt=False, verify=False):
            sys.exit("wandb error: no API key configured. Run `wandb login`, or log locally with WANDB_MODE=offline, "
                     "or drop --wandb_log=True")
        wandb.init(project=wandb_project, name=wandb_run_name, config=config, dir=out_dir)

    # preemption: SIGTERM/SIGINT set a flag; the loop checkpoints at the next iteration boundary and exits
    stop_signal = {'received': None}

    def on_signal(signum, frame):
        stop_signal['received'] = signal.Signals(signum).name
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def should_stop():
        flag = torch.tensor([1.0 if stop_signal['received'] else 0.0])
        if ddp:  # all ranks must agree, or the others would hang in the next all-reduce
            flag = flag.to(device_name)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag.item() > 0

    # -------------------------------------------------------------------------
    # the loop
    t0 = loop_start = time.time()
    running_mfu = -1.0
    first_iter = iter_num
    step_times = []  # seconds per iteration, for the closing line's median
    eval_seconds = 0.0  # how long the last eval (and its checkpoint) took, for the time budget
    # decided at the end of the warm-up, where the cosine (the part that depends on lr_decay_iters) begins; after
    # at least 10 timed steps
    budget_steps = max(10, min(warmup_iters, 200))
    while True:
        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group['lr'] = lr * group.get('lr_scale', 1.0)  # groups with their own peak lr (Muon) scale alike

        if should_stop():
            write_checkpoint(f"received {stop_signal['received'] or 'a stop signal on another rank'}")
            if master:
                print(f"stopped at step {iter_num}; continue with --init_from=resume")
            break

        if iter_num % eval_interval == 0 or iter_num == max_iters or eval_only:
            eval_start = time.time()
            losses = estimate_loss()
            if not math.isfinite(losses['val']):
                raise TrainingError(f"non-finite val loss at step {iter_num}: stopping without saving. The last good "
                                    f"checkpoint is {ckpt_path}; lower --learning_rate, then --init_from=resume")
            extra = ''.join(f", {k} {v:.4f}" for k, v in losses.items() if k.startswith('val/'))
            if master:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{extra}")
            log_metrics({'iter': iter_num, 'event': 'eval', 'lr': lr, 'tokens': iter_num * tokens_per_iter,
                         **{f'{k}/loss' if '/' not in k else k: v for k, v in losses.items()}})
            if eval_only:
                break
            improved = losses['val'] < best_val_loss
            best_val_loss = min(best_val_loss, losses['val'])
            if iter_num > first_iter and (improved or always_save_checkpoint):
                write_checkpoint('best val loss' if improved else 'periodic', best=improved)
            eval_seconds = time.time() - eval_start
        if iter_num >= max_iters:
            break

        # forward, backward, update; gradients are all-reduced only on the last micro-step
        wait_before = train_batches.wait
        batches = [train_batches.next() for _ in range(grad_accum)]
        data_wait = train_batches.wait - wait_before  # seconds this step waited for its batches
        real_tokens = sum(real_token_count(b, batch_size * model_config.block_size) for b in batches)  # on the CPU
        batches = [batch_to_device(b) for b in batches]
        extra_args = {}
        if count_loss_tokens is not None:
            step_tokens = sum(count_loss_tokens(b) for b in batches)  # this rank's micro-batches
            if ddp:
                torch.distributed.all_reduce(step_tokens)  # + every other rank's: the whole step's count
            extra_args['loss_tokens'] = step_tokens / (grad_accum * world_size)  # a micro-batch's share
        for micro_step, batch in enumerate(batches):
            if ddp:
                model.require_backward_grad_sync = micro_step == grad_accum - 1
            with autocast:
                _, loss, metrics = model(**batch, **extra_args)
                loss = loss / grad_accum
            scaler.scale(loss).backward()
        loss_value = loss.detach() * grad_accum
        if ddp:  # every rank must see a non-finite loss, or the healthy ones would hang in the next all-reduce
            torch.distributed.all_reduce(loss_value, op=torch.distributed.ReduceOp.AVG)
        loss_value = loss_value.item()
        if not math.isfinite(loss_value):
            raise TrainingError(f"non-finite loss {loss_value} at step {iter_num}: stopping without saving. "
                                f"The last good checkpoint is {ckpt_path}; lower --learning_rate or use "
                                f"--dtype=bfloat16/float32, then --init_from=resume")
        if grad_clip != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        t1 = time.time()
        dt, t0 = t1 - t0, t1
        step_times.append(dt)
        if not budget_fixed and len(step_times) == budget_steps:
            # the budget is spent by the loop so far, the remaining steps at the median time of the later half of
            # the timed steps (the first ones run slower) and the evals still to come; rank 0 decides for all, so
            # every rank stops at the same iteration
            steady = sorted(step_times[budget_steps // 2:])
            step_time = steady[len(steady) // 2]
            last = torch.tensor([min(max_iters, fit_budget(max_seconds, t1 - loop_start, iter_num + 1, step_time,
                                                           eval_seconds, eval_interval))], device=device_name)
            if ddp:
                torch.distributed.broadcast(last, src=0)
            budget_fixed, last = True, int(last.item())
            if last < max_iters:
                if master:
                    print(f"time budget {max_seconds:.0f}s: {last} of {max_iters} iterations fit (median "
                          f"{step_time * 1000:.0f} ms per iteration, evals {eval_seconds:.1f}s each); max_iters and "
                          f"lr_decay_iters set to {last}")
                max_iters, lr_decay_iters = last, min(lr_decay_iters, last)
                log_metrics({'iter': iter_num, 'event': 'budget', 'max_iters': max_iters, 'lr_decay_iters': lr_decay_iters})
        if iter_num % log_interval == 0 and master:
            # per device: this rank's real (non-padding) tokens over its step time; padding costs FLOPs but does no work
            tokens_per_s = real_tokens / dt
            padding = 1.0 - real_tokens / (grad_accum * batch_size * model_config.block_size)
            line = (f"iter {iter_num}: loss {loss_value:.4f}, time {dt * 1000:.2f}ms, {tokens_per_s:,.0f} tok/s per device, "
                    f"data wait {data_wait / dt * 100:.1f}%")
            if padding > 0:
                line += f", padding {padding * 100:.1f}%"
            if peak and iter_num >= first_iter + 5:  # skip the warm-up iterations (compile, allocator)
                mfu = flops_token * tokens_per_s / peak
                running_mfu = mfu if running_mfu < 0 else 0.9 * running_mfu + 0.1 * mfu
                line += f", mfu {running_mfu * 100:.2f}%"
            extra = {k: float(v) for k, v in metrics.items()}
            line += ''.join(f", {k} {v:.4f}" for k, v in extra.items())
            print(line)
            log_metrics({'iter': iter_num, 'event': 'train', 'loss': loss_value, 'lr': lr, 'dt_ms': dt * 1000,
                         'tokens_per_s': tokens_per_s, 'mfu': running_mfu, 'data_wait_ms': data_wait * 1000,
                         'padding': padding, **extra})
        iter_num += 1

    if master and step_times:  # wall time of the whole loop (evals and checkpoints included): what a run costs
        elapsed = round(time.time() - loop_start)  # whole seconds first, so 119.7 s reads "2 min 0 s", not "1 min 60 s"
        print(f"trained {len(step_times)} iterations in {elapsed // 60} min {elapsed % 60} s "
              f"(median {sorted(step_times)[len(step_times) // 2] * 1000:.0f} ms per iteration)")
    if ddp:  # DDP keeps replicas identical by construction; check it, since a silent desync wastes a whole run
        weights = torch.cat([p.detach().float().flatten() for p in raw_model.parameters()])
        high, low = weights.clone(), weights.clone()
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        if master:
            print(f"ranks in sync: largest weight difference across {world_size} ranks {(high - low).max().item():.3g}")
    train_batches.close()
    if metrics_file:
        metrics_file.close()
    if wandb_log and master:
        wandb.finish()
    if ddp:
        # free the DDP wrapper (its reducer holds gloo/NCCL work) while the interpreter is fully alive: left to
        # the garbage collector at exit, gloo's worker threads can outlive Python and abort the process (SIGABRT)
        model = None
        gc.collect()
        torch.distributed.barrier()  # no rank tears the process group down while another still uses it
        destroy_process_group()


if __name__ == '__main__':
    try:
        main()
    except TrainingError as e:
        sys.exit(f"training error: {e}")
