# GPT on clevr rgb at 16x16 token grids (1000 FSQ codes, raster order) after the caption, GPU recipe: 6 layers, 8 heads,
# 256 wide, batch 256, bf16 where available. Sequence: 51 caption tokens + 255 image tokens; loss on the 256 image tokens.
# Not yet measured on a GPU (the CPU variant, on the 8x8 grids of data/clevr, is clevr_gpt_cpu.py).
#   python prepare.py clevr --grid=16 && python train.py config/clevr_gpt.py
#   python sample.py --out_dir=out-clevr-gpt --mode=ar --num_captions=8 --num_samples=4 --cfg_scale=2.0
out_dir = 'out-clevr-gpt'
dataset = 'clevr16'
model_type = 'gpt'
image_modality = 'rgb'
cond_modality = 'caption'
block_size = 0          # the data fixes it: [51 caption tokens, 255 image tokens] -> 256 targets
eval_interval = 500
eval_iters = 50
log_interval = 50
batch_size = 256
n_layer = 6
n_head = 8
n_embd = 256
dropout = 0.1
cond_drop = 0.1
learning_rate = 1e-3
max_iters = 10000
lr_decay_iters = 10000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 300
weight_decay = 0.05
compile = True
