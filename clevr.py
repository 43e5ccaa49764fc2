"""
A CLEVR-like procedural multimodal scene generator: numpy only, vectorised, seeded and deterministic.

Every scene is 1-5 objects (sphere, cube, cylinder; 8 CLEVR colours; 2 sizes; rubber or metal) resting on a
ground plane, seen by a pinhole camera looking down at an angle. Each pixel casts a ray; exact ray-object
intersections give a z-buffer, so depth, normals and segmentation come for free and agree with the image.

Aligned modalities per scene (H = W = resolution):
    rgb          uint8   (H, W, 3)  Lambert (directional light + ambient), metal highlights, cast shadows
    depth        float32 (H, W)     distance along the ray; sky pixels hold FAR_DEPTH
    depth_valid  bool    (H, W)     False on the sky (no surface within MAX_GROUND_DISTANCE)
    normals      float32 (H, W, 3)  unit surface normals in the WORLD frame (z up, ground = (0,0,1)); sky = 0
    semseg       uint8   (H, W)     0 = background (ground and sky), 1 = sphere, 2 = cube, 3 = cylinder
    instance     uint8   (H, W)     0 = background, k = k-th object of the scene's object list (1-based)
    edges        uint8   (H, W)     1 where the Sobel gradient magnitude of the rgb luminance > EDGE_THRESHOLD
    caption      int16   (CAPTION_LEN,)  word ids (caption_vocab), <eos> then <pad>
    boxes        int16   (BOXES_LEN,)    per object: shape token, x0, y0, x1, y1 bins (boxes_vocab), <eos>, <pad>
    objects      list of JSON-able dicts per scene

semseg holds the shape only (4 classes), not shape x colour (25 classes): colour is already carried by rgb and
the caption, and 4 classes keep the majority-pooled token grid an easy, well-populated target for a tiny model.

Objects hidden completely behind others (0 visible pixels) stay in the object list but are left out of the
caption and the boxes, since nothing in the image shows them.

Questions about the scenes (CLEVR's five families: exist, count, compare_integer, query_attribute,
compare_attribute) are programs over the visible objects, answered exactly from the object list; see the
questions section at the end.
"""

import numpy as np

# -----------------------------------------------------------------------------
# scene vocabulary

SHAPES = ['sphere', 'cube', 'cylinder']  # semseg class = index + 1
COLOURS = ['gray', 'red', 'blue', 'green', 'brown', 'purple', 'cyan', 'yellow']
PALETTE = np.array([  # CLEVR's RGB values for its 8 colours
    [87, 87, 87], [173, 35, 35], [42, 75, 215], [29, 105, 20],
    [129, 74, 25], [129, 38, 192], [41, 208, 208], [255, 238, 51]], dtype=np.uint8)
SIZES = ['small', 'large']
SIZE_RADIUS = np.array([0.4, 0.7], dtype=np.float32)  # radius of a sphere of that size, in world units
MATERIALS = ['rubber', 'metal']
MAX_OBJECTS = 5
SPLIT_SEEDS = {'train': 1000, 'val': 999_000}  # scene i of a split = np.random.default_rng([seed, i])
NUM_SEMSEG_CLASSES = 1 + len(SHAPES)

# shape dimensions relative to the size radius r: cube half-side 0.8r, cylinder radius 0.8r and half-height 0.8r
CUBE_HALF = 0.8
CYL_RADIUS = 0.8
CYL_HALF_HEIGHT = 0.8
# radius of a vertical cylinder around each shape (for non-overlap on the ground) and of a sphere around it
# (for cheap ray culling), relative to r
FOOTPRINT_RADIUS = np.array([1.0, CUBE_HALF * np.sqrt(2), CYL_RADIUS], dtype=np.float32)
BOUNDING_RADIUS = np.array([1.0, CUBE_HALF * np.sqrt(3), np.hypot(CYL_RADIUS, CYL_HALF_HEIGHT)], dtype=np.float32)
CENTER_HEIGHT = np.array([1.0, CUBE_HALF, CYL_HALF_HEIGHT], dtype=np.float32)

# camera, light, ground
CAMERA_POS = np.array([0.0, -7.5, 3.8], dtype=np.float32)
CAMERA_TARGET = np.array([0.0, 0.5, 0.0], dtype=np.float32)
FOV_DEG = 46.0  # vertical = horizontal field of view
PLACEMENT_EXTENT = 2.6  # objects are placed with |x|, |y| <= this
LIGHT_DIR = np.array([-1.0, -1.2, 2.0], dtype=np.float32)
LIGHT_DIR = LIGHT_DIR / np.linalg.norm(LIGHT_DIR)  # unit vector pointing TOWARD the light
AMBIENT = 0.35
DIFFUSE = 0.65
GROUND_ALBEDO = 0.6
SKY_TOP = np.array([0.62, 0.68, 0.78], dtype=np.float32)
SKY_HORIZON = np.array([0.82, 0.84, 0.87], dtype=np.float32)
MAX_GROUND_DISTANCE = 40.0  # ground farther than this is drawn as sky (the horizon)
FAR_DEPTH = 100.0  # depth value stored on the sky
EDGE_THRESHOLD = 0.2  # on the Sobel magnitude of luminance in [0, 1], normalised so a unit step gives 1
EPS = 1e-4

# -----------------------------------------------------------------------------
# token vocabularies for the two sequence modalities

POSITION_DEPTH = ['front', 'middle', 'back']
POSITION_SIDE = ['left', 'center', 'right']
CAPTION_WORDS_PER_OBJECT = 10  # "a large red metal cube in the back left ," (the last "," is a ".")
CAPTION_LEN = MAX_OBJECTS * CAPTION_WORDS_PER_OBJECT + 1  # + <eos>
BOX_BINS = 32
BOXES_LEN = MAX_OBJECTS * 5 + 1


def caption_vocab():
    """The fixed caption word list; a word's id is its index. Special tokens come first."""
    words = ['<pad>', '<eos>', 'a', 'in', 'the', ',', '.']
    words += SIZES + COLOURS + MATERIALS + SHAPES + POSITION_DEPTH + POSITION_SIDE
    return words


_CAPTION_IDS = {w: i for i, w in enumerate(caption_vocab())}
CAPTION_PAD, CAPTION_EOS = _CAPTION_IDS['<pad>'], _CAPTION_IDS['<eos>']


def encode_caption(text, length=CAPTION_LEN):
    """Whitespace-split words -> int16 ids, then <eos>, padded with <pad> to `length`."""
    words = text.split()
    for w in words:
        if w not in _CAPTION_IDS:
            raise ValueError(f"unknown caption word {w!r}; the vocabulary is {caption_vocab()}")
    if len(words) + 1 > length:
        raise ValueError(f"caption has {len(words)} words, more than fit in length {length} with <eos>")
    ids = np.full(length, CAPTION_PAD, dtype=np.int16)
    ids[:len(words)] = [_CAPTION_IDS[w] for w in words]
    ids[len(words)] = CAPTION_EOS
    return ids


def decode_caption(ids):
    """ids -> text, stopping at the first <eos> and skipping <pad>."""
    vocab = caption_vocab()
    words = []
    for i in np.asarray(ids).tolist():
        if i == CAPTION_EOS:
            break
        if i != CAPTION_PAD:
            words.append(vocab[i])
    return ' '.join(words)


def boxes_vocab():
    """<pad>, <eos>, the 3 shape tokens, then one token per coordinate bin (bin b has id 5 + b)."""
    return ['<pad>', '<eos>'] + SHAPES + [f'bin_{b}' for b in range(BOX_BINS)]


BOXES_PAD, BOXES_EOS, BOXES_FIRST_SHAPE, BOXES_FIRST_BIN = 0, 1, 2, 2 + len(SHAPES)


def encode_boxes(objects, resolution):
    """Visible objects (dicts with 'shape' and an inclusive pixel 'box') -> int16 (BOXES_LEN,) tokens.
    x0, y0 quantise down and x1, y1 quantise up (via the bin of the last pixel), so the decoded box always
    contains the object's pixels."""
    cell = resolution / BOX_BINS
    ids = [BOXES_PAD] * BOXES_LEN
    pos = 0
    for obj in objects:
        x0, y0, x1, y1 = obj['box']
        ids[pos] = BOXES_FIRST_SHAPE + SHAPES.index(obj['shape'])
        ids[pos + 1:pos + 5] = [BOXES_FIRST_BIN + int(v // cell) for v in (x0, y0, x1, y1)]
        pos += 5
    ids[pos] = BOXES_EOS
    return np.array(ids, dtype=np.int16)


def decode_boxes(ids, resolution):
    """int tokens -> list of (shape, x0, y0, x1, y1) with inclusive pixel bounds covering whole bins."""
    cell = resolution / BOX_BINS
    ids = np.asarray(ids).tolist()
    out = []
    for pos in range(0, len(ids) - 4, 5):
        if not BOXES_FIRST_SHAPE <= ids[pos] < BOXES_FIRST_BIN:
            break
        b = [i - BOXES_FIRST_BIN for i in ids[pos + 1:pos + 5]]
        out.append((SHAPES[ids[pos] - BOXES_FIRST_SHAPE], int(b[0] * cell), int(b[1] * cell),
                    int(np.ceil((b[2] + 1) * cell)) - 1, int(np.ceil((b[3] + 1) * cell)) - 1))
    return out


def describe_object(obj):
    """The caption phrase of one object, e.g. 'a large red metal cube in the back left'."""
    x, y = obj['position'][0], obj['position'][1]
    third = PLACEMENT_EXTENT / 3  # the placement square split into 3x3 regions
    side = POSITION_SIDE[0 if x < -third else (2 if x > third else 1)]
    depth = POSITION_DEPTH[0 if y < -third else (2 if y > third else 1)]
    return f"a {obj['size']} {obj['colour']} {obj['material']} {obj['shape']} in the {depth} {side}"


def make_caption(objects):
    """Visible objects, left to right in the image -> 'a ... , a ... .'"""
    return ' , '.join(describe_object(o) for o in objects) + ' .' if objects else '.'

# -----------------------------------------------------------------------------
# scene sampling


def sample_scene(rng):
    """One scene's object parameters, placed without 3-D overlap by rejection sampling (deterministic given
    rng). Returns dict of arrays of length n: shape, colour, size, material (ints), x, y, angle (floats)."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    shape = rng.integers(0, len(SHAPES), n)
    colour = rng.integers(0, len(COLOURS), n)
    size = rng.integers(0, len(SIZES), n)
    material = rng.integers(0, len(MATERIALS), n)
    angle = rng.uniform(0, np.pi / 2, n)  # a cube is symmetric under 90 degree turns
    footprint = FOOTPRINT_RADIUS[shape] * SIZE_RADIUS[size]
    xy = np.zeros((n, 2))
    placed = 0
    for _ in range(1000):  # all objects rest on the ground, so 3-D overlap = overlap of the ground footprints
        if placed == n:
            break
        cand = rng.uniform(-PLACEMENT_EXTENT, PLACEMENT_EXTENT, 2)
        dist = np.linalg.norm(xy[:placed] - cand, axis=1)
        if np.all(dist > footprint[:placed] + footprint[placed] + 0.15):
            xy[placed] = cand
            placed += 1
    n = placed  # (in practice always all: 5 objects fill little of the 6x6 square)
    return dict(shape=shape[:n], colour=colour[:n], size=size[:n], material=material[:n],
                x=xy[:n, 0], y=xy[:n, 1], angle=angle[:n])


def camera_rays(resolution):
    """Unit ray directions through the pixel centres, (H*W, 3) float32, row-major from the top-left pixel."""
    forward = CAMERA_TARGET - CAMERA_POS
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    half = np.tan(np.deg2rad(FOV_DEG) / 2)
    coords = ((np.arange(resolution) + 0.5) / resolution * 2 - 1) * half  # (R,)
    u = coords[None, :]  # x grows to the right
    v = -coords[:, None]  # y grows upward, rows go down
    dirs = forward + u[..., None] * right + v[..., None] * up  # (H, W, 3)
    dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    return dirs.reshape(-1, 3).astype(np.float32)

# -----------------------------------------------------------------------------
# exact ray-object intersections on flat arrays of K rays, each with its own object
# ro, rd: (K, 3) ray origins / unit directions; center (K, 3); r (K,) size radius; angle (K,)
# return t (K,) with inf where missed, and unit world normals (K, 3)


def _dot(a, b):
    return np.einsum('ki,ki->k', a, b)


def intersect_sphere(ro, rd, center, r, angle):
    oc = ro - center
    b = _dot(oc, rd)
    disc = b * b - (_dot(oc, oc) - r * r)
    t = -b - np.sqrt(np.maximum(disc, 0))
    t = np.where((disc > 0) & (t > EPS), t, np.inf)
    normal = (ro + np.where(np.isfinite(t), t, 0)[:, None] * rd - center) / r[:, None]
    return t, normal


def intersect_cube(ro, rd, center, r, angle):
    # rotate the ray into the cube's frame (the cube turns about the vertical axis), then the slab test
    c, s = np.cos(angle), np.sin(angle)
    q = ro - center
    ql = np.stack([c * q[:, 0] + s * q[:, 1], -s * q[:, 0] + c * q[:, 1], q[:, 2]], 1)  # (K, 3)
    dl = np.stack([c * rd[:, 0] + s * rd[:, 1], -s * rd[:, 0] + c * rd[:, 1], rd[:, 2]], 1)
    dl = np.where(np.abs(dl) < 1e-9, 1e-9, dl)  # avoid 0/0 for rays parallel to a face
    half = (CUBE_HALF * r)[:, None]
    t1 = (-half - ql) / dl
    t2 = (half - ql) / dl
    tmin = np.minimum(t1, t2)  # (K, 3)
    tnear = tmin.max(1)
    tfar = np.maximum(t1, t2).min(1)
    t = np.where((tnear <= tfar) & (tnear > EPS), tnear, np.inf)
    axis = tmin.argmax(1)  # the face entered last is the one hit
    nl = np.zeros_like(ql)
    nl[np.arange(len(axis)), axis] = -np.sign(dl[np.arange(len(axis)), axis])
    normal = np.stack([c * nl[:, 0] - s * nl[:, 1], s * nl[:, 0] + c * nl[:, 1], nl[:, 2]], 1)
    return t, normal


def intersect_cylinder(ro, rd, center, r, angle):
    radius, half_h = CYL_RADIUS * r, CYL_HALF_HEIGHT * r
    q = ro - center
    a = rd[:, 0] ** 2 + rd[:, 1] ** 2
    b = q[:, 0] * rd[:, 0] + q[:, 1] * rd[:, 1]
    cc = q[:, 0] ** 2 + q[:, 1] ** 2 - radius ** 2
    disc = b * b - a * cc
    a_safe = np.maximum(a, 1e-12)
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a_safe
    z_side = q[:, 2] + t_side * rd[:, 2]
    t_side = np.where((disc > 0) & (a > 1e-12) & (np.abs(z_side) <= half_h) & (t_side > EPS), t_side, np.inf)
    dz = np.where(np.abs(rd[:, 2]) < 1e-9, 1e-9, rd[:, 2])
    t_caps = []
    for cap_z in (half_h, -half_h):
        tc = (cap_z - q[:, 2]) / dz
        px, py = q[:, 0] + tc * rd[:, 0], q[:, 1] + tc * rd[:, 1]
        t_caps.append(np.where((px * px + py * py <= radius ** 2) & (tc > EPS), tc, np.inf))
    t = np.minimum(t_side, np.minimum(*t_caps))
    p = q + np.where(np.isfinite(t), t, 0)[:, None] * rd
    side_normal = np.stack([p[:, 0] / radius, p[:, 1] / radius, np.zeros_like(radius)], 1)
    cap_normal = np.zeros_like(p)
    cap_normal[:, 2] = np.sign(p[:, 2])
    normal = np.where((t == t_side)[:, None], side_normal, cap_normal)
    return t, normal


INTERSECT = [intersect_sphere, intersect_cube, intersect_cylinder]

# -----------------------------------------------------------------------------
# rendering


def _cast(ro, rd, scene_idx, obj, need_normals):
    """Intersect rays with one object per scene. ro: (S, N, 3) or (3,); rd: (N, 3) or (3,); scene_idx (m,)
    picks the scenes that have this object; obj: dict of (m,) arrays (shape, r, angle) and center (m, 3).
    A bounding-sphere test first keeps only the few rays that can hit (objects cover a few % of the image),
    so the exact intersection runs on flat arrays of candidates. Returns (mi, pi, t, normal) for hits."""
    center, bound = obj['center'], obj['bound']
    if ro.ndim == 1:  # primary rays: one origin, N directions
        oc = ro[None, :] - center  # (m, 3)
        b = oc @ rd.T  # (m, N)
        cc = (oc * oc).sum(1)[:, None] - bound[:, None] ** 2
        candidate = b * b - cc > 0
    else:  # shadow rays: N origins per scene, one direction
        oc = ro[scene_idx] - center[:, None, :]  # (m, N, 3)
        b = oc @ rd  # (m, N)
        disc = b * b - ((oc * oc).sum(-1) - bound[:, None] ** 2)
        candidate = (disc > 0) & (-b + np.sqrt(np.maximum(disc, 0)) > 0)
    mi, pi = np.nonzero(candidate)
    t = np.full(len(mi), np.inf, dtype=np.float32)
    normal = np.zeros((len(mi), 3), dtype=np.float32)
    ro_k = np.broadcast_to(ro, (len(mi), 3)) if ro.ndim == 1 else ro[scene_idx[mi], pi]
    rd_k = rd[pi] if rd.ndim == 2 else np.broadcast_to(rd, (len(mi), 3))
    for s, fn in enumerate(INTERSECT):
        sel = np.nonzero(obj['shape'][mi] == s)[0]
        if len(sel) == 0:
            continue
        o = mi[sel]
        ts, ns = fn(ro_k[sel], rd_k[sel], center[o], obj['r'][o], obj['angle'][o])
        t[sel] = ts
        if need_normals:
            normal[sel] = ns
    hit = np.isfinite(t)
    return mi[hit], pi[hit], t[hit], normal[hit]


def sobel_edges(rgb, threshold=EDGE_THRESHOLD):
    """Binary edge map (..., H, W) uint8 from uint8 rgb (..., H, W, 3): Sobel on luminance in [0, 1] with edge
    replication, magnitude divided by 4 so a unit step edge scores 1, then thresholded."""
    lum = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    p = np.pad(lum, [(0, 0)] * (lum.ndim - 2) + [(1, 1), (1, 1)], mode='edge')
    gx = (p[..., :-2, 2:] + 2 * p[..., 1:-1, 2:] + p[..., 2:, 2:]) - (p[..., :-2, :-2] + 2 * p[..., 1:-1, :-2] + p[..., 2:, :-2])
    gy = (p[..., 2:, :-2] + 2 * p[..., 2:, 1:-1] + p[..., 2:, 2:]) - (p[..., :-2, :-2] + 2 * p[..., :-2, 1:-1] + p[..., :-2, 2:])
    return (np.sqrt(gx * gx + gy * gy) / 4 > threshold).astype(np.uint8)


def _render_chunk(scenes, resolution, rays):
    """Render a list of sampled scenes at once. Returns dict of per-pixel arrays and the object lists."""
    S, N = len(scenes), resolution * resolution
    # flatten per-scene objects into slot-major arrays; slot k of every scene is cast together
    slots = []
    for k in range(MAX_OBJECTS):
        idx = np.array([i for i, sc in enumerate(scenes) if len(sc['shape']) > k], dtype=np.int64)
        if len(idx) == 0:
            break
        shape = np.array([scenes[i]['shape'][k] for i in idx])
        r = SIZE_RADIUS[np.array([scenes[i]['size'][k] for i in idx])]
        center = np.stack([np.array([scenes[i]['x'][k] for i in idx]), np.array([scenes[i]['y'][k] for i in idx]),
                           CENTER_HEIGHT[shape] * r], 1).astype(np.float32)
        slots.append((idx, dict(shape=shape, r=r, center=center, bound=BOUNDING_RADIUS[shape] * r,
                                angle=np.array([scenes[i]['angle'][k] for i in idx], dtype=np.float32))))

    # ground plane z = 0 first, then every object updates the z-buffer where it is nearer
    t_ground = np.where(rays[:, 2] < -1e-6, -CAMERA_POS[2] / np.minimum(rays[:, 2], -1e-6), np.inf)
    t_ground = np.where(t_ground < MAX_GROUND_DISTANCE, t_ground, np.inf).astype(np.float32)  # (N,)
    zbuf = np.broadcast_to(t_ground, (S, N)).copy()  # (S, N)
    obj_id = np.zeros((S, N), dtype=np.uint8)  # 0 = ground/sky, k = slot k-1
    normals = np.zeros((S, N, 3), dtype=np.float32)
    normals[:, np.isfinite(t_ground), 2] = 1.0
    for k, (idx, obj) in enumerate(slots):
        mi, pi, t, n = _cast(CAMERA_POS, rays, idx, obj, need_normals=True)
        si = idx[mi]
        nearer = t < zbuf[si, pi]  # each (scene, pixel) pair appears once per slot, so plain indexing is safe
        si, pi = si[nearer], pi[nearer]
        zbuf[si, pi] = t[nearer]
        obj_id[si, pi] = k + 1
        normals[si, pi] = n[nearer]
    surface = np.isfinite(zbuf)  # (S, N)

    # cast shadows: a ray from each lit-facing surface point toward the light that hits any object
    points = CAMERA_POS + np.where(surface, zbuf, 0)[..., None] * rays[None]  # (S, N, 3)
    points += normals * 1e-3  # step off the surface so a point does not shadow itself
    n_dot_l = normals @ LIGHT_DIR  # (S, N)
    lit = np.ones((S, N), dtype=bool)
    for idx, obj in slots:
        mi, pi, _, _ = _cast(points, LIGHT_DIR, idx, obj, need_normals=False)
        lit[idx[mi], pi] = False
    lit &= surface & (n_dot_l > 0)

    # shading: albedo * (ambient + diffuse * lit Lambert) + metal highlights
    albedo = np.full((S, N, 3), GROUND_ALBEDO, dtype=np.float32)
    metal = np.zeros((S, N), dtype=bool)
    for k, (idx, obj) in enumerate(slots):
        colours = np.array([scenes[i]['colour'][k] for i in idx])
        materials = np.array([scenes[i]['material'][k] for i in idx])
        mask = obj_id[idx] == k + 1  # (m, N)
        mi, pi = np.nonzero(mask)
        albedo[idx[mi], pi] = PALETTE[colours[mi]].astype(np.float32) / 255.0
        metal[idx[mi], pi] = materials[mi] == 1
    diffuse = np.where(lit, n_dot_l, 0.0)
    shade = AMBIENT + DIFFUSE * np.where(metal, 0.75, 1.0) * diffuse  # metal: less diffuse, more specular
    color = albedo * shade[..., None]
    reflect = 2 * n_dot_l[..., None] * normals - LIGHT_DIR  # mirror of the light direction about the normal
    spec = np.clip(-(reflect * rays[None]).sum(-1), 0, 1) ** 24  # cosine between reflection and view ray
    color += np.where(metal & lit, 0.9 * spec, 0.0)[..., None]
    rows = np.repeat(np.linspace(1, 0, resolution, dtype=np.float32), resolution)  # sky gradient by row
    sky = SKY_HORIZON + (SKY_TOP - SKY_HORIZON) * rows[:, None] ** 2  # (N, 3)
    color = np.where(surface[..., None], color, sky[None])
    rgb = (np.clip(color, 0, 1) * 255 + 0.5).astype(np.uint8)

    H = W = resolution
    semseg_lut = np.zeros((S, MAX_OBJECTS + 1), dtype=np.uint8)
    for k, (idx, obj) in enumerate(slots):
        semseg_lut[idx, k + 1] = obj['shape'] + 1
    out = dict(
        rgb=rgb.reshape(S, H, W, 3),
        depth=np.where(surface, zbuf, FAR_DEPTH).astype(np.float32).reshape(S, H, W),
        depth_valid=surface.reshape(S, H, W),
        normals=normals.reshape(S, H, W, 3),
        semseg=np.take_along_axis(semseg_lut, obj_id.astype(np.int64), 1).reshape(S, H, W),
        instance=obj_id.reshape(S, H, W),
    )
    out['edges'] = sobel_edges(out['rgb'])
    return out


def _object_lists(scenes, instance, resolution):
    """JSON-able object dicts per scene, with visible pixel counts and inclusive pixel boxes."""
    all_objects = []
    for sc, inst in zip(scenes, instance):
        objects = []
        for k in range(len(sc['shape'])):
            ys, xs = np.nonzero(inst == k + 1)
            shape, size = int(sc['shape'][k]), int(sc['size'][k])
            r = float(SIZE_RADIUS[size])
            objects.append(dict(
                shape=SHAPES[shape], colour=COLOURS[int(sc['colour'][k])], size=SIZES[size],
                material=MATERIALS[int(sc['material'][k])],
                position=[round(float(sc['x'][k]), 4), round(float(sc['y'][k]), 4),
                          round(float(CENTER_HEIGHT[shape] * r), 4)],
                rotation_deg=round(float(np.rad2deg(sc['angle'][k])), 2),
                visible_pixels=int(len(xs)),
                box=[int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if len(xs) else None))
        all_objects.append(objects)
    return all_objects


ALL_MODALITIES = ('rgb', 'depth', 'depth_valid', 'normals', 'semseg', 'instance', 'edges', 'caption', 'boxes')


def render_scenes(num_scenes, seed, resolution=64, modalities=ALL_MODALITIES, chunk_size=256, start=0):
    """Render scenes start .. start + num_scenes - 1. Scene i is drawn from np.random.default_rng([seed, i]), so
    it does not depend on num_scenes, start or chunk_size (render_scenes(10, s) is a prefix of
    render_scenes(100, s), and a split can be rendered in pieces with start).
    Returns dict: each requested modality as an array with a leading (num_scenes,) axis, plus 'objects'
    (list of lists of dicts) and 'caption_text' (list of str). Ask only for what you need: normals and depth
    of 10k scenes at 64x64 take 0.5 GB and 0.16 GB."""
    rays = camera_rays(resolution)
    out = {m: [] for m in modalities}
    out['objects'], out['caption_text'] = [], []
    for first in range(start, start + num_scenes, chunk_size):
        scenes = [sample_scene(np.random.default_rng([seed, i]))
                  for i in range(first, min(first + chunk_size, start + num_scenes))]
        chunk = _render_chunk(scenes, resolution, rays)
        objects = _object_lists(scenes, chunk['instance'], resolution)
        captions, boxes = [], []
        for objs in objects:
            # caption and boxes name the visible objects, ordered left to right by their box centre
            visible = sorted([o for o in objs if o['visible_pixels'] > 0], key=lambda o: o['box'][0] + o['box'][2])
            captions.append(make_caption(visible))
            boxes.append(encode_boxes(visible, resolution))
        chunk['caption'] = np.stack([encode_caption(c) for c in captions])
        chunk['boxes'] = np.stack(boxes)
        for m in modalities:
            out[m].append(chunk[m])
        out['objects'] += objects
        out['caption_text'] += captions
    for m in modalities:
        out[m] = np.concatenate(out[m])
    return out


# -----------------------------------------------------------------------------
# questions: CLEVR's five question families as small programs over the scene graph
#
# A program is a JSON-able dict; execute() answers it from an object list and question_text() says it in
# words. The generator only asks what the image shows (visible objects), names every referent exactly, and
# the balancer evens the answers out per question form, so the text alone does not give the answer away.

QUESTION_FAMILIES = ['exist', 'count', 'compare_integer', 'query_attribute', 'compare_attribute']
ATTRIBUTES = ['size', 'colour', 'material', 'shape']  # also the order of the words in a noun phrase
ATTRIBUTE_VALUES = {'size': SIZES, 'colour': COLOURS, 'material': MATERIALS, 'shape': SHAPES}
RELATIONS = ['left', 'right', 'front', 'behind']
RELATION_WORDS = {'left': 'left of', 'right': 'right of', 'front': 'in front of', 'behind': 'behind'}
RELATION_AXIS = {'left': 'x', 'right': 'x', 'front': 'y', 'behind': 'y'}
RELATION_MARGIN = 0.35  # world units; objects closer than this along an axis are in neither relation
MIN_VISIBLE_PIXELS = 12  # a scene with an object showing fewer (but some) pixels gets no questions
COMPARE_OPS = ['more', 'fewer', 'equal']
MAX_SET_ATTRIBUTES = 3  # attributes in a filter without a relation
MAX_RELATE_ATTRIBUTES = 2  # attributes on a relation's target and on its anchor: keeps questions short
ANSWERS = ['yes', 'no'] + [str(k) for k in range(MAX_OBJECTS + 1)] + SIZES + COLOURS + MATERIALS + SHAPES
# every word a question or an answer may use, in a fixed order; vqa_vocab() keeps those captions lack
QUESTION_WORDS = (['?', 'are', 'there', 'any', 'how', 'many', 'more', 'fewer', 'than', 'an', 'equal', 'number',
                   'of', 'and', 'what', 'is', 'same', 'as', 'thing', 'things', 'spheres', 'cubes', 'cylinders',
                   'left', 'right', 'in', 'front', 'behind', 'the'] + ATTRIBUTES + ANSWERS)


def question_objects(objects):
    """One scene's object list (render_scenes()['objects'][i]) -> the visible objects as
    {'size', 'colour', 'material', 'shape', 'x', 'y'} with world x (+x = camera's right) and y (+y = away from
    the camera). None when an object is barely visible: whether to count it would be a guess."""
    if any(0 < o['visible_pixels'] < MIN_VISIBLE_PIXELS for o in objects):
        return None
    return [dict(size=o['size'], colour=o['colour'], material=o['material'], shape=o['shape'],
                 x=o['position'][0], y=o['position'][1]) for o in objects if o['visible_pixels'] > 0]


def objects_from_caption(text):
    """A caption as make_caption writes it (or as a model generates it) -> question objects, with x = the
    phrase's place in the caption (objects are listed left to right) and y = its depth region (front 0,
    middle 1, back 2). Phrases that do not parse are skipped, so a malformed caption still gets answers."""
    words = text.split()
    if '.' in words:
        words = words[:words.index('.')]
    phrases, phrase = [], []
    for w in words + [',']:
        if w == ',':
            phrases.append(phrase)
            phrase = []
        else:
            phrase.append(w)
    objects = []
    for k, p in enumerate(phrases):  # "a large red metal cube in the back left"
        if (len(p) == 9 and p[0] == 'a' and p[1] in SIZES and p[2] in COLOURS and p[3] in MATERIALS
                and p[4] in SHAPES and p[5:7] == ['in', 'the'] and p[7] in POSITION_DEPTH and p[8] in POSITION_SIDE):
            objects.append(dict(size=p[1], colour=p[2], material=p[3], shape=p[4], x=k, y=POSITION_DEPTH.index(p[7])))
    return objects

# the executor: the slow obvious code, so it can be trusted as the reference


def matches(obj, filt):
    return all(obj[k] == v for k, v in filt.items())


def related(a, b, relation):
    """Is object a `relation` of object b ('left': a is left of b)? Never true of an object and itself."""
    if a is b:
        return False
    if relation == 'left':
        return a['x'] < b['x'] - RELATION_MARGIN
    if relation == 'right':
        return a['x'] > b['x'] + RELATION_MARGIN
    if relation == 'front':
        return a['y'] < b['y'] - RELATION_MARGIN
    if relation == 'behind':
        return a['y'] > b['y'] + RELATION_MARGIN
    raise ValueError(f"unknown relation {relation!r}; the relations are {RELATIONS}")


def select(spec, objects):
    """The objects a set spec picks, or None when its relation's anchor is not exactly one object."""
    picked = [o for o in objects if matches(o, spec['filter'])]
    if spec.get('relate') is None:
        return picked
    anchors = [o for o in objects if matches(o, spec['relate']['anchor'])]
    if len(anchors) != 1:
        return None
    return [o for o in picked if related(o, anchors[0], spec['relate']['relation'])]


def resolve(ref, objects):
    """The one object a ref picks, or None when it picks none or several (or its anchor does)."""
    picked = select(ref, objects)
    return picked[0] if picked is not None and len(picked) == 1 else None


def execute(program, objects):
    """The answer word to a program on question objects, or None when a referring expression fails."""
    family = program['family']
    if family in ('exist', 'count'):
        picked = select(program['set'], objects)
        if picked is None:
            return None
        if family == 'exist':
            return 'yes' if len(picked) > 0 else 'no'
        return str(len(picked))
    if family == 'compare_integer':
        first, second = select(program['sets'][0], objects), select(program['sets'][1], objects)
        if first is None or second is None:
            return None
        op = program['op']
        holds = len(first) > len(second) if op == 'more' else len(first) < len(second) if op == 'fewer' \
            else len(first) == len(second)
        return 'yes' if holds else 'no'
    if family == 'query_attribute':
        obj = resolve(program['ref'], objects)
        return None if obj is None else obj[program['attribute']]
    if family == 'compare_attribute':
        a, b = resolve(program['refs'][0], objects), resolve(program['refs'][1], objects)
        if a is None or b is None or a is b:  # "is the X the same colour as the X" presupposes two objects
            return None
        return 'yes' if a[program['attribute']] == b[program['attribute']] else 'no'
    raise ValueError(f"unknown question family {family!r}; the families are {QUESTION_FAMILIES}")

# programs -> words


def noun_phrase(filt, plural=False):
    """'large red metal cube', 'small things': adjectives in ATTRIBUTES order, then the shape or 'thing'."""
    words = [filt[k] for k in ATTRIBUTES[:3] if k in filt]
    noun = filt.get('shape', 'thing')
    return ' '.join(words + [noun + 's' if plural else noun])


def _set_phrase(spec, plural):
    """A set or ref in words: 'red things left of the cube'."""
    words = noun_phrase(spec['filter'], plural)
    if spec.get('relate') is not None:
        words += f" {RELATION_WORDS[spec['relate']['relation']]} the {noun_phrase(spec['relate']['anchor'])}"
    return words


def question_text(program):
    family = program['family']
    if family == 'exist':
        return f"are there any {_set_phrase(program['set'], True)} ?"
    if family == 'count':
        spec = program['set']
        if spec.get('relate') is None:
            return f"how many {noun_phrase(spec['filter'], True)} are there ?"
        return (f"how many {noun_phrase(spec['filter'], True)} are {RELATION_WORDS[spec['relate']['relation']]} "
                f"the {noun_phrase(spec['relate']['anchor'])} ?")
    if family == 'compare_integer':
        a, b = (_set_phrase(s, True) for s in program['sets'])
        if program['op'] == 'equal':
            return f"are there an equal number of {a} and {b} ?"
        return f"are there {program['op']} {a} than {b} ?"
    if family == 'query_attribute':
        return f"what {program['attribute']} is the {_set_phrase(program['ref'], False)} ?"
    if family == 'compare_attribute':
        a, b = (_set_phrase(r, False) for r in program['refs'])
        return f"is the {a} the same {program['attribute']} as the {b} ?"
    raise ValueError(f"unknown question family {family!r}; the families are {QUESTION_FAMILIES}")


def _longest_filter(n, exclude=()):
    """A filter of n attributes with the most words: adjectives first (a shape only replaces 'thing')."""
    keys = [k for k in ATTRIBUTES if k not in exclude][:n]
    return {k: ATTRIBUTE_VALUES[k][0] for k in keys}


def _longest_programs():
    """The longest program of every template the generator can make (words do not depend on the values)."""
    def spec(n, relation, exclude=()):
        if relation is None:
            return {'filter': _longest_filter(n, exclude), 'relate': None}
        return {'filter': _longest_filter(MAX_RELATE_ATTRIBUTES, exclude),
                'relate': {'relation': relation, 'anchor': _longest_filter(MAX_RELATE_ATTRIBUTES, exclude)}}
    for relation in [None] + RELATIONS:
        yield {'family': 'exist', 'set': spec(MAX_SET_ATTRIBUTES, relation)}
        yield {'family': 'count', 'set': spec(MAX_SET_ATTRIBUTES, relation)}
        for attribute in ATTRIBUTES:
            ref = spec(MAX_SET_ATTRIBUTES, relation, (attribute,))
            yield {'family': 'query_attribute', 'attribute': attribute, 'ref': ref}
            yield {'family': 'compare_attribute', 'attribute': attribute, 'refs': [ref, ref]}
    for op in COMPARE_OPS:
        yield {'family': 'compare_integer', 'op': op, 'sets': [spec(MAX_SET_ATTRIBUTES, None)] * 2}


QUESTION_LEN = max(len(question_text(p).split()) for p in _longest_programs())  # 28 words
assert QUESTION_LEN <= 36, QUESTION_LEN


def vqa_vocab():
    """caption_vocab() unchanged (caption ids are VQA ids as they are), then '<caption>' (the prompt asking
    for a caption), then the question and answer words captions do not have, in a fixed order."""
    words = caption_vocab() + ['<caption>']
    for w in QUESTION_WORDS:
        if w not in words:
            words.append(w)
    return words


_VQA_IDS = {w: i for i, w in enumerate(vqa_vocab())}
VQA_PAD = _VQA_IDS['<pad>']


def encode_question(text, length=QUESTION_LEN):
    """Whitespace-split words -> int16 ids padded with <pad> to `length`."""
    words = text.split()
    for w in words:
        if w not in _VQA_IDS:
            raise ValueError(f"unknown word {w!r}; the vocabulary is {vqa_vocab()}")
    if len(words) > length:
        raise ValueError(f"question has {len(words)} words, more than the limit QUESTION_LEN = {length}")
    ids = np.full(length, VQA_PAD, dtype=np.int16)
    ids[:len(words)] = [_VQA_IDS[w] for w in words]
    return ids


def decode_question(ids):
    vocab = vqa_vocab()
    return ' '.join(vocab[i] for i in np.asarray(ids).tolist() if i != VQA_PAD)

# generation: random programs whose answers come from execute()


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _canonical(filt):
    return {k: filt[k] for k in ATTRIBUTES if k in filt}


def _random_filter(objects, rng, n, exclude=()):
    """n random attributes; their values half the time from one scene object (so sets are often not empty)
    and half the time uniform (so empty sets, 0 and 'no' happen too)."""
    keys = [k for k in ATTRIBUTES if k not in exclude]
    keys = [keys[i] for i in rng.permutation(len(keys))[:n]]
    if objects and rng.random() < 0.5:
        obj = _pick(rng, objects)
        return _canonical({k: obj[k] for k in keys})
    return _canonical({k: _pick(rng, ATTRIBUTE_VALUES[k]) for k in keys})


def _describe(target, candidates, rng, max_attributes, exclude=()):
    """A filter that picks target alone among candidates: attributes added in random order until it is
    unique, or None when max_attributes of them do not single it out."""
    keys = [k for k in ATTRIBUTES if k not in exclude]
    order = [keys[i] for i in rng.permutation(len(keys))[:max_attributes]]
    filt = {}
    for k in [None] + order:
        if k is not None:
            filt[k] = target[k]
        if all(matches(o, filt) == (o is target) for o in candidates):
            return _canonical(filt)
    return None


def _anchors(objects):
    """(anchor, relation) pairs with no other object within the margin of the anchor along the relation's
    axis, so every object is clearly in the relation or clearly not."""
    pairs = []
    for b in objects:
        for relation in RELATIONS:
            axis = RELATION_AXIS[relation]
            if all(o is b or abs(o[axis] - b[axis]) >= RELATION_MARGIN for o in objects):
                pairs.append((b, relation))
    return pairs


def _relation(objects, rng, anchors, exclude=()):
    """A random clear (anchor, relation) named on its own: (relate dict, anchor, related objects) or None."""
    if not anchors:
        return None
    anchor, relation = _pick(rng, anchors)
    anchor_filter = _describe(anchor, objects, rng, MAX_RELATE_ATTRIBUTES, exclude)
    if anchor_filter is None:
        return None
    near = [o for o in objects if related(o, anchor, relation)]
    return {'relation': relation, 'anchor': anchor_filter}, anchor, near


def _ref(target, objects, rng, anchors, exclude, relational):
    """A ref that picks target and mentions none of `exclude`, with or without a relation; None if none found."""
    if not relational:
        filt = _describe(target, objects, rng, MAX_SET_ATTRIBUTES, exclude)
        return None if filt is None else {'filter': filt, 'relate': None}
    found = _relation(objects, rng, [(b, r) for b, r in anchors if related(target, b, r)], exclude)
    if found is None:
        return None
    relate, _, near = found
    filt = _describe(target, near, rng, MAX_RELATE_ATTRIBUTES, exclude)
    return None if filt is None else {'filter': filt, 'relate': relate}


def _tag(n, relational):
    return f"f{n}" + ('/rel' if relational else '')


def _make_set_question(family, objects, rng, anchors):
    if rng.random() < 0.5:  # with a relation
        found = _relation(objects, rng, anchors)
        if found is None:
            return None
        relate, anchor, near = found
        filt = _random_filter(near or objects, rng, int(rng.integers(MAX_RELATE_ATTRIBUTES + 1)))
        if relate['anchor'].items() <= filt.items():
            return None  # "red cubes left of the red cube": the anchor is the only one, the answer is always 0
        spec = {'filter': filt, 'relate': relate}
    else:
        # exist needs an attribute: "are there any things ?" is always yes
        n = int(rng.integers(1 if family == 'exist' else 0, MAX_SET_ATTRIBUTES + 1))
        spec = {'filter': _random_filter(objects, rng, n), 'relate': None}
    return {'family': family, 'set': spec}, f"{family}/" + _tag(len(spec['filter']), spec['relate'] is not None)


def _make_compare_integer(objects, rng, anchors):
    op = _pick(rng, COMPARE_OPS)
    first, second = (_random_filter(objects, rng, int(rng.integers(1, MAX_SET_ATTRIBUTES + 1))) for _ in range(2))
    if first.items() <= second.items() or second.items() <= first.items():
        return None  # nested sets ("red things" vs "red cubes") make 'fewer' or 'more' a sure answer
    program = {'family': 'compare_integer', 'op': op,
               'sets': [{'filter': first, 'relate': None}, {'filter': second, 'relate': None}]}
    return program, f"compare_integer/{op}/" + _tag(len(first) + len(second), False)


def _make_query_attribute(objects, rng, anchors):
    if not objects:
        return None
    attribute = _pick(rng, ATTRIBUTES)
    ref = _ref(_pick(rng, objects), objects, rng, anchors, (attribute,), rng.random() < 0.5)
    if ref is None:
        return None
    program = {'family': 'query_attribute', 'attribute': attribute, 'ref': ref}
    return program, f"query_attribute/{attribute}/" + _tag(len(ref['filter']), ref['relate'] is not None)


def _make_compare_attribute(objects, rng, anchors):
    if len(objects) < 2:
        return None
    attribute = _pick(rng, ATTRIBUTES)
    a = _pick(rng, objects)
    # half the time a partner that shares the attribute (when there is one): 'yes' is rare otherwise
    same = [o for o in objects if o is not a and o[attribute] == a[attribute]]
    b = _pick(rng, same if same and rng.random() < 0.5 else [o for o in objects if o is not a])
    refs = [_ref(o, objects, rng, anchors, (attribute,), rng.random() < 0.3) for o in (a, b)]
    if None in refs:
        return None
    relational = any(r['relate'] is not None for r in refs)
    program = {'family': 'compare_attribute', 'attribute': attribute, 'refs': refs}
    return program, f"compare_attribute/{attribute}/" + _tag(len(refs[0]['filter']) + len(refs[1]['filter']), relational)


_MAKERS = {
    'exist': lambda objects, rng, anchors: _make_set_question('exist', objects, rng, anchors),
    'count': lambda objects, rng, anchors: _make_set_question('count', objects, rng, anchors),
    'compare_integer': _make_compare_integer,
    'query_attribute': _make_query_attribute,
    'compare_attribute': _make_compare_attribute,
}
GENERATION_TRIES = 4  # tries per wanted question: small scenes run out of distinct questions quickly


def generate_questions(objects, rng, per_family):
    """Up to per_family distinct questions per family about question objects (question_objects' output):
    dicts {'family', 'group', 'text', 'answer', 'program'}. 'group' is the form of the question the balancer
    evens answers over: family, op or attribute, number of filter attributes, relation or not."""
    anchors = _anchors(objects)
    out = []
    for family in QUESTION_FAMILIES:
        texts = set()
        for _ in range(per_family * GENERATION_TRIES):
            if len(texts) == per_family:
                break
            made = _MAKERS[family](objects, rng, anchors)
            if made is None:
                continue
            program, group = made
            text = question_text(program)
            if text in texts:
                continue
            answer = execute(program, objects)
            assert answer is not None, program  # the generator only makes questions with one right answer
            texts.add(text)
            out.append({'family': family, 'group': group, 'text': text, 'answer': answer, 'program': program})
    return out


def balance_questions(candidates, rng, tolerance=0.1):
    """Even the answers out, in two passes. Within each group: with m the count of the group's rarest answer among
    those holding at least 5% of its candidates, every answer is subsampled to at most ceil((1 + tolerance) * m)
    (answers rarer than 5% are kept whole: capping at them would throw nearly everything away). Then within each
    kind of question (the group without its filter count and relation: 'count', 'query_attribute/colour', ...) every
    answer is subsampled to at most ceil((1 + tolerance) * the median answer's count), so the answers the groups
    all favour (0 and 1 for counts of filtered sets) do not add up to a prior. Returns the kept candidates by scene,
    then in their original order."""
    groups = {}
    for i, c in enumerate(candidates):
        groups.setdefault(c['group'], {}).setdefault(c['answer'], []).append(i)
    kinds = {}
    for group in sorted(groups):
        by_answer = groups[group]
        total = sum(len(v) for v in by_answer.values())
        m = min(len(v) for v in by_answer.values() if len(v) >= 0.05 * total)
        cap = int(np.ceil((1 + tolerance) * m))
        for answer in sorted(by_answer):
            kept = by_answer[answer]
            if len(kept) > cap:
                kept = rng.choice(kept, cap, replace=False).tolist()
            kinds.setdefault(group.split('/f')[0], {}).setdefault(answer, []).extend(kept)
    keep = []
    for kind in sorted(kinds):
        by_answer = kinds[kind]
        cap = int(np.ceil((1 + tolerance) * np.median([len(v) for v in by_answer.values()])))
        for answer in sorted(by_answer):
            kept = by_answer[answer]
            keep += rng.choice(kept, cap, replace=False).tolist() if len(kept) > cap else kept
    keep.sort(key=lambda i: (candidates[i].get('scene', 0), i))
    return [candidates[i] for i in keep]


def make_questions(scene_objects, seed, per_family):
    """Balanced questions for a split: scene_objects = render_scenes()['objects']. Scene i's candidates come
    from default_rng([seed, 7, i]), so they do not depend on the other scenes; each kept dict gets 'scene'."""
    candidates = []
    for i, objs in enumerate(scene_objects):
        objects = question_objects(objs)
        if objects is None:
            continue
        for q in generate_questions(objects, np.random.default_rng([seed, 7, i]), per_family):
            q['scene'] = i
            candidates.append(q)
    return balance_questions(candidates, np.random.default_rng([seed, 8]))


if __name__ == '__main__':
    # quick look and timing: python clevr.py [num_scenes]
    import sys
    import time
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    t0 = time.time()
    d = render_scenes(n, seed=0)
    dt = time.time() - t0
    print(f"rendered {n} scenes in {dt:.2f}s ({n / dt:.0f} scenes/s, all modalities)")
    t0 = time.time()
    render_scenes(n, seed=0, modalities=('rgb',))
    print(f"rgb only: {n / (time.time() - t0):.0f} scenes/s")
    print(d['caption_text'][0])
    print(d['objects'][0])
    obj_share = (d['semseg'] > 0).mean()
    sky_share = 1 - d['depth_valid'].mean()
    print(f"object pixel share {obj_share:.3f}, sky share {sky_share:.3f}, edge share {d['edges'].mean():.3f}")
    try:
        from PIL import Image
        grid = np.concatenate([np.concatenate(list(d['rgb'][r * 8:(r + 1) * 8]), 1) for r in range(4)], 0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save('clevr_samples.png')
        print("wrote clevr_samples.png")
    except ImportError:
        pass
