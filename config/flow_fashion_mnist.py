# Rectified flow with a DiT on Fashion-MNIST pixels at course scale, for one GPU: DiT-S shape (12 layers, 6 heads,
# 384 wide, 32.5M parameters), patch 2 -> 14x14 = 196 tokens, logit-normal t, label dropout 0.1, bf16.
# NOT MEASURED YET: no GPU was available when it was written (the CPU config's figures are in docs/results.md);
# expect ~15-25 min on one H100-class GPU for 20k iterations of batch 256 (~100 ms/iteration unmeasured guess).
#   python prepare.py fashion_mnist && python train.py config/flow_fashion_mnist.py
#   python eval.py --mode=flow --flow_dir=out-flow-fashion-mnist --per_class=100
out_dir = 'out-flow-fashion-mnist'
dataset = 'fashion_mnist'
model_type = 'flow'
block_size = 0          # the data fixes it: 196 patches
patch_size = 2
t_sampling = 'logit_normal'
cond_drop = 0.1
eval_interval = 1000
eval_iters = 50
log_interval = 100
batch_size = 256
n_layer = 12
n_head = 6
n_embd = 384
dropout = 0.0
pos = 'rope'            # 2-D axial RoPE over the patch grid
norm = 'rmsnorm'
qk_norm = True
learning_rate = 3e-4
max_iters = 20000
lr_decay_iters = 20000
min_lr = 3e-5
beta2 = 0.99
warmup_iters = 500
weight_decay = 0.0
dtype = 'bfloat16'
compile = True
