"""
CPU speedrun: how many tokens and how much wall-clock each architecture / optimizer option needs to reach the
val loss the baseline recipe reaches at the end of its schedule (2000 iterations for the GPT CPU recipe).

    python speedrun.py                                        # the GPT table: every option, 2 seeds
    python speedrun.py --runs=baseline,muon,speedrun_cpu      # some rows only
    python speedrun.py --max_iters=200 --target=2.5 --seeds=1 --runs=baseline,rope   # a quick check
    python speedrun.py --suite=4m --base=config/nano4m_cpu.py # the 4M table (options every family has)
    python speedrun.py --suite=mup                            # μP: learning-rate basins at 4 widths, SP vs μP
    python speedrun.py --suite=mup --quick                    # the same at 3 small widths, 1 seed (2.5 min)
    python speedrun.py --suite=mup_4m                         # the 4M's basins (clevr)
    python speedrun.py --suite=coord_check                    # μP's coordinate check

Everything runs in this process, one run after another, on the same machine: first the baseline for every
seed (its final val loss, the worst over seeds, becomes the target unless --target is given), then every other
run, each stopped as soon as its val loss reaches the target. Val loss is measured every eval_interval
iterations on one fixed set of val batches, the same for every run; the crossing is interpolated linearly
between the two evals around it. Time counts training steps only (batches, forward, backward, update), not
evals. The table goes to stdout and to --out (markdown); the rows to --out with .jsonl.

The μP suites (see mup_sweep) train every (width, learning rate, seed) for the same tokens, SP and μP, and plot
final val loss against learning rate, one curve per width; each finished run is a line of the .jsonl, so an
interrupted sweep, or several processes splitting it with --widths / --lrs, picks up where it stopped.

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
from data import DataError, load_data, save_line_plot
from model import ModelConfig, build_model
from optim import configure_optimizer

# -----------------------------------------------------------------------------
base = 'config/train_shakespeare_char_cpu.py'  # the recipe every run starts from
suite = 'gpt'               # 'gpt' | '4m': which rows (see SUITES); 'mup' | 'mup_4m' | 'mup_muon' | 'coord_check'
                            # (MUP_SUITES)
runs = ''                   # comma-separated row names; '' runs the whole suite
seeds = 2
target = 0.0                # val loss to reach; 0 measures it: the baseline's final val loss (worst seed)
max_iters = 0               # 0: the base recipe's; else it replaces the base's max_iters and lr_decay_iters (μP
                            # suites: iterations per run, warm-up a tenth of them; 0: the suite's)
eval_interval = 50
eval_batches = 8            # fixed val batches per eval...
eval_batch_size = 32        # ...of this many sequences
device = 'cpu'
clock = 'wall'              # 'wall' | 'cpu': time in process CPU seconds / threads, which other jobs on a shared
                            # machine do not inflate (one thread: the wall time the run takes on an idle core)
out = 'out-speedrun/speedrun.md'  # the table; the per-run rows and eval curves go next to it (.jsonl); μP suites:
                                  # out-mup/<suite>.md, .jsonl and .png unless given
quick = False               # μP suites: 3 small widths, 1 seed, 100 iterations
widths = ''                 # μP suites: comma-separated widths to run ('' = the suite's)
lrs = ''                    # μP suites: comma-separated log2 learning rates to run ('' = the suite's)
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
        if not math.isfinite(loss.item()):  # diverged: no later eval can recover
            history.append((it + 1, train_time, float('inf')))
            break
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
    if suite in MUP_SUITES:
        return mup_main()
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


# -----------------------------------------------------------------------------
# μP: does a learning rate tuned at one width hold at the others?

MUP_SUITES = {
    # GPT on Shakespeare-char, depth 2 fixed, widths 64-512 (4 heads: head_dim grows with width, so the attention
    # scale matters); base width 128, the CPU recipe's; 128 runs, ~130 CPU-minutes (width 512: 90). No gradient
    # clipping: clipping by the global norm rescales every layer's update by a factor that itself depends on the
    # width, which would blur both parametrisations.
    'mup': dict(base='config/train_shakespeare_char_cpu.py', widths=(64, 128, 256, 512), log2_lrs=tuple(range(-13, -5)),
                seeds=2, iters=200, model=dict(n_layer=2, n_head=4, mup_base_width=128),
                train=dict(grad_clip=0.0)),
    # the 4M on clevr, at a short budget: 2+2 layers, batch 16, 7 learning rates, 1 seed
    'mup_4m': dict(base='config/nano4m_cpu.py', widths=(64, 128, 256), log2_lrs=tuple(range(-12, -5)), seeds=1,
                   iters=150, model=dict(n_layer=2, n_layer_dec=2, n_head=4, mup_base_width=128),
                   train=dict(grad_clip=0.0, batch_size=16)),
    # Muon under μP: its own learning rate (muon_lr) swept, AdamW's (embeddings, head, norms) fixed at 2^-9
    'mup_muon': dict(base='config/train_shakespeare_char_cpu.py', widths=(64, 128, 256), log2_lrs=tuple(range(-8, -2)),
                     seeds=1, iters=200, swept='muon_lr', model=dict(n_layer=2, n_head=4, mup_base_width=128),
                     train=dict(grad_clip=0.0, optimizer='muon', learning_rate=2 ** -9,
                                min_lr=2 ** -9 / 10)),
    # mean |activation| per layer after a few Adam steps, widths 32-512 (see coord_check)
    'coord_check': dict(base='config/train_shakespeare_char_cpu.py', widths=(32, 64, 128, 256, 512), seeds=3,
                        steps=4, lr=1e-2, model=dict(n_layer=2, n_head=4, mup_base_width=32)),
}
MUP_QUICK = dict(widths=(32, 64, 128), seeds=1, iters=100)


def coord_check(model_args, widths, batches, lr=1e-2, seed=0):
    """For each parametrisation ('sp', 'mup') and width: {layer: mean |activation|} in the forward pass of every one
    of len(batches) Adam steps (at learning rate lr, no schedule), for the embeddings (before the first block), each
    block's output and the logits of a GPT. Under μP every layer's value stays the same as the width grows; under the
    standard parametrisation the updates move the blocks and logits by more the wider the model (Tensor Programs V).
    Returns {param: {width: [{layer: value} per step]}}."""
    result = {}
    for param in ('sp', 'mup'):
        for width in widths:
            torch.manual_seed(seed)
            config = ModelConfig(**{**model_args, 'n_embd': width, 'mup': param == 'mup'})
            model = build_model(config)
            optimizer = configure_optimizer(model, 0.0, lr, (0.9, 0.95), 'cpu')
            record = {}
            layers = [('embeddings', model.drop)] + [(f'block {i + 1}', b) for i, b in enumerate(model.blocks)]
            for name, module in layers:
                module.register_forward_hook(
                    lambda m, i, out, name=name: record.__setitem__(name, out.abs().mean().item()))
            steps = []
            for idx, targets in batches:
                logits, loss, _ = model(idx, targets)
                record['logits'] = logits.abs().mean().item()
                steps.append(dict(record))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            result.setdefault(param, {})[width] = steps
    return result


def mup_main():
    spec = MUP_SUITES[suite]
    out_md = out if out != 'out-speedrun/speedrun.md' else f'out-mup/{suite}.md'
    stem = os.path.splitext(out_md)[0]
    os.makedirs(os.path.dirname(out_md) or '.', exist_ok=True)
    run_widths = tuple(int(w) for w in widths.split(',')) if widths else \
        (MUP_QUICK['widths'] if quick else spec['widths'])
    base_file = spec['base'] if base == 'config/train_shakespeare_char_cpu.py' else base
    base_config = {**{f.name: f.default for f in fields(ModelConfig)}, **TRAINING_DEFAULTS}
    try:
        base_config = configure(base_config, argv=[base_file], keys=list(base_config), allow_new=True)
        data = make_data(base_config)
    except (ConfigError, DataError) as e:
        sys.exit(f"{'data' if isinstance(e, DataError) else 'config'} error: {e}")
    base_config.update(spec['model'])
    model_args = {f.name: base_config[f.name] for f in fields(ModelConfig)}
    for k, v in data.model_args.items():
        if model_args[k] in (0, '', None, ()):
            model_args[k] = v

    if suite == 'coord_check':
        gen = torch.Generator().manual_seed(0)
        batches = [data.get_batch('train', 16, gen) for _ in range(spec['steps'] + 1)]
        results = [coord_check(model_args, run_widths, [(b['idx'], b['targets']) for b in batches], spec['lr'], seed)
                   for seed in range(spec['seeds'])]
        last = {p: {w: {k: sum(r[p][w][-1][k] for r in results) / len(results) for k in results[0][p][w][-1]}
                    for w in run_widths} for p in ('sp', 'mup')}
        layer_names = list(last['sp'][run_widths[0]])
        lines = [f"Mean |activation| after {spec['steps']} Adam steps at lr {spec['lr']:g} (mean of {spec['seeds']} "
                 f"seeds); GPT, {base_config['n_layer']} layers; muP base width {spec['model']['mup_base_width']}; "
                 f"{time.strftime('%Y-%m-%d')}.\n", '| param | layer | ' + ' | '.join(f'width {w}' for w in run_widths)
                 + ' | widest / narrowest |', '|---|---|' + '---|' * (len(run_widths) + 1)]
        for p in ('sp', 'mup'):
            for k in layer_names:
                v = [last[p][w][k] for w in run_widths]
                lines.append(f"| {p} | {k} | " + ' | '.join(f'{x:.3g}' for x in v) + f" | {v[-1] / v[0]:.2f} |")
        table = '\n'.join(lines)
        panels = {p: {k: ([math.log2(w) for w in run_widths], [math.log10(last[p][w][k]) for w in run_widths])
                      for k in layer_names} for p in ('sp', 'mup')}
        save_panels(stem + '.png', panels, 'log2 width', 'log10 mean |activation|',
                    {'sp': 'standard (SP)', 'mup': 'muP'})
    else:
        iters = max_iters or (MUP_QUICK['iters'] if quick else spec['iters'])
        seeds_ = MUP_QUICK['seeds'] if quick else spec['seeds']
        run_lrs = tuple(int(x) for x in lrs.split(',')) if lrs else spec['log2_lrs']
        gen = torch.Generator().manual_seed(4242)  # one fixed val set for every run
        eval_set = [{k: v.to(device) for k, v in data.get_batch('val', eval_batch_size, gen).items()}
                    for _ in range(eval_batches)]
        log_path = stem + '.jsonl'
        rows = [json.loads(line) for line in open(log_path)] if os.path.exists(log_path) else []
        done = {(r['param'], r['width'], r['log2_lr'], r['seed'], r['iters']) for r in rows}
        global eval_interval
        eval_interval = iters  # the final val loss is what the basin plots
        print(f"{suite}: base {base_file}, widths {run_widths}, log2 lr {run_lrs}, {seeds_} seed(s), {iters} iterations, "
              f"{torch.get_num_threads()} threads -> {log_path}")
        for width in run_widths:
            for param in ('sp', 'mup'):
                for log2_lr in run_lrs:
                    for s in range(seeds_):
                        if (param, width, log2_lr, 1337 + s, iters) in done:
                            continue
                        lr = 2.0 ** log2_lr
                        swept = {spec['swept']: lr} if 'swept' in spec else {'learning_rate': lr, 'min_lr': lr / 10}
                        cfg = {**base_config, **spec['train'], 'n_embd': width, 'mup': param == 'mup', **swept,
                               'max_iters': iters, 'lr_decay_iters': iters, 'warmup_iters': iters // 10}
                        history, _ = train_run(cfg, 1337 + s, None, eval_set, data)
                        it, seconds, val = history[-1]
                        row = dict(param=param, width=width, log2_lr=log2_lr, seed=1337 + s, iters=iters,
                                   final_val=val if math.isfinite(val) else None, train_s=seconds)
                        print(f"{param} width {width} lr 2^{log2_lr}: val {val:.4f} ({seconds:.0f}s)", flush=True)
                        with open(log_path, 'a') as f:
                            f.write(json.dumps(row) + '\n')
                        rows.append(row)
        table = mup_table([r for r in rows if r['iters'] == iters], stem + '.png', spec['model']['mup_base_width'])
    print('\n' + table)
    with open(out_md, 'w') as f:
        f.write(table + '\n')
    print(f"wrote {out_md} and {stem}.png")


def mup_basins(rows):
    """rows -> {param: {width: {log2_lr: final val loss, mean over seeds; inf if any seed diverged}}}."""
    runs = {}
    for r in rows:
        runs.setdefault(r['param'], {}).setdefault(r['width'], {}).setdefault(r['log2_lr'], []).append(
            r['final_val'] if r['final_val'] is not None else float('inf'))
    return {p: {w: {lr: sum(v) / len(v) for lr, v in sorted(by_lr.items())} for w, by_lr in sorted(ws.items())}
            for p, ws in runs.items()}


def mup_table(rows, png, base_width):
    """The basin table and plot: per parametrisation, each width's best learning rate and loss, how far the best
    learning rate moves across widths, and what the learning rate found at the base width gives at the widest."""
    basins = mup_basins(rows)
    lines = [f"{len({r['seed'] for r in rows})} seed(s), {rows[0]['iters']} iterations per run; final val loss, mean "
             f"over seeds (inf: diverged); {time.strftime('%Y-%m-%d')}.\n"]
    for p, ws in basins.items():
        lrs_ = sorted({lr for by_lr in ws.values() for lr in by_lr})
        lines += [f"**{p}**\n", '| width | ' + ' | '.join(f'2^{lr}' for lr in lrs_) + ' | best lr | best loss |',
                  '|---|' + '---|' * (len(lrs_) + 2)]
        for w, by_lr in ws.items():
            best = min(by_lr, key=by_lr.get)
            lines.append(f"| {w} | " + ' | '.join(f'{by_lr[lr]:.4f}' if lr in by_lr else '' for lr in lrs_)
                         + f" | 2^{best} | {by_lr[best]:.4f} |")
        bests = {w: min(by_lr, key=by_lr.get) for w, by_lr in ws.items()}
        best_losses = [ws[w][bests[w]] for w in ws]
        lines.append(f"\nbest lr moves {max(bests.values()) - min(bests.values())} step(s) of 2x across widths "
                     f"{min(ws)}-{max(ws)}; wider never worse at its best: "
                     f"{all(b <= a for a, b in zip(best_losses, best_losses[1:]))}\n")
        narrow, wide = (base_width if base_width in ws else min(ws)), max(ws)
        if narrow != wide and bests[narrow] in ws[wide]:
            got, own = ws[wide][bests[narrow]], ws[wide][bests[wide]]
            lines.append(f"transfer: width {narrow}'s best lr 2^{bests[narrow]} at width {wide}: {got:.4f}, against "
                         f"its own best (2^{bests[wide]}) {own:.4f}: +{got - own:.4f}\n")
    finite = [v for ws in basins.values() for by_lr in ws.values() for v in by_lr.values() if math.isfinite(v)]
    top = min(max(finite), min(finite) + 1.5)  # diverged and far-off runs sit at the top edge
    panels = {p: {f'width {w}': (list(by_lr), [min(v, top) for v in by_lr.values()]) for w, by_lr in ws.items()}
              for p, ws in basins.items()}
    save_panels(png, panels, 'log2 learning rate', 'final val loss', {'sp': 'standard (SP)', 'mup': 'muP'},
                ylim=(min(finite), top))
    return '\n'.join(lines)


def save_panels(path, panels, xlabel, ylabel, titles, ylim=None):
    """{panel: series} -> one PNG of line plots side by side (data.save_line_plot each), on one y range."""
    from PIL import Image
    if ylim is None:
        ys = [y for series in panels.values() for _, sy in series.values() for y in sy]
        ylim = (min(ys), max(ys))
    images = []
    for name, series in panels.items():
        save_line_plot(path, series, xlabel, ylabel, titles.get(name, name), size=(520, 340), ylim=ylim)
        images.append(Image.open(path).convert('RGB'))
    canvas = Image.new('RGB', (sum(im.width for im in images), max(im.height for im in images)), (255, 255, 255))
    for i, im in enumerate(images):
        canvas.paste(im, (sum(x.width for x in images[:i]), 0))
    canvas.save(path)


if __name__ == '__main__':
    main()
