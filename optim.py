"""
Optimizers: AdamW with weight decay on matrices only, and Muon (Newton-Schulz orthogonalised momentum) for the
hidden matrices with AdamW for the rest, as one optimizer object that train.py and tokenizer.py drive alike.
"""
import torch
import torch.nn as nn

from model import width_dims


def newton_schulz(G, steps=5, dtype=torch.float32):
    """An approximation of the semi-orthogonal matrix U Vᵀ nearest to G = U S Vᵀ (all singular values -> 1),
    by the quintic Newton–Schulz iteration of Muon (Jordan et al., 2024): X <- aX + (b·XXᵀ + c·(XXᵀ)²)X. Its
    coefficients trade exactness for speed: after 5 steps the singular values lie in roughly [0.7, 1.2],
    which trains as well as exact orthogonalisation at a fraction of an SVD's cost (matmuls only).
    G: one matrix (m, n) or a stack (k, m, n), each orthogonalised on its own.
    dtype: bfloat16, as Muon's authors run it, is 2.6x faster on a CPU with native bf16 (docs/log.md)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius >= spectral norm: singular values in [0, 1]
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Muon ('MomentUm Orthogonalized by Newton–Schulz', Jordan et al., 2024) for the param groups with
    muon=True, AdamW for the others: one optimizer object, so train.py's schedule, gradient clipping,
    GradScaler and checkpoints treat it like any other (its state is plain tensors in state_dict()).

    Muon, for a 2-D weight W (out, in) with gradient G and momentum buffer M:
        M <- μM + G;   U <- NewtonSchulz(G + μM)  (Nesterov);   W <- W - lr · sqrt(max(1, out/in)) · U
    The orthogonalised update changes W by the same amount in every direction of its input space, instead of
    mostly along the few dominant directions of G. It is meant for hidden matrices only: embeddings, output
    heads, norms and biases use AdamW (decoupled weight decay, bias-corrected moments). A conv kernel
    (out, in, kh, kw) is the matrix (out, in·kh·kw) (tokenizer.py trains its hidden convs with Muon).
    Newton–Schulz runs in ns_dtype (configure_optimizer's argument), batched over the weights of one shape."""

    def __init__(self, param_groups, lr, betas=(0.9, 0.95), eps=1e-8, momentum=0.95, ns_steps=5,
                 ns_dtype=torch.float32):
        defaults = dict(lr=lr, betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps, weight_decay=0.0,
                        muon=False, lr_scale=1.0)
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group['lr'], group['weight_decay']
            same_shape = {}  # Muon's updates before Newton–Schulz, by weight shape
            for p in group['params']:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if wd != 0:
                    p.mul_(1 - lr * wd)
                if group['muon']:
                    if not state:
                        state['momentum_buffer'] = torch.zeros_like(g)
                    buf = state['momentum_buffer']
                    buf.mul_(group['momentum']).add_(g)
                    same_shape.setdefault(p.shape, []).append((p, g.add(buf, alpha=group['momentum'])))
                else:
                    if not state:
                        state['step'] = torch.tensor(0.0)
                        state['exp_avg'] = torch.zeros_like(p)
                        state['exp_avg_sq'] = torch.zeros_like(p)
                    beta1, beta2 = group['betas']
                    state['step'] += 1
                    step = state['step'].item()
                    state['exp_avg'].lerp_(g, 1 - beta1)
                    state['exp_avg_sq'].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (state['exp_avg_sq'] / (1 - beta2 ** step)).sqrt_().add_(group['eps'])
                    p.addcdiv_(state['exp_avg'], denom, value=-lr / (1 - beta1 ** step))
            # one Newton–Schulz per weight shape on the stack of its updates: a few large matmuls instead of many
            # small ones (1.9x faster for the 16x16 tokenizer's twelve 64x576 kernels on 2 CPU cores)
            for shape, pairs in same_shape.items():
                G = torch.stack([update.reshape(shape[0], -1) for _, update in pairs])  # (k, out, in·kh·kw)
                scale = max(1.0, G.size(1) / G.size(2)) ** 0.5
                for (p, _), update in zip(pairs, newton_schulz(G, group['ns_steps'], self.ns_dtype)):
                    p.add_(update.view_as(p).to(p.dtype), alpha=-lr * scale)
        return loss


def hidden_matrices(model):
    """The 2-D weights of the Linear layers inside the network, the ones Muon is for: not embeddings (nor the
    output head tied to them), not output heads (any Linear whose module path says 'head'), not norms or biases."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    found, seen = [], set()
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear) or any('head' in part for part in name.split('.')):
            continue
        p = m.weight
        if p.requires_grad and id(p) not in embeddings and id(p) not in seen:
            found.append(p)
            seen.add(id(p))
    return found


def configure_optimizer(model, weight_decay, learning_rate, betas, device_type, ns_dtype=torch.float32):
    """AdamW with weight decay on >=2-D tensors only (matmul weights, embeddings), not on biases and norms.

    With model.config.optimizer == 'muon': Muon on hidden_matrices(model) at config.muon_lr (no weight decay),
    AdamW as above on the rest. Each group's 'lr_scale' is its peak learning rate over learning_rate, so
    train.py's schedule sets group['lr'] = lr(it) · lr_scale and decays both alike. ns_dtype: the precision of
    Muon's Newton–Schulz matmuls (train.py passes bfloat16 when it trains in bfloat16).

    With model.config.mup (see model.mup_init), m = n_embd / mup_base_width: the hidden matrices AdamW trains get
    their own group at learning rate / m, with weight decay x m so that the decay per step (lr · wd in AdamW)
    stays what it is at the base width, as "independent" weight decay (Wortsman et al. 2023). Muon's hidden
    matrices keep muon_lr: its update is orthogonalised and scaled by sqrt(fan_out / fan_in), so it already
    moves every layer's outputs by the same amount at any width (the spectral condition of Yang, Simon and
    Bernstein 2023), which is what μP's 1/m does for Adam."""
    config = model.config
    params = [p for p in model.parameters() if p.requires_grad]
    assert config.optimizer in ('adamw', 'muon'), f"unknown optimizer {config.optimizer!r}: 'adamw' or 'muon'"
    muon = hidden_matrices(model) if config.optimizer == 'muon' else []
    muon_ids = {id(p) for p in muon}
    mup_ids = set()
    if config.mup:
        dims = width_dims(model)
        mup_ids = {id(p) for name, p in model.named_parameters() if dims[name] == 2 and id(p) not in muon_ids}
    decay = [p for p in params if p.dim() >= 2 and id(p) not in muon_ids | mup_ids]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    if mup_ids:
        m = config.n_embd / config.mup_base_width
        groups.append({'params': [p for p in params if id(p) in mup_ids], 'weight_decay': weight_decay * m,
                       'lr': learning_rate / m, 'lr_scale': 1 / m})
    if config.optimizer == 'adamw':
        fused = device_type == 'cuda'  # the fused kernel is a single launch per step on GPUs
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)
    groups.append({'params': muon, 'muon': True, 'weight_decay': 0.0, 'lr': config.muon_lr,
                   'lr_scale': config.muon_lr / learning_rate})
    return Muon(groups, lr=learning_rate, betas=betas, momentum=config.muon_momentum, ns_dtype=ns_dtype)
