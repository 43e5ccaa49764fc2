"""End to end, as a user runs it: prepare.py (offline), train.py, resume, sample.py, torchrun."""
import json
import os
import sys

import torch

from conftest import run

TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4', '--eval_iters=2',
        '--log_interval=1', '--device=cpu', '--compile=False', '--warmup_iters=2', '--learning_rate=3e-3']


def train(out_dir, *extra, env=None, check=True):
    return run([sys.executable, 'train.py', 'config/train_shakespeare_char_cpu.py', f'--out_dir={out_dir}', *TINY,
                *extra], env_extra=env, check=check)


def test_prepare_offline_rebuilds_tiny_shakespeare(shakespeare_char, data_root):
    meta = json.load(open(os.path.join(data_root, 'shakespeare_char', 'meta.json')))
    assert meta['kind'] == 'text' and meta['tokenizer'] == 'char' and 60 <= meta['vocab_size'] <= 65
    total = meta['train_tokens'] + meta['val_tokens']
    assert 1_050_000 <= total <= 1_200_000  # about Tiny Shakespeare's 1,115,394 characters
    train_bin = os.path.getsize(os.path.join(data_root, 'shakespeare_char', 'train.bin'))
    assert train_bin == 2 * meta['train_tokens']  # uint16
    chars = meta['chars']
    import numpy as np
    head = np.fromfile(os.path.join(data_root, 'shakespeare_char', 'train.bin'), dtype=np.uint16, count=60)
    assert ''.join(chars[i] for i in head).startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


def test_train_resume_sample(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'run')
    env = {'NANO4M_DATA': data_root}
    first = train(out, '--max_iters=20', '--eval_interval=10', env=env)
    assert first.stdout.lstrip().startswith('{')  # the resolved config comes first
    assert 'step 20: train loss' in first.stdout and 'iter 19: loss' in first.stdout
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == 20 and not any(k.startswith(('_orig_mod.', 'module.')) for k in ckpt['model'])
    events = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    evals = [e for e in events if e['event'] == 'eval']
    assert [e['iter'] for e in evals] == [0, 10, 20] and evals[-1]['val/loss'] < evals[0]['val/loss']

    second = train(out, '--max_iters=30', '--eval_interval=10', '--init_from=resume', env=env)
    assert 'iter 20: loss' in second.stdout and 'iter 19:' not in second.stdout
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num'] == 30

    sample = run([sys.executable, 'sample.py', f'--out_dir={out}', '--start=ROMEO:', '--num_samples=2',
                  '--max_new_tokens=40', '--device=cpu'], env_extra=env)
    assert sample.stdout.count('ROMEO:') == 2 and '40 tokens' in sample.stdout

    bad = run([sys.executable, 'sample.py', f'--out_dir={out}', '--start=ROMEO\u2122', '--device=cpu'], env_extra=env, check=False)
    assert bad.returncode != 0 and 'outside' in bad.stderr and '\u2122' in bad.stderr


def test_missing_data_names_prepare_command(tmp_path):
    result = train(str(tmp_path / 'x'), '--dataset=shakespeare', env={'NANO4M_DATA': str(tmp_path)}, check=False)
    assert result.returncode != 0 and 'python prepare.py shakespeare' in result.stderr


def test_torchrun_two_ranks_stay_in_sync(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'ddp')
    result = run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
                  'config/train_shakespeare_char_cpu.py', f'--out_dir={out}', *TINY, '--max_iters=6',
                  '--eval_interval=3', '--gradient_accumulation_steps=2'], env_extra={'NANO4M_DATA': data_root})
    assert '"world_size": 2' in result.stdout
    assert 'largest weight difference across 2 ranks 0' in result.stdout
    assert result.stdout.count('step 6: train loss') == 1  # rank 0 alone logs
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num'] == 6


def test_fit_budget_by_hand():
    import importlib
    fit_budget = importlib.import_module('train').fit_budget
    # 90 s left at iteration 10, 1 s steps, 5 s evals every 20: to 80 costs 70 steps + evals at 20, 40, 60, 80 = 90 s;
    # to 81 would add a step and a closing eval (96 s). Catches evals left out of the sum or the closing one forgotten.
    assert fit_budget(100, 10, 10, 1.0, 5.0, 20) == 80
    assert fit_budget(100, 10, 10, 1.0, 0.0, 20) == 100  # no eval cost: every remaining second is a step
    assert fit_budget(5, 10, 10, 1.0, 5.0, 20) == 10     # already over budget: stop where it is, never go back


def test_time_budget_shrinks_the_schedule_and_resume_keeps_it(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'budget')
    env = {'NANO4M_DATA': data_root}
    # a budget already spent when it is checked (after 10 steps: warmup_iters=2 is shorter): the run stops there, its cosine ended at min_lr
    r = train(out, '--max_iters=200', '--lr_decay_iters=200', '--eval_interval=100', '--max_seconds=0.001',
              '--min_lr=1e-4', env=env)
    assert 'time budget' in r.stdout and 'trained 10 iterations' in r.stdout
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == 10 and ckpt['schedule'] == {'max_iters': 10, 'lr_decay_iters': 10}
    events = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    assert [e['max_iters'] for e in events if e['event'] == 'budget'] == [10]
    assert abs(events[-1]['lr'] - 1e-4) < 1e-12  # the closing eval's lr: the schedule was shrunk, not cut off
    # resume: the schedule the budget fixed holds (a re-measured budget would move max_iters and the lr curve)
    r = train(out, '--init_from=resume', '--max_iters=200', '--lr_decay_iters=200', '--eval_interval=100',
              '--max_seconds=0.001', env=env)
    assert 'time budget' not in r.stdout
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num'] == 10
