# A nano VLM on clevr: the rgb tokenizer's frozen encoder features (8x8 cells) through a 2-layer ViT, a pixel-shuffle
# projector (64 cells -> 16 tokens) and a 4-layer GPT (RoPE, RMSNorm, ReLU^2, QK-norm, Muon), 128 wide, answering
# ~4 packed questions per scene; a quarter of the batches caption it. 15 min on 2 CPU cores (--max_seconds fits the
# schedule: 1939 iterations at 447 ms): 56.1% over CLEVR's five families (blind 49.6%, majority 38.7%; docs/results.md).
#   python prepare.py clevr && python train.py config/vlm_clevr_cpu.py
#   python eval.py --mode=vqa --vlm_dir=out-vlm-clevr-cpu --blind_dir=out-vlm-blind-cpu --out_dir=out-nano4m-vqa-cpu
out_dir = 'out-vlm-clevr-cpu'
dataset = 'clevr'
model_type = 'vlm'
vision = 'tokenizer'
pixel_shuffle = 2
n_layer_vision = 2
caption_frac = 0.25
block_size = 0          # the data fixes it: 16 image tokens + the longest text
eval_interval = 500
eval_iters = 20
log_interval = 50
batch_size = 64
n_layer = 4
n_head = 4
n_embd = 128
bias = False
dropout = 0.0
pos = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True
optimizer = 'muon'
muon_lr = 0.03
learning_rate = 3e-3
max_iters = 4000
lr_decay_iters = 4000
max_seconds = 900
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
weight_decay = 0.1
compile = False
