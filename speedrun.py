"""
CPU speedrun: how many tokens and how much wall-clock each architecture / optimizer option needs to reach the
val loss the baseline recipe reaches at the end of its schedule (2000 iterations for the GPT CPU recipe).

    python speedrun.py                                        # the GPT table: every option, 2 seeds
    python speedrun.py --runs=baseline,muon,speedrun_cpu      # some rows only
    python speedrun.py --max_iters=200 --target=2.5 --seeds=1 --runs=baseline,rope   # a quick check
    python speedrun.py --suite=4m --base=config/nano4m_cpu.py # the 4M table (options every family has)

Everything runs in this process, one run after another, on the same machine: first the baseline for every
seed (its final val loss, the worst over seeds, becomes the target unless --target is given), then every other
run, each stopped as soon as its val loss reaches the target. Val loss is measured every eval_interval
iterations on one fixed set of val batches, the same for every run; the crossing is interpolated linearly
between the two evals around it. Time counts training steps only (batches, forward, backward, update), not
evals. The table goes to stdout and to --out (markdown); the rows to --out with .jsonl.

Times depend on the machine and on whatever else runs on it; tokens do not. Run it on an idle machine with
the thread count you will train with (OMP_NUM_THREADS), or on a shared one with OMP_NUM_THREADS=1 --clock=cpu:
time is then this process's CPU seconds, which other jobs barely inflate.
"""
import json
import math
import os
import sys
import time
from dataclasses import fields

import torch

from common import lr_schedule
from configurator import ConfigError, configure
from data import DataError, load_data
from model import ModelConfig, build_model
from optim import configure_optimizer

# -----------------------------------------------------------------------------
base = 'config/train_shakespeare_char_cpu.py'  # the recipe every run starts from
suite = 'gpt'               # 'gpt' | '4m': which rows (see SUITES)
runs = ''                   # comma-separated row names; '' runs the whole suite
seeds = 2
target = 0.0                # val loss to reach; 0 measures it: the baseline's final val loss (worst seed)
max_iters = 0               # 0: the base recipe's; else it replaces the base's max_iters and lr_decay_iters
eval_interval = 50
eval_batches = 8            # fixed val batches per eval...
eval_batch_size = 32        # ...of this many sequences
device = 'cpu'
clock = 'wall'              # 'wall' | 'cpu': time in process CPU seconds / threads, which other jobs on a shared
                            # machine do not inflate (one thread: the wall time the run takes on an idle core)
out = 'out-speedrun/speedrun.md'  # the table; the per-run rows and eval curves go next to it (.jsonl)
# -----------------------------------------------------------------------------
_config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]

# the training keys a run reads, at train.py's defaults (a base recipe overrides them; vocab_size 0: the data's)
TRAINING_DEFAULTS = dict(vocab_size=0, dataset='shakespeare_char', block_size=1024, batch_size=12, gradient_accumulation_steps=1,
                         learning_rate=6e-4, max_iters=600000, weight_decay=1e-1, beta1=0.9, beta2=0.95, grad_clip=1.0,
                         decay_lr=True, warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5)

# Rows: name -> overrides of the base recipe. 'iters' scales the run's schedule (max_iters and lr_decay_iters);
# 'file' names a config file applied over the base (the ready configs, measured as they ship).
OPTIONS = {
    'baseline': {},
    'rmsnorm': {'norm': 'rmsnorm'},
    'post-norm': {'norm_placement': 'post'},
    'swiglu': {'mlp': 'swiglu'},
    'relu2': {'mlp': 'relu2'},
    'rope': {'pos': 'rope'},
    'sincos': {'pos': 'sincos'},
    'nope': {'pos': 'none'},
    'qk_norm': {'qk_norm': True},
    'softcap 15': {'logit_softcap': 15.0},
    'zero_init': {'zero_init': True},
    'lr 3e-3': {'learning_rate': 3e-3, 'min_lr': 3e-4},
    'muon': {'optimizer': 'muon', 'muon_lr': 0.03},
}
SUITES = {
    'gpt': {
        **OPTIONS,
        'linear attention': {'attention': 'linear'},
        'lstm': {'model_type': 'lstm'},
        'kgram_mlp (k=3)': {'model_type': 'kgram_mlp'},
        'rope+rmsnorm+lr 3e-3': {'pos': 'rope', 'norm': 'rmsnorm', 'learning_rate': 3e-3, 'min_lr': 3e-4},
        'rope+relu2+qk_norm+muon': {'pos': 'rope', 'mlp': 'relu2', 'qk_norm': True, 'optimizer': 'muon',
                                    'muon_lr': 0.03, 'learning_rate': 3e-3, 'min_lr': 3e-4},
        'speedrun_cpu': {'file': 'config/speedrun_cpu.py'},
        'speedrun_cpu batch 24': {'file': 'config/speedrun_cpu.py', 'batch_size': 24, 'iters': 0.6},
    },
    # the options every family has (positions are the family's own business: rope rows need its support)
    '4m': {k: OPTIONS[k] for k in ('baseline', 'rmsnorm', 'swiglu', 'relu2', 'qk_norm', 'zero_init', 'lr 3e-3', 'muon')},
}


def run_config(base_config, overrides):
    cfg = dict(base_config)
    overrides = dict(overrides)
    if 'file' in overrides:
        cfg = configure(cfg, argv=[overrides.pop('file')], keys=list(cfg), allow_new=True)
    scale = overrides.pop('iters', 1.0)
    cfg.update(overrides)
    if scale != 1.0:
        cfg['max_iters'] = round(cfg['max_iters'] * scale)
        cfg['lr_decay_iters'] = round(cfg['lr_decay_iters'] * scale)
    return cfg


def make_data(cfg):
    return load_data(cfg['dataset'], cfg['model_type'], cfg['block_size'], cfg)


@torch.no_grad()
def evaluate(model, eval_set):
    model.eval()
    loss = sum(model(**batch)[1].item() for batch in eval_set) / len(eval_set)
    model.train()
    return loss


def train_run(cfg, seed, target_loss, eval_set, data):
    """Train one configuration until its val loss reaches target_loss (None: to the end of its schedule).
    Returns its eval history [(iter, train seconds, val loss)] and its tokens per iteration."""
    torch.manual_seed(seed)
    model_args = {f.name: cfg[f.name] for f in fields(ModelConfig)}
    for k, v in data.model_args.items():
        if model_args[k] in (0, '', None, ()):
            model_args[k] = v
    model = build_model(ModelConfig(**model_args)).to(device)
    optimizer = configure_optimizer(model, cfg['weight_decay'], cfg['learning_rate'], (cfg['beta1'], cfg['beta2']),
                                    device.split(':')[0])
    sampler = torch.Generator().manual_seed(seed)
    accum, B = cfg['gradient_accumulation_steps'], cfg['batch_size']
    history = [(0, 0.0, evaluate(model, eval_set))]
    train_time = 0.0
    threads = torch.get_num_threads()
    now = time.perf_counter if clock == 'wall' else (lambda: time.process_time() / threads)
    for it in range(cfg['max_iters']):
        t0 = now()
        lr = lr_schedule(it, cfg['learning_rate'], cfg['warmup_iters'], cfg['lr_decay_iters'], cfg['min_lr'],
                         cfg['decay_lr'])
        for group in optimizer.param_groups:
            group['lr'] = lr * group.get('lr_scale', 1.0)
        for _ in range(accum):
            batch = {k: v.to(device) for k, v in data.get_batch('train', B, sampler).items()}
            _, loss, _ = model(**batch)
            (loss / accum).backward()
        if cfg['grad_clip'] != 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        train_time += now() - t0
        if (it + 1) % eval_interval == 0 or it + 1 == cfg['max_iters']:
            val = evaluate(model, eval_set)
            if not math.isfinite(val):
                break
            history.append((it + 1, train_time, val))
            if target_loss is not None and val <= target_loss:
                break
    return history, accum * B * (cfg['block_size'] or data.model_args['block_size'])  # 0: the data sets it (4m)


def crossing(history, target_loss):
    """(iterations, seconds) where the val curve first reaches target_loss, interpolated between evals; or None."""
    for (it0, t0, v0), (it1, t1, v1) in zip(history, history[1:]):
        if v1 <= target_loss:
            f = (v0 - target_loss) / (v0 - v1) if v0 > v1 else 1.0
            f = min(max(f, 0.0), 1.0)
            return it0 + f * (it1 - it0), t0 + f * (t1 - t0)
    return None


def main():
    global target
    try:
        configure(globals(), keys=_config_keys)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    base_config = {**{f.name: f.default for f in fields(ModelConfig)}, **TRAINING_DEFAULTS}
    try:  # the base recipe's other keys (data options, out_dir, ...) come along as it sets them
        base_config = configure(base_config, argv=[base], keys=list(base_config), allow_new=True)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if max_iters:
        base_config['max_iters'] = base_config['lr_decay_iters'] = max_iters
        base_config['warmup_iters'] = min(base_config['warmup_iters'], max_iters // 10)
    rows = SUITES[suite]
    names = [n.strip() for n in runs.split(',')] if runs else list(rows)
    unknown = [n for n in names if n not in rows]
    if unknown:
        sys.exit(f"unknown runs {unknown}; suite {suite!r} has: {', '.join(rows)}")
    if 'baseline' not in names:
        names.insert(0, 'baseline')
    if clock not in ('wall', 'cpu') or (clock == 'cpu' and device != 'cpu'):
        sys.exit(f"clock must be 'wall', or 'cpu' on device cpu, not {clock!r}")
    print(f"speedrun: suite {suite}, base {base}, {seeds} seed(s), {torch.get_num_threads()} threads, {clock} clock, "
          f"runs: {', '.join(names)}")

    try:
        data = make_data(base_config)
    except DataError as e:
        sys.exit(f"data error: {e}")
    gen = torch.Generator().manual_seed(4242)  # one fixed val set for every run
    eval_set = [{k: v.to(device) for k, v in data.get_batch('val', eval_batch_size, gen).items()}
                for _ in range(eval_batches)]

    results = {}  # name -> list of per-seed dicts
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    log = open(os.path.splitext(out)[0] + '.jsonl', 'w')
    for name in names:
        cfg = run_config(base_config, rows[name])
        if cfg['block_size'] != base_config['block_size'] or cfg['dataset'] != base_config['dataset']:
            sys.exit(f"run {name!r} changes block_size or dataset: its val loss would not be comparable")
        data_run = make_data(cfg) if cfg['model_type'] != base_config['model_type'] else data
        for s in range(seeds):
            # the baseline runs to the end of its schedule when the target is to be measured
            stop_at = None if (name == 'baseline' and not target) else target
            history, tokens_per_iter = train_run(cfg, 1337 + s, stop_at, eval_set, data_run)
            final_it, final_t, final_val = history[-1]
            row = {'run': name, 'seed': 1337 + s, 'final_iter': final_it, 'final_val': final_val,
                   'train_s': final_t, 'ms_per_iter': 1000 * final_t / max(1, final_it),
                   'tokens_per_iter': tokens_per_iter, 'history': history}
            results.setdefault(name, []).append(row)
            print(f"{name} seed {1337 + s}: val {final_val:.4f} after {final_it} iters, {final_t:.1f}s "
                  f"({row['ms_per_iter']:.1f} ms/iter)", flush=True)
        if name == 'baseline' and not target:
            target = max(r['final_val'] for r in results['baseline'])
            print(f"target val loss: {target:.4f} (the baseline's final val loss, worst of {seeds} seed(s))")
    for name, rs in results.items():
        for r in rs:
            hit = crossing(r['history'], target)
            r['iters_to_target'], r['s_to_target'] = hit if hit else (None, None)
            log.write(json.dumps(r) + '\n')
    log.close()

    table = speedrun_table(results, names, rows)
    print('\n' + table)
    with open(out, 'w') as f:
        f.write(f"Target val loss {target:.4f}; base `{base}`; {seeds} seed(s); {torch.get_num_threads()} threads; "
                f"{clock} clock; "
                f"{time.strftime('%Y-%m-%d')}.\n\n{table}\n")
    print(f"wrote {out}")


def speedrun_table(results, names, rows):
    def mean(values):
        return sum(values) / len(values)

    def stats(rs):
        hits = [r for r in rs if r['iters_to_target'] is not None]
        if len(hits) < len(rs):
            return None
        return mean([r['iters_to_target'] * r['tokens_per_iter'] for r in hits]), mean([r['s_to_target'] for r in hits])

    base_stats = stats(results['baseline'])
    lines = ['| run | options | reached | tokens to target | time to target | tokens vs baseline | time vs baseline | ms/iter | best val |',
             '|---|---|---|---|---|---|---|---|---|']
    for name in names:
        rs = results[name]
        opts = ', '.join(f'{k}={v}' for k, v in rows[name].items()) or 'the CPU recipe'
        reached = sum(r['iters_to_target'] is not None for r in rs)
        best = min(min(v for _, _, v in r['history']) for r in rs)
        ms = mean([r['ms_per_iter'] for r in rs])
        st = stats(rs)
        if st is None:
            lines.append(f"| {name} | {opts} | {reached}/{len(rs)} | — | — | — | — | {ms:.1f} | {best:.4f} |")
            continue
        tokens, seconds = st
        ratio_tokens = f"{tokens / base_stats[0]:.2f}" if base_stats and base_stats[0] else '—'
        ratio_time = f"{seconds / base_stats[1]:.2f}" if base_stats and base_stats[1] else '—'
        lines.append(f"| {name} | {opts} | {reached}/{len(rs)} | {tokens / 1e6:.2f}M | {seconds:.0f}s | {ratio_tokens} | "
                     f"{ratio_time} | {ms:.1f} | {best:.4f} |")
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
