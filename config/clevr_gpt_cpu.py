# GPT on clevr rgb token grids (8x8, 1000 FSQ codes, raster order) after the caption (51 word ids in front; loss
# on the image tokens only; dropped 10% of the time for classifier-free guidance), on a CPU: 4 layers, 4 heads, 128 wide.
# 0.93M parameters, 700 iterations of batch 64 (51 + 63 tokens in, 64 targets), bf16 autocast: 202 ms per iteration on 2
# idle cores (~2.5 min; attention in fp32 on CPUs, README Stage 1). Earlier: 10.5 min
# wall, 6.0 min CPU, on one thread of a 2-core VM shared with three other jobs; val loss 3.26 (image tokens; 6.90 at
# the start). Samples follow the caption's object count, placement and colours (better than clevr_maskgit_cpu.py at
# the same budget, README, Stage 3).
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
