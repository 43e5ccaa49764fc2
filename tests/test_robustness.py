"""Training you can trust: exact resume, preemption, atomic checkpoints, clear errors, DDP equivalence,
compile and wandb paths. Every test drives the real scripts."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run
from test_train import TINY, train


def events(out_dir, kind='train'):
    return [e for e in map(json.loads, open(os.path.join(out_dir, 'metrics.jsonl'))) if e['event'] == kind]


def test_resume_is_exact(shakespeare_char, data_root, tmp_path):
    env = {'NANO4M_DATA': data_root}
    common = ['--deterministic=True', '--dropout=0.1', '--eval_interval=5', '--lr_decay_iters=20', '--max_iters=20']
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    train(straight, *common, env=env)
    train(split, *common[:-1], '--max_iters=10', env=env)
    train(split, *common, '--init_from=resume', env=env)
    a = {e['iter']: e['loss'] for e in events(straight)}
    b = {e['iter']: e['loss'] for e in events(split)}
    assert sorted(a) == sorted(b) == list(range(20))
    assert all(a[i] == b[i] for i in range(20)), [(i, a[i], b[i]) for i in range(20) if a[i] != b[i]]
    wa = torch.load(os.path.join(straight, 'ckpt.pt'), weights_only=True)['model']
    wb = torch.load(os.path.join(split, 'ckpt.pt'), weights_only=True)['model']
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_checkpoints_and_resumes(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'preempt')
    cmd = [sys.executable, 'train.py', 'config/train_shakespeare_char_cpu.py', f'--out_dir={out}', *TINY,
           '--max_iters=100000', '--eval_interval=100000']
    env = {**os.environ, 'NANO4M_DATA': data_root, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith('iter 5:'):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, ''.join(seen) + rest
    assert 'received SIGTERM' in rest
    stopped_at = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num']
    assert stopped_at >= 6
    resumed = train(out, f'--max_iters={stopped_at + 2}', '--eval_interval=100000', '--init_from=resume',
                    env={'NANO4M_DATA': data_root})
    assert f'iter {stopped_at}: loss' in resumed.stdout


def test_checkpoint_write_failing_halfway_keeps_old_file(tmp_path, monkeypatch):
    import common as train_module
    path = str(tmp_path / 'ckpt.pt')
    train_module.save_checkpoint(path, {'iter_num': 1, 'w': torch.ones(3)})

    def broken_save(obj, f):
        with open(f, 'wb') as fh:
            fh.write(b'half a checkpoint')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(train_module.torch, 'save', broken_save)
    with pytest.raises(OSError):
        train_module.save_checkpoint(path, {'iter_num': 2, 'w': torch.zeros(3)})
    old = torch.load(path, weights_only=True)
    assert old['iter_num'] == 1 and torch.equal(old['w'], torch.ones(3))


def test_keep_last_n_and_best(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'keep')
    train(out, '--max_iters=8', '--eval_interval=2', '--keep_last_n=2', env={'NANO4M_DATA': data_root})
    kept = sorted(f for f in os.listdir(out) if f.startswith('ckpt_'))
    assert kept == ['ckpt_0000006.pt', 'ckpt_0000008.pt']
    best = torch.load(os.path.join(out, 'best.pt'), weights_only=True)
    assert best['best_val_loss'] == min(e['val/loss'] for e in events(out, 'eval'))


@pytest.mark.parametrize('args, env, message', [
    (['--n_layers=3'], {}, "unknown config key 'n_layers'. Did you mean: n_layer"),
    (['--batch_size=0.5'], {}, 'expected int'),
    (['--block_size=2000000'], {}, 'block_size=2000000 is too long'),
    (['--gradient_accumulation_steps=3'], {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '2'},
     'must be divisible by the number of ranks (2)'),
    (['--init_from=resume'], {}, 'does not exist'),
    (['--wandb_log=True', '--max_iters=1'], {'WANDB_MODE': None, 'WANDB_API_KEY': None, 'HOME': '/nonexistent'},
     'wandb login'),
])
def test_bad_input_gets_one_line_error(shakespeare_char, data_root, tmp_path, args, env, message):
    result = train(str(tmp_path / 'bad'), *args, env={'NANO4M_DATA': data_root, **env}, check=False)
    assert result.returncode != 0
    assert message in result.stderr and 'Traceback' not in result.stderr


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'nan')
    result = train(out, '--learning_rate=1e12', '--grad_clip=0.0', '--warmup_iters=0', '--decay_lr=False',
                   '--eval_interval=1', '--max_iters=50', env={'NANO4M_DATA': data_root}, check=False)
    assert result.returncode != 0 and 'non-finite' in result.stderr and 'Traceback' not in result.stderr
    if os.path.exists(os.path.join(out, 'ckpt.pt')):
        ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
        assert all(torch.isfinite(v).all() for v in ckpt['model'].values())


def test_resume_refuses_a_changed_dataset(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'changed')
    train(out, '--max_iters=2', '--eval_interval=1', env={'NANO4M_DATA': data_root})
    other = train(out, '--max_iters=4', '--init_from=resume', '--dataset=shakespeare', env={'NANO4M_DATA': data_root}, check=False)
    assert other.returncode != 0 and ('shakespeare' in other.stderr)
    wrong = train(out, '--max_iters=4', '--init_from=resume', '--n_layer=3', env={'NANO4M_DATA': data_root}, check=False)
    assert wrong.returncode != 0 and 'n_layer=2' in wrong.stderr


def test_ddp_two_ranks_equal_one_rank_with_double_batch(shakespeare_char, data_root, tmp_path):
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    common = ['--max_iters=4', '--eval_interval=4', '--deterministic=True']
    env = {'NANO4M_DATA': data_root}
    train(one, *common, '--batch_size=8', '--gradient_accumulation_steps=1', env=env)
    run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
         'config/train_shakespeare_char_cpu.py', f'--out_dir={two}', *TINY, *common, '--batch_size=4',
         '--gradient_accumulation_steps=2'], env_extra=env)
    wa = torch.load(os.path.join(one, 'ckpt.pt'), weights_only=True)['model']
    wb = torch.load(os.path.join(two, 'ckpt.pt'), weights_only=True)['model']
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert len(events(one, 'eval')) == len(events(two, 'eval'))  # rank 0 alone logs
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))  # and alone writes


def test_compiled_model_trains_and_loads_uncompiled(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'compiled')
    train(out, '--compile=True', '--max_iters=2', '--eval_interval=2', env={'NANO4M_DATA': data_root})
    sample = run([sys.executable, 'sample.py', f'--out_dir={out}', '--max_new_tokens=5', '--num_samples=1',
                  '--device=cpu'], env_extra={'NANO4M_DATA': data_root})
    assert '5 tokens' in sample.stdout


def test_wandb_offline_writes_a_local_run(shakespeare_char, data_root, tmp_path):
    out = str(tmp_path / 'wb')
    train(out, '--wandb_log=True', '--max_iters=3', '--eval_interval=3',
          env={'NANO4M_DATA': data_root, 'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp_path)})
    runs = [d for d in os.listdir(os.path.join(out, 'wandb')) if d.startswith('offline-run')]
    assert runs
    # an offline run keeps config and history in its binary run-<id>.wandb log until `wandb sync`
    log = [f for f in os.listdir(os.path.join(out, 'wandb', runs[0])) if f.endswith('.wandb')]
    blob = open(os.path.join(out, 'wandb', runs[0], log[0]), 'rb').read()
    assert b'n_layer' in blob and b'val/loss' in blob and b'tokens_per_s' in blob
