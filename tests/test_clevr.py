import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clevr  # noqa: E402


@pytest.fixture(scope='module')
def scenes():
    return clevr.render_scenes(64, seed=3)


def test_same_seed_same_scenes_different_seed_different(scenes):
    again = clevr.render_scenes(64, seed=3, chunk_size=16)  # chunking must not change anything
    for m in clevr.ALL_MODALITIES:
        assert np.array_equal(scenes[m], again[m]), m
    assert scenes['objects'] == again['objects']
    other = clevr.render_scenes(64, seed=4, modalities=('rgb',))
    assert not np.array_equal(scenes['rgb'], other['rgb'])
    prefix = clevr.render_scenes(5, seed=3, modalities=('rgb',))
    assert np.array_equal(prefix['rgb'], scenes['rgb'][:5])
    piece = clevr.render_scenes(5, seed=3, modalities=('rgb',), start=20)
    assert np.array_equal(piece['rgb'], scenes['rgb'][20:25])


def test_shapes_and_dtypes(scenes):
    n, R = 64, 64
    assert scenes['rgb'].shape == (n, R, R, 3) and scenes['rgb'].dtype == np.uint8
    assert scenes['depth'].shape == (n, R, R) and scenes['depth'].dtype == np.float32
    assert scenes['normals'].shape == (n, R, R, 3) and scenes['normals'].dtype == np.float32
    assert scenes['semseg'].dtype == np.uint8 and scenes['semseg'].max() <= len(clevr.SHAPES)
    assert set(np.unique(scenes['edges'])) <= {0, 1}
    assert scenes['caption'].shape == (n, clevr.CAPTION_LEN)
    assert scenes['boxes'].shape == (n, clevr.BOXES_LEN)
    assert all(1 <= len(objs) <= clevr.MAX_OBJECTS for objs in scenes['objects'])
    small = clevr.render_scenes(2, seed=0, resolution=32, modalities=('rgb', 'depth'))
    assert small['rgb'].shape == (2, 32, 32, 3) and small['depth'].shape == (2, 32, 32)


def test_semseg_and_instance_match_object_list(scenes):
    for sem, inst, objs in zip(scenes['semseg'], scenes['instance'], scenes['objects']):
        assert inst.max() <= len(objs)
        assert np.array_equal(sem > 0, inst > 0)
        for k, obj in enumerate(objs):
            mask = inst == k + 1
            assert mask.sum() == obj['visible_pixels']
            if mask.any():
                assert np.all(sem[mask] == clevr.SHAPES.index(obj['shape']) + 1)


def test_objects_do_not_overlap_in_3d(scenes):
    for objs in scenes['objects']:
        for i in range(len(objs)):
            for j in range(i):
                a, b = objs[i], objs[j]
                ra = clevr.FOOTPRINT_RADIUS[clevr.SHAPES.index(a['shape'])] * clevr.SIZE_RADIUS[clevr.SIZES.index(a['size'])]
                rb = clevr.FOOTPRINT_RADIUS[clevr.SHAPES.index(b['shape'])] * clevr.SIZE_RADIUS[clevr.SIZES.index(b['size'])]
                assert np.hypot(a['position'][0] - b['position'][0], a['position'][1] - b['position'][1]) > ra + rb


def test_depth_objects_in_front_of_ground_and_sky(scenes):
    # render the empty ground: every object pixel must be nearer than the ground/sky that the same ray hits
    rays = clevr.camera_rays(64)
    t_ground = np.where(rays[:, 2] < 0, -clevr.CAMERA_POS[2] / np.minimum(rays[:, 2], -1e-6), np.inf)
    background = np.where(t_ground < clevr.MAX_GROUND_DISTANCE, t_ground, clevr.FAR_DEPTH).reshape(64, 64)
    obj = scenes['semseg'] > 0
    assert obj.any()
    assert np.all(scenes['depth'][obj] < np.broadcast_to(background, obj.shape)[obj])
    bg = ~obj
    assert np.allclose(scenes['depth'][bg], np.broadcast_to(background, obj.shape)[bg], rtol=1e-4)
    # the sky: invalid, far, zero normals; everything else valid, nearer
    assert np.all(scenes['depth'][~scenes['depth_valid']] == clevr.FAR_DEPTH)
    assert np.all(scenes['depth'][scenes['depth_valid']] < clevr.MAX_GROUND_DISTANCE)
    assert (~scenes['depth_valid']).any() and scenes['depth_valid'].any()


def test_normals_unit_length_and_ground_up(scenes):
    n = scenes['normals']
    valid = scenes['depth_valid']
    assert np.allclose(np.linalg.norm(n[valid], axis=-1), 1, atol=1e-4)
    assert np.all(n[~valid] == 0)
    ground = valid & (scenes['semseg'] == 0)
    assert np.allclose(n[ground], [0, 0, 1])
    # a camera sees only surfaces facing it
    rays = clevr.camera_rays(64).reshape(64, 64, 3)
    assert np.all((n * rays).sum(-1)[valid] < 1e-3)


def test_boxes_contain_visible_pixels(scenes):
    for inst, objs, tokens in zip(scenes['instance'], scenes['objects'], scenes['boxes']):
        visible = [(k, o) for k, o in enumerate(objs) if o['visible_pixels'] > 0]
        decoded = clevr.decode_boxes(tokens, 64)
        assert len(decoded) == len(visible)
        assert sorted(d[0] for d in decoded) == sorted(o['shape'] for _, o in visible)
        for k, o in visible:
            ys, xs = np.nonzero(inst == k + 1)
            x0, y0, x1, y1 = o['box']
            assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
            # some decoded (quantised) box of the same shape contains all of the object's pixels
            assert any(s == o['shape'] and bx0 <= xs.min() and xs.max() <= bx1 and by0 <= ys.min() and ys.max() <= by1
                       for s, bx0, by0, bx1, by1 in decoded)


def test_caption_round_trip_and_content(scenes):
    for text, ids, objs in zip(scenes['caption_text'], scenes['caption'], scenes['objects']):
        assert clevr.decode_caption(ids) == text
        assert np.array_equal(clevr.encode_caption(text), ids)
        n_visible = sum(o['visible_pixels'] > 0 for o in objs)
        assert text.count(' a ') + text.startswith('a ') == n_visible
        for o in objs:
            if o['visible_pixels'] > 0:
                assert f"{o['size']} {o['colour']} {o['material']} {o['shape']}" in text
    ids = clevr.encode_caption('a small red rubber cube in the front left .')
    assert len(ids) == clevr.CAPTION_LEN and ids[10] == clevr.CAPTION_EOS and np.all(ids[11:] == clevr.CAPTION_PAD)


def test_caption_unknown_word_raises():
    with pytest.raises(ValueError, match=r"'dodecahedron'.*vocabulary.*sphere"):
        clevr.encode_caption('a large red metal dodecahedron')


def test_edges_are_sobel_of_rgb(scenes):
    assert np.array_equal(clevr.sobel_edges(scenes['rgb']), scenes['edges'])
    flat = np.full((1, 8, 8, 3), 128, np.uint8)
    assert clevr.sobel_edges(flat).sum() == 0
    step = flat.copy()
    step[:, :, 4:] = 255
    e = clevr.sobel_edges(step)[0]
    assert e[:, 3:5].all() and e[:, :3].sum() == 0 and e[:, 5:].sum() == 0

