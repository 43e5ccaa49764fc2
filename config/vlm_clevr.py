# The nano VLM on clevr for one GPU: a 4-layer ViT over 4x4-pixel patches (256), pixel shuffle to 64 image tokens,
# a 6-layer GPT, 384 wide, with the CPU config's options (RoPE, RMSNorm, ReLU^2, QK-norm, Muon), bf16 + compile, a
# quarter of the batches captioning. NOT MEASURED: no GPU was lent when it was written; the target is >= 97%.
#   python prepare.py clevr && python train.py config/vlm_clevr.py
#   python eval.py --mode=vqa --vlm_dir=out-vlm-clevr
out_dir = 'out-vlm-clevr'
dataset = 'clevr'
model_type = 'vlm'
vision = 'pixels'
patch_size = 4
pixel_shuffle = 2
n_layer_vision = 4
caption_frac = 0.25
block_size = 0          # the data fixes it: 64 image tokens + the longest text
eval_interval = 1000
eval_iters = 50
log_interval = 100
batch_size = 256
n_layer = 6
n_head = 6
n_embd = 384
bias = False
dropout = 0.0
pos = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True
optimizer = 'muon'
muon_lr = 0.02
learning_rate = 1e-3
max_iters = 20000
lr_decay_iters = 20000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 500
weight_decay = 0.1
compile = True
