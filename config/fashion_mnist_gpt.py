# GPT (class token first, raster order) on Fashion-MNIST token grids, GPU recipe: 6 layers, 8 heads, 256 wide,
# batch 256, bf16 where available. Not yet run on a GPU (the CPU variant is fashion_mnist_gpt_cpu.py).
#   python prepare.py fashion_mnist && python train.py config/fashion_mnist_gpt.py
#   python eval.py --mode=fashion_mnist --maskgit_dir=out-fashion-mnist-maskgit --gpt_dir=out-fashion-mnist-gpt
out_dir = 'out-fashion-mnist-gpt'
dataset = 'fashion_mnist'
model_type = 'gpt'
block_size = 0          # the data fixes it: [class token, 48 image tokens] -> 49 targets
eval_interval = 500
eval_iters = 50
log_interval = 50
batch_size = 256
n_layer = 6
n_head = 8
n_embd = 256
dropout = 0.1
cond_drop = 0.1
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 200
weight_decay = 0.05
compile = True
