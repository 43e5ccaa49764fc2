# MaskGIT on clevr rgb token grids (8x8, 1000 FSQ codes) after the 51-word caption, which is dropped 10% of the time
# for classifier-free guidance. 4 layers, 4 heads, 128 wide: 1.06M parameters.
# 700 iterations of batch 64, bf16 autocast: ~2.5 min on 2 idle cores of a 2-core CPU VM (201 ms per iteration).
# Reaches val loss 4.60 (masked tokens, label smoothing 0.1), masked-token accuracy 18%; objects are blobs.
#   python prepare.py clevr && python train.py config/clevr_maskgit_cpu.py
#   python sample.py --out_dir=out-clevr-maskgit-cpu --mode=maskgit --num_captions=6 --num_samples=4 --cfg_scale=2.0
out_dir = 'out-clevr-maskgit-cpu'
dataset = 'clevr'
model_type = 'maskgit'
image_modality = 'rgb'
cond_modality = 'caption'
block_size = 0          # the data fixes it: 51 caption tokens + 64 grid tokens
eval_interval = 350
eval_iters = 10
log_interval = 25
batch_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
mask_schedule = 'cosine'
cond_drop = 0.1
label_smoothing = 0.1
learning_rate = 2e-3
max_iters = 700
lr_decay_iters = 700
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50
weight_decay = 0.05
dtype = 'auto'                # bfloat16 on CPUs with native bf16 (~1.5x faster), float32 elsewhere
compile = False
