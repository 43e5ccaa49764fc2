# MaskGIT on Fashion-MNIST token grids, GPU recipe: 6 layers, 8 heads, 256 wide, batch 256, bf16 where available.
# Not yet run on a GPU (the CPU variant is fashion_mnist_maskgit_cpu.py).
#   python prepare.py fashion_mnist && python train.py config/fashion_mnist_maskgit.py
#   python eval.py --mode=fashion_mnist --maskgit_dir=out-fashion-mnist-maskgit --gpt_dir=out-fashion-mnist-gpt
out_dir = 'out-fashion-mnist-maskgit'
dataset = 'fashion_mnist'
model_type = 'maskgit'
block_size = 0          # the data fixes it: 49 grid tokens + 1 class token
eval_interval = 500
eval_iters = 50
log_interval = 50
batch_size = 256
n_layer = 6
n_head = 8
n_embd = 256
dropout = 0.1
mask_schedule = 'cosine'
cond_drop = 0.1
label_smoothing = 0.1
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 200
weight_decay = 0.05
compile = True
