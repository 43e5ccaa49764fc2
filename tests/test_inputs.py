"""Bad input gets one line that names the fix, never a traceback. Each test runs a script the way a user would
(conftest.run) on a tiny checkpoint trained once per module: a char GPT on shakespeare_char and a 4m on the
synthetic multimodal set of test_fourm."""
import os
import shutil
import sys

import pytest

from conftest import run
from test_fourm import train_args, write_synthetic
from test_train import train


def one_line_error(result, *needles):
    """Exited non-zero with a single-line message holding every needle, and no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope='module')
def gpt_run(shakespeare_char, data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('inputs_gpt'))
    train(out, '--max_iters=2', '--eval_interval=2', env={'NANO4M_DATA': data_root})
    return out


@pytest.fixture(scope='module')
def fourm_run(data_root, tmp_path_factory):
    """A 4m checkpoint trained on its own copy of the synthetic set (so tests may delete the data)."""
    root = str(tmp_path_factory.mktemp('inputs_data'))
    name = write_synthetic(root, name='synth4m_inputs', num_train=64, num_val=8)
    out = str(tmp_path_factory.mktemp('inputs_4m'))
    run(train_args(out, '--max_iters=2', f'--dataset={name}'), env_extra={'NANO4M_DATA': root})
    return out, root, name


def sample(out, *extra, env=None):
    return run([sys.executable, 'sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1',
                '--max_new_tokens=5', *extra], env_extra=env, check=False)


def test_empty_start_generates(gpt_run, data_root):
    result = sample(gpt_run, '--start=', env={'NANO4M_DATA': data_root})
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert '(5 tokens in' in result.stdout  # from the newline token, 5 new ones


@pytest.mark.parametrize('args', [('--temperature=None',), ('--max_new_tokens=None',), ('--start=x', '--top_k=None')])
def test_none_only_where_the_default_is_none_sample(gpt_run, data_root, args):
    key = args[-1][2:].split('=')[0]
    line = one_line_error(sample(gpt_run, *args, env={'NANO4M_DATA': data_root}), f'--{key}', 'got None', 'default')


def test_none_only_where_the_default_is_none_train(shakespeare_char, data_root, tmp_path):
    result = train(str(tmp_path / 'none'), '--max_iters=1', '--batch_size=None', env={'NANO4M_DATA': data_root},
                   check=False)
    one_line_error(result, '--batch_size', 'expected int', 'got None')


def test_none_still_accepted_where_the_default_is_none():
    from configurator import configure
    ns = {'note': None, 'n': 3}
    configure(ns, ['--note=None'])
    assert ns['note'] is None


def test_str_keys_keep_the_raw_text():
    from configurator import configure
    ns = {'start': '\n', 'caption': '', 'n': 1}
    configure(ns, ['--start=42', "--caption='quoted'", '--n=7'])
    assert ns['start'] == '42' and ns['caption'] == "'quoted'" and ns['n'] == 7
    configure(ns, ['--caption=123', '--start=None'])
    assert ns['caption'] == '123' and ns['start'] == 'None'


@pytest.fixture(scope='module')
def digits_run(data_root, tmp_path_factory):
    """A char GPT on a tiny text set whose vocabulary has digits and quotes (Shakespeare's has no digits)."""
    import json
    import numpy as np
    chars = "\n '0123456789abcdequot"
    chars = ''.join(dict.fromkeys(chars))
    d = os.path.join(data_root, 'digits_inputs')
    os.makedirs(d, exist_ok=True)
    ids = np.random.default_rng(0).integers(0, len(chars), 4000).astype(np.uint16)
    ids[:3600].tofile(os.path.join(d, 'train.bin'))
    ids[3600:].tofile(os.path.join(d, 'val.bin'))
    json.dump({'kind': 'text', 'tokenizer': 'char', 'chars': chars, 'vocab_size': len(chars), 'train_tokens': 3600,
               'val_tokens': 400},
              open(os.path.join(d, 'meta.json'), 'w'))
    out = str(tmp_path_factory.mktemp('inputs_digits'))
    train(out, '--max_iters=1', '--eval_interval=1', '--dataset=digits_inputs', env={'NANO4M_DATA': data_root})
    return out


def test_start_that_looks_like_a_number_is_text(digits_run, data_root):
    env = {'NANO4M_DATA': data_root}
    result = sample(digits_run, '--start=42', env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # the sample is the prompt then 5 new tokens: it starts with the text "42" (before the fix, 42 the int was a
    # type error; literal text would have been encoded as something else)
    first = result.stdout.split('---------------')[0]
    assert first.startswith('42') and len(first.rstrip('\n')) >= 2, result.stdout[:200]
    assert '(5 tokens in' in result.stdout
    quoted = sample(digits_run, "--start='quoted'", env=env)
    assert quoted.returncode == 0 and quoted.stdout.startswith("'quoted'"), quoted.stderr[-2000:]


def test_caption_that_looks_like_a_number_is_text(fourm_run):
    out, root, _ = fourm_run
    # '123' is not a caption word: the one-line vocabulary error proves it reached the tokenizer as text
    result = sample(out, '--mode=chain', '--chain=caption->rgb', '--caption=123', env={'NANO4M_DATA': root})
    one_line_error(result, "'123'", 'vocabulary')


@pytest.mark.parametrize('option,needle', [('steps=0', 'an integer >= 1'), ('steps=-2', 'an integer >= 1'),
                                           ('steps=x', 'an integer >= 1'), ('temperature=-1', 'a number >= 0'),
                                           ('top_p=0', '(0, 1]'), ('scheme=greedy', 'maskgit, roar, ar')])
def test_bad_chain_step_option(fourm_run, option, needle):
    out, root, _ = fourm_run
    result = sample(out, '--mode=chain', f'--chain=caption->rgb@{option}', env={'NANO4M_DATA': root})
    one_line_error(result, option, needle)


def test_chain_with_the_dataset_deleted_names_prepare(fourm_run, tmp_path):
    out, root, name = fourm_run
    empty = str(tmp_path / 'no_data')  # the checkpoint's dataset is not under this NANO4M_DATA
    os.makedirs(empty)
    result = sample(out, '--mode=chain', '--chain=caption->rgb', env={'NANO4M_DATA': empty})
    one_line_error(result, 'python prepare.py', name, '--caption')


def test_chain_with_a_tokenizer_deleted_names_prepare(fourm_run, tmp_path):
    """The synthetic set has no fsq tokenizer: mark rgb as fsq in a copy of the checkpoint's meta, so rgb decodes
    with a tokenizer file that is not there (as after deleting data/clevr/tokenizer_rgb.pt)."""
    import torch
    from common import save_checkpoint
    out, root, name = fourm_run
    copy = str(tmp_path / 'fsq')
    os.makedirs(copy)
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    ckpt['data_meta']['modalities']['rgb'].update(codec='fsq', tokenizer='tokenizer_rgb.pt')
    save_checkpoint(os.path.join(copy, 'ckpt.pt'), ckpt)
    result = sample(copy, '--mode=chain', '--chain=caption->rgb', '--caption=w1 w2', env={'NANO4M_DATA': root})
    one_line_error(result, 'tokenizer_rgb.pt', 'python prepare.py clevr', f'--name={name}')


def broken_copies(src, tmp_path):
    data = open(os.path.join(src, 'ckpt.pt'), 'rb').read()
    dirs = {}
    for kind, blob in (('truncated', data[:len(data) // 2]), ('garbage', os.urandom(4096))):
        d = str(tmp_path / kind)
        os.makedirs(d)
        with open(os.path.join(d, 'ckpt.pt'), 'wb') as f:
            f.write(blob)
        dirs[kind] = d
    return dirs


@pytest.mark.parametrize('kind', ['truncated', 'garbage'])
def test_broken_checkpoint_sample(gpt_run, data_root, tmp_path, kind):
    d = broken_copies(gpt_run, tmp_path)[kind]
    one_line_error(sample(d, env={'NANO4M_DATA': data_root}), 'not a readable checkpoint', '--ckpt=best')


@pytest.mark.parametrize('kind', ['truncated', 'garbage'])
def test_broken_checkpoint_train_resume(gpt_run, data_root, tmp_path, kind):
    d = broken_copies(gpt_run, tmp_path)[kind]
    result = train(d, '--max_iters=4', '--init_from=resume', env={'NANO4M_DATA': data_root}, check=False)
    one_line_error(result, 'not a readable checkpoint', 're-train')


def test_compile_is_refused_in_sample(gpt_run, data_root):
    one_line_error(sample(gpt_run, '--compile=True', env={'NANO4M_DATA': data_root}), '--compile=True', 'training')
