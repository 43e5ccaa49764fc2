# Char-level Shakespeare, nanoGPT's GPU recipe: 6 layers, 6 heads, 384 wide, context 256 (10.7M parameters).
# Measured on one H100 (bf16, compile): 3m14s for 5000 iterations, best val loss 1.60 at step 1500, then it overfits
# (best.pt keeps the best). nanoGPT reports val 1.47 in ~3 min on an A100 on the original Tiny Shakespeare file.
#   python prepare.py shakespeare_char && python train.py config/train_shakespeare_char.py
out_dir = 'out-shakespeare-char'
eval_interval = 250   # the model overfits this small set: eval often
eval_iters = 200
log_interval = 10
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3  # small networks can take a higher learning rate
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99          # more tokens per iteration would allow 0.95; this batch is small
warmup_iters = 100
compile = True
