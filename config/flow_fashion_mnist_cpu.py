# Rectified flow with a DiT on Fashion-MNIST pixels (28x28, class-conditional; patch 4 -> 7x7 tokens): 4 layers,
# 4 heads, 128 wide, 1.28M parameters, adaLN-Zero, logit-normal t, label dropout 0.1. 2000 iterations of batch 64 or
# 10 minutes: one thread fits ~1600 in 10 min (FD 14.9 at Euler 32 + CFG 2, AR at equal time 10.8); 2000 reach 9.7.
#   python prepare.py fashion_mnist && python train.py config/flow_fashion_mnist_cpu.py
#   python sample.py --out_dir=out-flow-fashion-mnist-cpu --mode=flow --steps=16 --cfg_scale=2.0
#   python eval.py --mode=flow --flow_dir=out-flow-fashion-mnist-cpu
out_dir = 'out-flow-fashion-mnist-cpu'
dataset = 'fashion_mnist'
model_type = 'flow'
block_size = 0          # the data fixes it: 49 patches
patch_size = 4
t_sampling = 'logit_normal'
cond_drop = 0.1
eval_interval = 500
eval_iters = 20
log_interval = 50
batch_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1.5e-3
max_iters = 2000
lr_decay_iters = 2000
max_seconds = 600       # or 10 minutes, whichever comes first (the schedule shrinks to fit: train.py)
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
weight_decay = 0.0
compile = False
dtype = 'float32'       # measured in fp32; 'auto' would take bf16 on CPUs that have it
