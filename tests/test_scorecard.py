"""The scorecard's metrics (eval.py --mode=scorecard) on hand-made cases: a perfect prediction scores 1.0 (or 0
error), and known wrong cases score what they compute to by hand."""
import json
import os

import numpy as np
import pytest
import torch

import eval as E
import judges as J
from tokenizer import class_ious, depth_abs_rel, depth_delta1, miou, normals_angular_error

CUBE = 'a large red metal cube in the back left'
SPHERE = 'a small blue rubber sphere in the front right'


def test_parse_caption():
    assert E.parse_caption(f'{CUBE} , {SPHERE} .') == [('large', 'red', 'metal', 'cube', 'back', 'left'),
                                                       ('small', 'blue', 'rubber', 'sphere', 'front', 'right')]
    assert E.parse_caption('.') == [] and E.parse_caption('a red thing') == [(None, 'red', None, None, None, None)]


def test_caption_scores_hand_made():
    truth = f'{CUBE} , {SPHERE} .'
    assert E.caption_scores(truth, truth) == (1.0, True)
    assert E.caption_scores(f'{SPHERE} , {CUBE} .', truth) == (1.0, True)  # objects are matched, order is free
    wrong_colour = f"{CUBE.replace('red', 'green')} , {SPHERE} ."
    assert E.caption_scores(wrong_colour, truth) == (pytest.approx(11 / 12), False)  # 1 of 12 attributes wrong
    assert E.caption_scores(f'{CUBE} .', truth) == (0.5, False)  # a missing object costs its 6 attributes
    assert E.caption_scores(f'{CUBE} , {SPHERE} , {CUBE} .', truth) == (pytest.approx(12 / 18), False)  # an extra one too
    assert E.caption_scores('.', '.') == (1.0, True)
    assert E.caption_scores('a red', f'{CUBE} .') == (pytest.approx(1 / 6), False)  # partial objects never match exactly


def test_box_iou_and_boxes_mean_iou_hand_made():
    assert E.box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert E.box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == pytest.approx(1 / 7)  # 1 shared pixel of 4 + 4 - 1
    assert E.box_iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0
    assert E.box_iou((5, 0, 2, 3), (0, 0, 9, 9)) == 0.0  # x1 < x0: an empty box
    truth = [(0, 0, 9, 9), (20, 20, 29, 29)]
    assert E.boxes_mean_iou(truth[::-1], truth) == 1.0  # matched, whatever the order
    assert E.boxes_mean_iou(truth[:1], truth) == 0.5  # a missing box scores 0
    assert E.boxes_mean_iou([(0, 0, 4, 9)] + truth, truth) == pytest.approx(2 / 3)  # an extra one too
    assert E.boxes_mean_iou([], []) == 1.0


def test_pixel_metrics_hand_made():
    t = np.array([[2.0, 4.0], [8.0, 100.0]])
    valid = np.array([[True, True], [True, False]])  # the sky (100) excluded
    assert depth_abs_rel(t, t, valid) == 0.0 and depth_delta1(t, t, valid) == 1.0
    assert depth_abs_rel(2 * t, t, valid) == pytest.approx(1.0) and depth_delta1(2 * t, t, valid) == 0.0
    assert depth_abs_rel(1.2 * t, t, valid) == pytest.approx(0.2) and depth_delta1(1.2 * t, t, valid) == 1.0
    pred = t.copy()
    pred[0, 0] = 3.0  # 1.5x: outside delta < 1.25, abs-rel 0.5 on one pixel of three
    assert depth_delta1(pred, t, valid) == pytest.approx(2 / 3) and depth_abs_rel(pred, t, valid) == pytest.approx(0.5 / 3)
    up, side = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    n = np.stack([up, up])[None]  # (1, 2, 3)
    assert normals_angular_error(n, n) == 0.0
    assert normals_angular_error(np.stack([up, side])[None], n) == pytest.approx(45.0)  # 0 and 90 degrees
    labels = np.array([[0, 1], [1, 2]])
    assert miou(labels, labels, 3) == 1.0
    # class 0: 1 shared pixel of 2, class 1: 1 of 3, class 2: 0 of 1
    assert miou(np.array([[0, 1], [0, 1]]), labels, 3) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    # a class in neither prediction nor truth has no IoU and is left out of the mean
    ious = class_ious(labels, labels, 4)
    assert ious[:3] == [1.0, 1.0, 1.0] and np.isnan(ious[3]) and miou(labels, labels, 4) == 1.0


def test_objects_found_and_crop_window():
    truth = [{'colour': 'red', 'shape': 'cube'}, {'colour': 'blue', 'shape': 'sphere'}]
    assert J.objects_found([{('red', 'cube')}, {('gray', 'cube'), ('blue', 'sphere')}], truth) == 1.0
    assert J.objects_found([{('red', 'cube')}, {('blue', 'cube')}], truth) == 0.5  # the colour alone is not enough
    assert J.objects_found([set(), set()], truth) == 0.0 and J.objects_found([], []) == 1.0
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[10:20, 30:40] = 255
    crop = J.crop_window(img, (30, 10, 39, 19), margin=0, size=10)
    assert crop.shape == (10, 10, 3) and crop.min() == 1.0  # exactly the box, scaled to [0, 1]
    assert J.crop_window(img, (0, 0, 3, 3), jitter=(-5, -5)).shape == (24, 24, 3)  # clipped at the border
    judged = J.ObjectJudge().judge(np.stack([img, img]), [[{'box': (30, 10, 39, 19)}], []])  # untrained: shapes only
    assert len(judged) == 2 and len(judged[0]) == 1 and isinstance(judged[0][0], set) and judged[1] == []


def test_scorecard_markdown_and_direction():
    rows = [('rgb->depth', 'abs-rel (lower)', 0.08, 0.09, 0.07, 0.075),  # lower is better: 0.08 beats 0.09
            ('rgb->semseg', 'mIoU (higher)', 0.2, 0.25, 0.6, None),  # higher is better: 0.2 does not beat 0.25
            ('caption->rgb, CFG scale 3', 'found', 0.2, None, None, None)]
    md = E.scorecard_markdown(rows, ['a note'])
    assert '| rgb->depth | abs-rel (lower) | 0.080 | 0.090 | yes | 0.070 | 0.075 | -0.005 |' in md
    assert '| rgb->semseg | mIoU (higher) | 0.200 | 0.250 | NO | 0.600 |  |  |' in md
    assert '| caption->rgb, CFG scale 3 | found | 0.200 |  |  |  |  |  |' in md and '- a note' in md
    ckpt = {'config': {'input_modalities': ['rgb'], 'target_modalities': ['depth']}}
    assert E.direction_of(ckpt) == 'rgb->depth'
    with pytest.raises(E.DataError, match='specialist'):
        E.direction_of({'config': {'input_modalities': [], 'target_modalities': []}})


def test_val_truth_must_be_clevr_val_split(data_root):
    d = os.path.join(data_root, 'not_clevr')
    os.makedirs(os.path.join(d, 'val'), exist_ok=True)
    np.save(os.path.join(d, 'val', 'caption.npy'), np.zeros((2, 51), dtype=np.int16))
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump({'kind': 'multimodal', 'modalities': {'caption': {}}}, f)
    with pytest.raises(E.DataError, match='prepare.py clevr'):
        E.render_val_truth('not_clevr', 2)


def test_realism_features_of_whole_images():
    """ObjectJudge.scene_features, the feature space of caption -> rgb's realism Frechet distance."""
    import clevr
    torch.manual_seed(0)
    judge = J.ObjectJudge().eval()  # untrained is enough for what is checked here
    a = clevr.render_scenes(24, seed=1, modalities=('rgb',))['rgb']
    b = clevr.render_scenes(24, seed=2, modalities=('rgb',))['rgb']
    fa = judge.scene_features(a)
    assert fa.shape == (24, 256)
    # chunks do not change a row (a batch-mixing bug would), and uint8 vs [0, 1] input is the same image
    assert torch.allclose(judge.scene_features(a, batch_size=5), fa, atol=1e-5)
    assert torch.allclose(judge.scene_features(a.astype(np.float32) / 255), fa, atol=1e-5)
    # other real scenes are closer to real scenes than noise is, and a set is at distance ~0 from itself
    noise = np.random.default_rng(0).integers(0, 256, a.shape).astype(np.uint8)
    assert abs(J.frechet_distance(fa, fa)) < 1e-6
    assert J.frechet_distance(fa, judge.scene_features(b)) < J.frechet_distance(fa, judge.scene_features(noise))


def test_caption_rgb_without_models_is_a_one_line_error(data_root):
    from conftest import run
    import sys
    result = run([sys.executable, 'eval.py', '--mode=caption_rgb'], env_extra={'NANO4M_DATA': data_root}, check=False)
    assert result.returncode != 0 and '--flow_dir, --maskgit_dir, --gpt_dir, --out_dir' in result.stderr
    assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_image_scores_charge_blur_that_psnr_forgives(tmp_path):
    """eval.image_scores (the super-resolution table's columns): the renders themselves score 100 dB and edge F1 1;
    a blurred copy (2x2 box average, enlarged again) keeps a fair PSNR but loses most edges. Catches images
    compared on the wrong scale ([0, 1] vs [0, 255]) or edges taken from the wrong image."""
    import clevr
    from data import save_line_plot
    from eval import image_scores
    from PIL import Image

    class CountingJudge:  # the object judge's interface; the share it returns is passed through
        def found(self, images, objects):
            return [0.5] * len(images)
    rgb = clevr.render_scenes(8, seed=clevr.SPLIT_SEEDS['val'], resolution=64, modalities=('rgb',))['rgb']
    edges = clevr.sobel_edges(rgb)
    exact = image_scores(rgb / 255.0, rgb, edges, CountingJudge(), [[]] * 8)
    assert exact == {'PSNR dB': 100.0, 'edge F1': 1.0, 'objects found': 0.5}
    blur = rgb.astype(np.float32).reshape(8, 32, 2, 32, 2, 3).mean((2, 4)).repeat(2, 1).repeat(2, 2) / 255
    blurred = image_scores(blur, rgb, edges, CountingJudge(), [[]] * 8)
    assert blurred['PSNR dB'] > 24 and blurred['edge F1'] < 0.85
    path = save_line_plot(str(tmp_path / 'plot.png'), {'a': ([1, 2, 4], [3.0, 2.0, 1.5]), 'level': ([1], [2.5])},
                          'x', 'y', logx=True)
    assert Image.open(path).size == (480, 320)
