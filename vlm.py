"""
The vlm family: a small vision-language model in nanoVLM's shape, on model.py's blocks.

  vision encoder   a ViT: bidirectional Blocks over the image's patches (vision='pixels': patch_size x patch_size
                   pixels each, through one Linear) or over the rgb tokenizer's frozen encoder features
                   (vision='tokenizer': its 8x8 grid of 128-channel cells, through one Linear), with fixed 2-D
                   sin-cos positions
  projector        a pixel shuffle folds each pixel_shuffle x pixel_shuffle block of neighbouring patches into one
                   token that many times wider (an 8x8 grid becomes 4x4 tokens for pixel_shuffle=2, so the language
                   model reads 4x fewer image tokens), then one bias-free Linear maps it to the language model's width
  language model   model.GPT reading [image tokens, text tokens] causally. The data marks every position but the
                   answer (or caption) tokens with the ignore index, so only they count in the loss

vision='none' is the blind model: the same language model reading the text alone, the check for how much of a
question's answer its words give away. Answers are generated with the KV cache (decoding.generate_causal): the
image and the question fill the cache once, then one token per step.
"""
import torch
import torch.nn as nn

from decoding import generate_causal
from model import GPT, Block, Norm, init_weights, patchify, sincos_2d


def pixel_shuffle(x, side, factor):
    """(B, side·side, C) patch features in raster order -> (B, (side/factor)², C·factor²): each factor x factor block
    of neighbouring patches becomes one token holding their features side by side."""
    B, N, C = x.shape
    s = side // factor
    x = x.view(B, s, factor, s, factor, C).permute(0, 1, 3, 2, 4, 5)  # (B, s, s, factor, factor, C)
    return x.reshape(B, s * s, factor * factor * C)


class VisionEncoder(nn.Module):

    def __init__(self, config):
        super().__init__()
        c = config
        if c.vision == 'pixels':
            assert c.image_size > 0 and c.in_channels > 0 and c.patch_size > 0 and c.image_size % c.patch_size == 0, \
                "vision='pixels' needs image_size, in_channels and a patch_size dividing image_size (the data sets them)"
            self.side = c.image_size // c.patch_size
            self.patch_in = nn.Linear(c.in_channels * c.patch_size ** 2, c.n_embd)
        else:
            assert c.in_channels > 0 and c.grid_h == c.grid_w > 0, \
                "vision='tokenizer' needs the features' in_channels and a square grid (the data sets them)"
            self.side = c.grid_h
            self.patch_in = nn.Linear(c.in_channels, c.n_embd)
        rows = torch.arange(self.side).repeat_interleave(self.side)  # raster order
        cols = torch.arange(self.side).repeat(self.side)
        self.register_buffer('pos_table', sincos_2d(rows, cols, c.n_embd), persistent=False)  # (N, C)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layer_vision)])
        self.norm_f = Norm(c)
        self.config = c

    def forward(self, image):
        """image (B, ch, H, W) in [-1, 1], or tokenizer features (B, N, ch) -> patch features (B, N, C)."""
        image = image.to(self.patch_in.weight.dtype)
        x = self.patch_in(patchify(image, self.config.patch_size) if self.config.vision == 'pixels' else image)
        x = x + self.pos_table
        for block in self.blocks:
            x = block(x)
        return self.norm_f(x)


class VLM(nn.Module):

    def __init__(self, config):
        super().__init__()
        c = config
        assert c.vision in ('pixels', 'tokenizer', 'none'), f"unknown vision {c.vision!r}: 'pixels', 'tokenizer' or 'none'"
        self.config = c
        if c.vision != 'none':
            self.vision = VisionEncoder(c)
            f = c.pixel_shuffle
            assert f >= 1 and self.vision.side % f == 0, \
                f"pixel_shuffle={f} must divide the vision grid's side ({self.vision.side})"
            self.projector = nn.Linear(c.n_embd * f * f, c.n_embd, bias=False)
            init_weights(self.vision, c.n_layer_vision)
            init_weights(self.projector, c.n_layer)
        self.lm = GPT(c)  # its own init; block_size covers the image tokens and the text

    def num_image_tokens(self):
        return 0 if self.config.vision == 'none' else (self.vision.side // self.config.pixel_shuffle) ** 2

    def image_tokens(self, image):
        """image -> (B, num_image_tokens, C): the embeddings the language model reads in front of the text."""
        x = self.vision(image)  # (B, side², C)
        return self.projector(pixel_shuffle(x, self.vision.side, self.config.pixel_shuffle))

    def forward(self, idx, targets=None, image=None, kv_cache=None):
        """idx (B, T) text ids; targets (B, T) with -1 where nothing is predicted; image as VisionEncoder takes it
        (None for the blind model). Returns (logits over image and text positions, loss, metrics)."""
        if self.config.vision == 'none':
            return self.lm(idx, targets, kv_cache=kv_cache)
        prefix = self.image_tokens(image)  # (B, P, C)
        if targets is not None:  # nothing is predicted at the image positions
            targets = torch.cat([torch.full(prefix.shape[:2], -1, dtype=targets.dtype, device=targets.device), targets], 1)
        return self.lm(idx, targets, kv_cache=kv_cache, prefix=prefix)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, image=None, stop_token=None, temperature=0.0, kv_cache=True, **kwargs):
        """Continue the text idx (B, T) (a question, or the caption prompt) about image; greedy by default."""
        prefix = None if self.config.vision == 'none' else self.image_tokens(image)
        return generate_causal(self.lm, idx, max_new_tokens, temperature=temperature, stop_token=stop_token,
                               kv_cache=kv_cache, prefix=prefix, **kwargs)

    @torch.no_grad()
    def answer(self, questions, image=None, pad=0, eos=1, max_new_tokens=2):
        """questions (B, L) word ids padded with `pad` at the end -> (B, max_new_tokens) greedy answers (then eos).
        Questions of one length go through generate together, so no question is padded in front of its image."""
        out = torch.full((questions.size(0), max_new_tokens), eos, dtype=torch.long, device=questions.device)
        lengths = (questions != pad).sum(1)
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero()[:, 0]
            y = self.generate(questions[rows, :n], max_new_tokens, image=None if image is None else image[rows],
                              stop_token=eos)
            out[rows, :y.size(1) - n] = y[:, n:]
        return out
