# GPT (class token first, raster order) on Fashion-MNIST token grids (7x7, 1000 FSQ codes), on a CPU: 4 layers,
# 4 heads, 128 wide, 0.93M parameters, 1500 iterations of batch 64: 7.4 min on one thread of a 2-core CPU VM.
# Reaches val loss 4.06; eval.py: class fidelity 93.0% with CFG 2 (71.7% without), Frechet distance in the judge's
# features 9.6 (docs/results.md).
#   python prepare.py fashion_mnist && python train.py config/fashion_mnist_gpt_cpu.py
#   python sample.py --out_dir=out-fashion-mnist-gpt-cpu --mode=ar
out_dir = 'out-fashion-mnist-gpt-cpu'
dataset = 'fashion_mnist'
model_type = 'gpt'
block_size = 0          # the data fixes it: [class token, 48 image tokens] -> 49 targets
eval_interval = 500
eval_iters = 20
log_interval = 50
batch_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
cond_drop = 0.1
learning_rate = 2e-3
max_iters = 1500
lr_decay_iters = 1500
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
weight_decay = 0.05
compile = False
dtype = 'float32'             # measured in fp32; 'auto' would take bf16 on CPUs that have it
