# Char-level Shakespeare on a laptop CPU: 4 layers, 4 heads, 128 wide, context 64, batch 12 (0.8M parameters).
# ~2 min on one CPU thread (60 ms/iter, evals included 2m12s), val loss 1.93 after 2000 iterations.
#   python prepare.py shakespeare_char && python train.py config/train_shakespeare_char_cpu.py
out_dir = 'out-shakespeare-char-cpu'
eval_interval = 250
eval_iters = 20
log_interval = 10
dataset = 'shakespeare_char'
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
compile = False
dtype = 'float32'             # measured in fp32; 'auto' would take bf16 on CPUs that have it
