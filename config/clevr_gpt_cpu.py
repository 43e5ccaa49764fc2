# GPT on clevr rgb token grids (8x8, 1000 FSQ codes, raster order) after the 51-word caption, which is dropped 10% of
# the time for classifier-free guidance; loss on image tokens only. 4 layers, 4 heads, 128 wide: 0.93M parameters.
# 700 iterations of batch 64, bf16 autocast: ~2.5 min on 2 idle cores of a 2-core CPU VM (202 ms per iteration).
# Reaches val loss 3.26 (6.90 at the start); samples follow the caption's object count, placement and colours.
#   python prepare.py clevr && python train.py config/clevr_gpt_cpu.py
#   python sample.py --out_dir=out-clevr-gpt-cpu --mode=ar --num_captions=6 --num_samples=4 --cfg_scale=2.0
out_dir = 'out-clevr-gpt-cpu'
dataset = 'clevr'
model_type = 'gpt'
image_modality = 'rgb'
cond_modality = 'caption'
block_size = 0          # the data fixes it: [51 caption tokens, 63 image tokens] -> 64 targets
eval_interval = 350
eval_iters = 10
log_interval = 25
batch_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
cond_drop = 0.1
learning_rate = 2e-3
max_iters = 700
lr_decay_iters = 700
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50
weight_decay = 0.05
dtype = 'auto'                # bfloat16 on CPUs with native bf16 (~1.5x faster), float32 elsewhere
compile = False
