"""The vlm family (vlm.py) and its data (data.VQAData): projector shapes, which positions the loss counts, cached vs
uncached answers, batches that match their scenes, and train -> checkpoint -> sample.py --mode=vqa -> eval.py."""
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run
from data import VQAData, pack_turns, question_turns, vqa_image, vqa_question
from model import ModelConfig, build_model
from vlm import pixel_shuffle


def tiny_vlm(**kw):
    args = dict(model_type='vlm', vocab_size=40, block_size=16 + 12, n_layer=2, n_head=2, n_embd=16, image_size=32,
                in_channels=3, patch_size=4, pixel_shuffle=2, n_layer_vision=1, grid_h=8, grid_w=8)
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**args, **kw})).eval()


def test_pixel_shuffle_folds_2x2_neighbours():
    side, C = 4, 3
    x = torch.arange(side * side)[None, :, None].float().repeat(1, 1, C)  # patch k holds the value k
    y = pixel_shuffle(x, side, 2)
    assert y.shape == (1, 4, 4 * C)
    # token 0 holds patches (0,0), (0,1), (1,0), (1,1) = raster ids 0, 1, 4, 5; token 1 the next 2x2 block to the
    # right (bug caught: a permute that folds a row of 4 patches instead of a 2x2 square)
    assert y[0, 0, ::C].tolist() == [0, 1, 4, 5]
    assert y[0, 1, ::C].tolist() == [2, 3, 6, 7]
    assert y[0, 3, ::C].tolist() == [10, 11, 14, 15]


@pytest.mark.parametrize('vision,shuffle,tokens', [('pixels', 2, 16), ('pixels', 1, 64), ('tokenizer', 2, 16)])
def test_projector_shapes(vision, shuffle, tokens):
    model = tiny_vlm(vision=vision, pixel_shuffle=shuffle, block_size=tokens + 12)
    image = torch.rand(3, 3, 32, 32) * 2 - 1 if vision == 'pixels' else torch.randn(3, 64, 3)  # 8x8 cells x 3 features
    assert model.num_image_tokens() == tokens
    assert model.image_tokens(image).shape == (3, tokens, 16)  # (B, image tokens, LM width)
    assert model.projector.in_features == 16 * shuffle * shuffle


def test_packed_turns_put_the_loss_on_the_answers_and_eos_only():
    pad, eos = 0, 1
    questions = np.array([[5, 6, 7, 0, 0], [5, 7, 0, 0, 0], [4, 4, 4, 4, 7]])  # 7 is '?'
    turns, lengths = question_turns(questions, np.array([9, 8, 3]), pad, eos)
    assert turns[0].tolist() == [5, 6, 7, 9, 1, 0, 0] and lengths.tolist() == [5, 4, 7]
    idx, targets = pack_turns(turns, lengths, [[0, 1, 2], [2, 0]], 10, pad)
    # sample 0: turns 0 and 1 fit in 11 tokens, turn 2 does not; sample 1: turn 2, then turn 0 does not fit
    assert idx.tolist() == [[5, 6, 7, 9, 1, 5, 7, 8, 1, 0], [4, 4, 4, 4, 7, 3, 1, 0, 0, 0]]
    # '?' predicts the answer, the answer predicts <eos>; question words and padding never count (bug caught: an
    # off-by-one that trains the model to predict the question, or to answer one token late)
    assert targets.tolist() == [[-1, -1, 9, 1, -1, -1, 8, 1, -1, -1], [-1, -1, -1, -1, 3, 1, -1, -1, -1, -1]]


@pytest.mark.parametrize('vision', ['pixels', 'none'])
def test_loss_counts_only_the_marked_text_positions(vision):
    model = tiny_vlm(vision=vision)
    B, T = 2, 10
    idx = torch.randint(2, 40, (B, T))
    targets = torch.full((B, T), -1)
    targets[:, 6], targets[:, 7] = 11, 1
    image = torch.rand(B, 3, 32, 32) * 2 - 1 if vision == 'pixels' else None
    logits, loss, _ = model(idx, targets, image=image)
    P = model.num_image_tokens()
    assert logits.shape == (B, P + T, 40)
    # by hand: the text positions start after the P image tokens (bug caught: targets not shifted past the image,
    # so the loss would be read at image positions)
    text = logits[:, P:]
    expected = F.cross_entropy(text[:, 6:8].reshape(-1, 40), targets[:, 6:8].reshape(-1))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_the_answer_depends_on_the_image_and_the_blind_model_has_none():
    model = tiny_vlm()
    idx = torch.randint(2, 40, (2, 8))
    a, _, _ = model(idx, image=torch.zeros(2, 3, 32, 32))
    b, _, _ = model(idx, image=torch.ones(2, 3, 32, 32))
    assert not torch.allclose(a, b)  # bug caught: the image prefix built but never fed to the language model
    blind = tiny_vlm(vision='none')
    assert not hasattr(blind, 'vision') and blind.num_image_tokens() == 0


@pytest.mark.parametrize('vision', ['pixels', 'tokenizer', 'none'])
def test_cached_and_uncached_answers_agree(vision):
    model = tiny_vlm(vision=vision)
    idx = torch.randint(2, 40, (3, 7))
    image = {'pixels': torch.rand(3, 3, 32, 32) * 2 - 1, 'tokenizer': torch.randn(3, 64, 3), 'none': None}[vision]
    cached = model.generate(idx, 5, image=image, kv_cache=True)
    slow = model.generate(idx, 5, image=image, kv_cache=False)
    assert torch.equal(cached, slow)  # bug caught: the prefix dropped from the cache, or fed again after prefill


def test_answer_batches_questions_by_length_like_one_at_a_time():
    model = tiny_vlm()
    questions = torch.tensor([[5, 6, 7, 0, 0], [5, 7, 0, 0, 0], [8, 9, 10, 11, 7]])
    image = torch.rand(3, 3, 32, 32) * 2 - 1
    batched = model.answer(questions, image, pad=0, eos=1, max_new_tokens=3)
    for i in range(3):
        n = int((questions[i] != 0).sum())
        one = model.generate(questions[i:i + 1, :n], 3, image=image[i:i + 1], stop_token=1)[0, n:]
        # bug caught: padding fed as question words, or answers written to the wrong rows
        assert batched[i, :len(one)].tolist() == one.tolist()


@pytest.fixture(scope='module')
def tiny_clevr_vqa(data_root):
    run([sys.executable, 'prepare.py', 'clevr', '--num_train=64', '--num_val=12', '--tokenizer_seconds=1',
         '--name=tiny_clevr_vqa'], env_extra={'NANO4M_DATA': data_root})
    return 'tiny_clevr_vqa'


def test_batches_show_the_question_scene(tiny_clevr_vqa, data_root):
    import clevr
    data = VQAData(tiny_clevr_vqa, {'vision': 'pixels', 'caption_frac': 0.0})
    batch = data.get_batch('val', 8, 3)
    words = data.words
    pixels = clevr.render_scenes(12, seed=clevr.SPLIT_SEEDS['val'], modalities=('rgb',))['rgb']
    with open(os.path.join(data_root, tiny_clevr_vqa, 'val', 'questions.json')) as f:
        val = json.load(f)
    for i in range(8):
        text = ' '.join(words[t] for t in batch['idx'][i].tolist())
        turns = [t.strip() for t in text.split('<eos>') if t.strip().endswith('?') or '?' in t]
        scenes = [{(q['text'] + ' ' + q['answer']) for q in val if q['scene'] == s} for s in range(12)]
        # every turn of a sample is a question (with its answer) about the one scene whose image is shown (bug caught:
        # images indexed by question number, turns drawn from several scenes)
        shown = [s for s in range(12)
                 if torch.equal(batch['image'][i], torch.from_numpy(pixels[s]).permute(2, 0, 1).float() / 127.5 - 1)]
        assert len(shown) == 1 and turns and all(t in scenes[shown[0]] for t in turns), (text, shown)
        assert len(turns) == len(set(turns))  # no question asked twice in one sample
    features = VQAData(tiny_clevr_vqa, {'vision': 'tokenizer', 'caption_frac': 1.0})
    captions = features.get_batch('train', 4, 5)
    assert (captions['idx'][:, 0] == words.index('<caption>')).all()
    # the tokenizer's 8x8 cells of encoder features, as many channels as the model is told (bug caught: the
    # latent's 4 FSQ channels instead of the hidden features, or in_channels left at 3)
    assert captions['image'].shape == (4, 64, features.model_args['in_channels']) and features.model_args['in_channels'] > 4
    # 2 ranks x b see exactly 1 rank x 2b (keyed by global sample index; the batch kind by the batch key alone)
    mixed = VQAData(tiny_clevr_vqa, {'vision': 'pixels', 'caption_frac': 0.5})
    for key in range(6):
        whole = mixed.get_batch('train', 8, key)
        halves = [mixed.get_batch('train', 4, key, rank=r, world_size=2) for r in (0, 1)]
        for k in whole:
            assert torch.equal(whole[k], torch.cat([h[k] for h in halves])), k
    with pytest.raises(Exception, match='caption_frac=0'):
        VQAData(tiny_clevr_vqa, {'vision': 'none', 'caption_frac': 0.25})


def test_question_errors_name_the_fix():
    vqa = {'words': ['<pad>', '<eos>', 'how', 'many', 'things', '?'], 'question_len': 5}
    assert vqa_question(vqa, 'How many things?') == [2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"unknown word\(s\) 'pink'.*vocabulary is how many things \?"):
        vqa_question(vqa, 'how many pink things ?')
    with pytest.raises(ValueError, match='at most 5'):
        vqa_question(vqa, 'how many things things things things')


def test_image_errors_say_what_the_model_can_see(tmp_path):
    from PIL import Image
    meta = {'resolution': 64, 'val_scenes': 12}
    small = str(tmp_path / 'small.png')
    Image.new('RGB', (32, 32)).save(small)
    # bug caught: a wrong-sized picture silently patchified into the wrong number of tokens
    with pytest.raises(ValueError, match='resize it to 64x64'):
        vqa_image('clevr', meta, 'pixels', png=small)
    with pytest.raises(ValueError, match='no such file'):
        vqa_image('clevr', meta, 'pixels', png=str(tmp_path / 'missing.png'))
    with pytest.raises(ValueError, match=r'only see the val split.*0\.\.11'):
        vqa_image('clevr', meta, 'pixels', index=12)
    right = str(tmp_path / 'right.png')
    Image.new('RGB', (64, 64), (255, 0, 0)).save(right)
    pixels = vqa_image('clevr', meta, 'pixels', png=right)
    assert pixels.shape == (1, 3, 64, 64) and pixels[0, 0].eq(1).all() and pixels[0, 1:].eq(-1).all()  # [-1, 1]


def test_train_checkpoint_vqa_and_eval(tiny_clevr_vqa, data_root, tmp_path):
    env = {'NANO4M_DATA': data_root}
    out, blind = str(tmp_path / 'vlm'), str(tmp_path / 'blind')
    common = [f'--dataset={tiny_clevr_vqa}', '--n_layer=1', '--n_layer_vision=1', '--n_head=2', '--n_embd=32',
              '--batch_size=8', '--eval_iters=1', '--max_iters=4', '--eval_interval=4', '--log_interval=1',
              '--warmup_iters=1', '--max_seconds=0', '--device=cpu', '--dtype=float32']
    run([sys.executable, 'train.py', 'config/vlm_clevr_cpu.py', f'--out_dir={out}'] + common, env_extra=env)
    run([sys.executable, 'train.py', 'config/vlm_clevr_cpu.py', f'--out_dir={blind}', '--vision=none',
         '--caption_frac=0'] + common, env_extra=env)
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['model_config']['model_type'] == 'vlm' and ckpt['data_meta']['vqa']['families']
    result = run([sys.executable, 'sample.py', '--mode=vqa', f'--out_dir={out}', '--sample_idx=3', '--device=cpu',
                  '--question=how many red things are left of the cube ?'], env_extra=env)
    answer = result.stdout.strip().splitlines()[-1]
    assert answer.startswith('answer:'), result.stdout
    listed = run([sys.executable, 'sample.py', '--mode=vqa', f'--out_dir={out}', '--sample_idx=0', '--device=cpu'],
                 env_extra=env)
    assert 'caption:' in listed.stdout and 'true caption: a ' in listed.stdout and '(true:' in listed.stdout
    bad = run([sys.executable, 'sample.py', '--mode=vqa', f'--out_dir={out}', '--question=how many pink things ?'],
              env_extra=env, check=False)
    assert bad.returncode != 0 and "unknown word(s) 'pink'" in bad.stderr and 'vocabulary is' in bad.stderr
    unseen = run([sys.executable, 'sample.py', '--mode=vqa', f'--out_dir={out}', '--sample_idx=99',
                  '--question=how many things ?'], env_extra=env, check=False)
    assert unseen.returncode != 0 and 'only see the val split' in unseen.stderr
    fourm = str(tmp_path / '4m')
    run([sys.executable, 'train.py', 'config/nano4m_cpu.py', f'--dataset={tiny_clevr_vqa}', f'--out_dir={fourm}',
         '--n_layer=1', '--n_layer_dec=1', '--n_head=2', '--n_embd=32', '--batch_size=4', '--eval_iters=1',
         '--max_iters=2', '--eval_interval=2', '--log_interval=1', '--dtype=float32', '--device=cpu',
         '--warmup_iters=1', '--max_seconds=0'], env_extra=env)
    result = run([sys.executable, 'eval.py', '--mode=vqa', f'--vlm_dir={out}', f'--blind_dir={blind}',
                  f'--out_dir={fourm}', f'--dataset={tiny_clevr_vqa}'], env_extra=env)
    rows = [line for line in result.stdout.splitlines() if line.startswith('| ')]
    names = [r.split('|')[1].strip() for r in rows]
    assert any(n.startswith('vlm:') for n in names) and any(n.startswith('blind:') for n in names)
    assert any(n.startswith('majority') for n in names) and any('true caption' in n for n in names)
    assert any(n.startswith('4M chain') for n in names)  # the 4M answers through rgb -> caption -> program
    assert any(n == 'by kind' for n in names)  # the second table: query per attribute, with / without a relation
    for r in rows[2:-1]:  # every accuracy is a percentage
        assert all(0 <= float(x) <= 100 for x in re.findall(r'\|\s*(\d+\.\d)\s*(?=\|)', r)), r
    bound = next(r for r in rows if 'true caption' in r)
    assert float(bound.split('|')[-2]) > 80  # the program on the true caption answers nearly everything
    assert os.path.exists(os.path.join(out, 'vqa_examples.png'))
