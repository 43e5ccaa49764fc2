# Super-resolution as token-to-token mapping, as 4M does for 224 -> 448 px: rgb at 32x32 pixels (8x8 tokens) and at
# 64x64 (16x16 tokens) from one 16x16-grid tokenizer are two modalities of one 4M; most samples give all of the low
# image and part of the high one, and ask for the rest of the high one (MaskGIT's decoding states). 2500 iterations or
# 12.5 min on 2 cores, whichever comes first.
#   python prepare.py clevr --extras=sr && python train.py config/nano4m_sr_cpu.py && python eval.py --mode=sr --out_dir=out-nano4m-sr-cpu
# Reaches at 1000 iterations (24 min, shared cores): 22.7 dB, edge F1 0.25 -- below bicubic upsampling (25.7, 0.54).
out_dir = 'out-nano4m-sr-cpu'
dataset = 'clevr'
model_type = '4m'
eval_interval = 400
eval_iters = 4
log_interval = 25
block_size = 0                # the data sets it: largest input + target budget
n_layer = 3                   # encoder
n_layer_dec = 3
n_head = 4
n_embd = 192
dropout = 0.0
bias = False
train_modalities = ('rgb_low', 'rgb_high')
grid_conv = 2                 # 3x3 convs on the coarse 8x8 grid; a 16x16 token mixes into the cell it lies in
input_budget = (64, 256)      # all of the low image, plus 0-192 known high tokens
target_budget = (64, 128)     # up to half of the high image per sample
# three samples in four: low -> high (alpha 5 fills the input with the low image first, the rest of the budget goes to
# known high tokens, the targets are high tokens); one in four: any mix, either way
dirichlet_alphas = ((5.0, 0.1), (5.0, 0.1), (5.0, 0.1), (1.0, 1.0))
batch_size = 16
learning_rate = 2e-3
max_iters = 2500
lr_decay_iters = 2500
max_seconds = 750             # or 12.5 minutes, whichever comes first
warmup_iters = 100
min_lr = 2e-4
beta2 = 0.99
weight_decay = 0.05
dtype = 'auto'
compile = False
