"""
Judges: small networks we train ourselves to score generated images, since no pretrained perceptual network
(Inception for FID, LPIPS) installs offline.
  Fashion-MNIST  a CNN classifier (~91% test accuracy): fidelity (generated images classified as their condition),
                 Frechet distance in its 128-d features against real test images, diversity within a class
  clevr objects  ObjectJudge: colour and shape of the object in a window around each object's true box, the
                 judge of caption -> rgb
Each is trained once and cached next to the data (classifier.pt, object_judge.pt), loadable with
torch.load(weights_only=True).
"""
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import dataset_dir, load_meta

# -----------------------------------------------------------------------------
# Fashion-MNIST: a classifier and the scores computed in its feature space

class Classifier(nn.Module):
    """Two conv layers + two linear layers: ~91% test accuracy on Fashion-MNIST after a few epochs on a CPU.
    features() is the 128-d penultimate layer used for the Frechet distance and diversity."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 128)
        self.out = nn.Linear(128, num_classes)

    def features(self, x):  # x (B, 1, 28, 28) in [0, 1]
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 16, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, 7, 7)
        return F.relu(self.fc(x.flatten(1)))  # (B, 128)

    def forward(self, x):
        return self.out(self.features(x))


def to_input(images):
    """uint8 (N, H, W) or (N, H, W, 1) -> float (N, 1, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    if x.dim() == 4:  # (N, H, W, 1) from the tokenizer's decoder
        x = x[..., 0]
    return x[:, None]  # (N, 1, H, W)


def classifier_path(dataset):
    return os.path.join(dataset_dir(dataset), 'classifier.pt')


def train_classifier(dataset, epochs=3, batch_size=128, seed=0):
    d = dataset_dir(dataset)
    x = to_input(np.load(os.path.join(d, 'train_images.npy')))
    y = torch.from_numpy(np.load(os.path.join(d, 'train_labels.npy')))
    torch.manual_seed(seed)
    model = Classifier(load_meta(dataset)['num_classes'])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in range(len(x) // batch_size):
            ix = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(x[ix]), y[ix])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, dataset, 'test')
        print(f"classifier epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {acc * 100:.2f}% ({time.time() - t0:.0f}s)")
    torch.save({'model': model.state_dict(), 'test_accuracy': acc}, classifier_path(dataset))
    return model.eval()


@torch.no_grad()
def predict(model, images, batch_size=1000):
    """uint8 images -> (predicted class (N,), features (N, 128))."""
    model.eval()
    preds, feats = [], []
    x = to_input(images)
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size])
        feats.append(f)
        preds.append(model.out(f).argmax(1))
    return torch.cat(preds), torch.cat(feats).double()


def accuracy(model, dataset, split):
    d = dataset_dir(dataset)
    pred, _ = predict(model, np.load(os.path.join(d, f'{split}_images.npy')))
    return (pred == torch.from_numpy(np.load(os.path.join(d, f'{split}_labels.npy')))).float().mean().item()


def load_classifier(dataset, epochs=5):
    path = classifier_path(dataset)
    if not os.path.exists(path):
        print(f"no classifier at {path}: training one")
        return train_classifier(dataset, epochs)
    state = torch.load(path, map_location='cpu', weights_only=True)
    model = Classifier(load_meta(dataset)['num_classes'])
    model.load_state_dict(state['model'])
    return model.eval()


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to features a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64 through symmetric eigensolves."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    sqrt_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(sqrt_a @ s_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b) ** 2).sum().item() + (s_a.trace() + s_b.trace() - 2 * cross).item()


def mean_pairwise_distance(feats, labels):
    """Mean over classes of the mean L2 distance between features of two different images of that class."""
    out = []
    for c in labels.unique():
        f = feats[labels == c]
        d = torch.cdist(f, f)
        n = len(f)
        out.append(d.sum() / (n * (n - 1)))
    return torch.stack(out).mean().item()


def score(clf, images, labels, real_feats, real_div):
    pred, feats = predict(clf, images)
    return {'fidelity': (pred == labels).float().mean().item(), 'fd': frechet_distance(feats, real_feats),
            'diversity': mean_pairwise_distance(feats, labels) / real_div}

# -----------------------------------------------------------------------------
# clevr: the object judge of caption -> rgb

def objects_found(seen, true_objects):
    """Share of true objects (dicts with 'colour' and 'shape') found: seen holds, per object, the (colour, shape)
    pairs a judge saw in the generated image around the object's place; 1 when there is none to find."""
    if not true_objects:
        return 1.0
    return sum((o['colour'], o['shape']) in pairs for pairs, o in zip(seen, true_objects)) / len(true_objects)


def crop_window(image, box, jitter=(0, 0), margin=3, size=24):
    """The pixels around an inclusive box (x0, y0, x1, y1), grown by `margin` and shifted by jitter (dx, dy),
    sampled to (size, size, 3) float in [0, 1] (nearest pixel, clipped at the borders)."""
    H, W = image.shape[:2]
    x0, y0, x1, y1 = box[0] + jitter[0] - margin, box[1] + jitter[1] - margin, box[2] + jitter[0] + margin, box[3] + jitter[1] + margin
    xs = np.clip(np.floor(x0 + (np.arange(size) + 0.5) * (x1 - x0 + 1) / size), 0, W - 1).astype(int)
    ys = np.clip(np.floor(y0 + (np.arange(size) + 0.5) * (y1 - y0 + 1) / size), 0, H - 1).astype(int)
    crop = np.asarray(image)[ys][:, xs]
    return crop.astype(np.float32) / (255.0 if crop.dtype == np.uint8 else 1.0)


class ObjectJudge(nn.Module):
    """Colour (8) and shape (3 + 'none') of the object in a 24x24 window: a small CNN trained on ground-truth renders
    (windows jittered by up to 3 pixels), the judge of caption -> rgb. A caption places objects only coarsely (a 3x3
    grid of regions, ~16 pixels each), so judge() looks at windows shifted by up to `search` pixels around each
    object's true box: an object drawn about where the scene has it (within ~one token cell) is found."""

    def __init__(self):
        super().__init__()
        import clevr
        self.colours, self.shapes = list(clevr.COLOURS), list(clevr.SHAPES) + ['none']
        self.body = nn.Sequential(  # (N, 3, 24, 24) -> (N, 128)
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 12, 12)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 64, 6, 6)
            nn.Flatten(), nn.Linear(64 * 6 * 6, 128), nn.ReLU())
        self.colour_head, self.shape_head = nn.Linear(128, len(self.colours)), nn.Linear(128, len(self.shapes))

    def forward(self, x):  # x (N, 24, 24, 3) in [0, 1]
        h = self.body(x.permute(0, 3, 1, 2) - 0.5)
        return self.colour_head(h), self.shape_head(h)

    @torch.no_grad()
    def scene_features(self, images, batch_size=256):
        """Whole images (N, H, W, 3), uint8 or in [0, 1] -> (N, 256) features for a realism Frechet distance: the
        judge's two conv stages over the full image (filters learned on real objects' colours, edges and shading),
        averaged over a 2x2 grid of regions. Unlike judge(), which credits a coloured blob near each object's place,
        this sees texture: blotchy patches or blur land far from real renders."""
        x = torch.as_tensor(np.asarray(images))
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        conv = self.body[:6]  # conv, relu, pool, conv, relu, pool: (N, 64, H/4, W/4)
        return torch.cat([F.adaptive_avg_pool2d(conv(chunk.permute(0, 3, 1, 2) - 0.5), 2).flatten(1)
                          for chunk in x.split(batch_size)]).double()

    @torch.no_grad()
    def judge(self, images, objects, search=8, stride=4):
        """images (N, H, W, 3), objects per image (dicts with 'box') -> per image, per object the set of
        (colour, shape) pairs seen in the windows shifted by -search..search pixels (step stride) in x and y
        (windows judged empty are left out)."""
        shifts = [(dx, dy) for dx in range(-search, search + 1, stride) for dy in range(-search, search + 1, stride)]
        crops = [crop_window(img, o['box'], jitter=d) for img, objs in zip(images, objects) for o in objs for d in shifts]
        if not crops:
            return [[] for _ in objects]
        crops = torch.from_numpy(np.stack(crops))
        # in chunks that stay in cache: one batch of every window (300 scenes: ~20k) ran 1.6x slower on a CPU
        logits = [self(chunk) for chunk in crops.split(512)]
        colour, shape = (torch.cat(part).argmax(-1).view(-1, len(shifts)).tolist() for part in zip(*logits))
        out, k = [], 0
        for objs in objects:
            out.append([{(self.colours[c], self.shapes[s]) for c, s in zip(colour[k + i], shape[k + i])
                         if self.shapes[s] != 'none'} for i in range(len(objs))])
            k += len(objs)
        return out


    def found(self, images, objects):
        """Per image, the share of its objects judge() sees with the right colour and shape in place (objects_found)."""
        return [objects_found(seen, objs) for seen, objs in zip(self.judge(images, objects), objects)]

def judged_objects(objects, min_pixels=20):
    """The objects caption -> rgb is scored on: visible enough to be judged (>= min_pixels pixels)."""
    return [[o for o in objs if o['visible_pixels'] >= min_pixels] for objs in objects]


def train_object_judge(num_scenes=6000, steps=1000, batch_size=256, seed=0):
    """ObjectJudge on train-split renders: each visible object's jittered window (its colour and shape), and as
    many windows of empty ground ('none'). Deterministic for a seed; ~2 min on one CPU core."""
    import clevr
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    scenes = clevr.render_scenes(num_scenes, seed=clevr.SPLIT_SEEDS['train'], modalities=('rgb', 'instance'))
    judge = ObjectJudge()
    crops, colours, shapes = [], [], []
    for img, inst, objs in zip(scenes['rgb'], scenes['instance'], judged_objects(scenes['objects'])):
        for o in objs:
            crops.append(crop_window(img, o['box'], jitter=rng.integers(-3, 4, 2)))
            colours.append(judge.colours.index(o['colour']))
            shapes.append(judge.shapes.index(o['shape']))
        for _ in range(2):  # empty windows, of an object's typical size, where no object pixel falls
            w, x0, y0 = rng.integers(4, 14), rng.integers(0, 50), rng.integers(16, 50)
            box = (x0, y0, x0 + w, y0 + w)
            if not inst[max(0, y0 - 3):y0 + w + 4, max(0, x0 - 3):x0 + w + 4].any():
                crops.append(crop_window(img, box))
                colours.append(-100)  # no colour to learn
                shapes.append(judge.shapes.index('none'))
    x, c, s = torch.from_numpy(np.stack(crops)), torch.tensor(colours), torch.tensor(shapes)
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ix = torch.randint(len(x), (batch_size,), generator=gen)
        colour_logits, shape_logits = judge(x[ix])  # (no mirroring: the light from the left is a cue to the shape)
        loss = F.cross_entropy(colour_logits, c[ix], ignore_index=-100) + F.cross_entropy(shape_logits, s[ix])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


def load_object_judge(path, seed=0, log=print):
    """The judge saved at path, or a new one trained (deterministically for the seed) and saved there."""
    judge = ObjectJudge()
    if os.path.exists(path):
        judge.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        return judge.eval()
    t0 = time.time()
    judge = train_object_judge(seed=seed)
    torch.save(judge.state_dict(), path)
    log(f"  trained the caption->rgb object judge in {time.time() - t0:.0f}s -> {path}")
    return judge
