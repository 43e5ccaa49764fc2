# The CPU speedrun's best combination: the Shakespeare CPU recipe's model and data with RoPE, RMSNorm, ReLU^2,
# QK-norm and Muon. Reaches the recipe's 2000-iteration val loss in 0.21x the tokens and 0.30x the time
# (~36 s vs 123 s of CPU time on one thread of a 2-core CPU VM, 2 seeds; docs/results.md, "CPU speedrun").
#   python train.py config/speedrun_cpu.py
out_dir = 'out-speedrun-cpu'
eval_interval = 100
eval_iters = 20
log_interval = 10
dataset = 'shakespeare_char'
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
# architecture options (ModelConfig fields, model.py)
pos = 'rope'
norm = 'rmsnorm'
mlp = 'relu2'
qk_norm = True
optimizer = 'muon'          # Muon on the hidden matrices, AdamW on embeddings/head/norms
muon_lr = 0.03
learning_rate = 3e-3        # AdamW's part
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 100
max_iters = 1000
lr_decay_iters = 1000
compile = False
dtype = 'float32'             # measured in fp32; 'auto' would take bf16 on CPUs that have it
