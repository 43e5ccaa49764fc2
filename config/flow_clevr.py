# Rectified flow with a DiT on clevr rgb, caption-conditioned, for one GPU: the rgb tokenizer's 4 x 8 x 8 latent
# (patch 1: 64 cells after the 51 caption words), 8 layers, 8 heads, 384 wide (21.9M parameters), RoPE, RMSNorm,
# QK-norm, bf16. NOT MEASURED: no GPU was lent when it was written; the CPU config's figures are in docs/results.md.
# Pixels instead of latents: --flow_space=pixels --patch_size=8 (also 64 tokens).
#   python prepare.py clevr && python train.py config/flow_clevr.py
#   python eval.py --mode=caption_rgb --flow_dir=out-flow-clevr --num_scenes=1000 --grid_dir=out-flow-clevr/caption_rgb
out_dir = 'out-flow-clevr'
dataset = 'clevr'
model_type = 'flow'
image_modality = 'rgb'
cond_modality = 'caption'
flow_space = 'latent'
block_size = 0          # the data fixes it: 51 caption words + 64 latent cells
patch_size = 1
t_sampling = 'logit_normal'
cond_drop = 0.1
eval_interval = 1000
eval_iters = 50
log_interval = 100
batch_size = 256
n_layer = 8
n_head = 8
n_embd = 384
dropout = 0.0
pos = 'rope'
norm = 'rmsnorm'
qk_norm = True
learning_rate = 3e-4
max_iters = 20000
lr_decay_iters = 20000
min_lr = 3e-5
beta2 = 0.99
warmup_iters = 500
weight_decay = 0.0
dtype = 'bfloat16'
compile = True
