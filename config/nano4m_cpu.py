# nano4M on 2 CPU cores: the README's main job (make demo). CLEVR-like scenes at 8x8 token grids, 4.28M parameters,
# six modalities (rgb, depth, normals, semseg, caption, boxes), as in the 4M paper: caption and boxes span-masked
# with sentinels and decoded autoregressively, each modality's inputs dropped with probability 0.1 (for CFG); plus
# two 3x3 convs over the image token grid (grid_conv, model.GridMixer; 0 gives the paper's plain 4M).
# Costs: 2500 iterations, 11 min 42 s on 2 cores of a host whose bf16 matmuls run at half the speed of others
# here (median 280 ms each); about 7 min on a fast one.
# Reaches (fresh clone, make demo, 32.65 dB rgb tokenizer): val loss 4.05 -> 1.17; eval.py --mode=4m rgb->semseg
# mIoU 0.395 (per-position prior 0.232, token-grid bound 0.621; seeds 1 and 2 on its data: 0.376, 0.393); seven
# runs on three fresh clones' data gave 0.376-0.426, so the 0.40 goal is met by some runs and not others (none
# of the three on the current tokenizer); rgb->depth abs-rel 0.073 (prior 0.083, bound 0.072); greedy
# rgb->caption 20 distinct captions of 20. Plain 4M (grid_conv=0): 0.318 (README Stage 4).
#   python prepare.py clevr && python train.py config/nano4m_cpu.py
# On a machine shared with other busy processes, run with OMP_NUM_THREADS=1: two OpenMP threads that must wait
# for each other at every op were 10x slower than one thread there (measured: 8 s vs 0.72 s per iteration).
out_dir = 'out-nano4m-cpu'
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
train_modalities = ('rgb', 'depth', 'normals', 'semseg', 'caption', 'boxes')
grid_conv = 2                 # 3x3 convs over the visible image tokens' shared 8x8 grid (model.GridMixer)
seq_masking = 'span'          # 'random': the course reference's treatment of sequences (random tokens, in parallel)
input_drop = 0.1
input_budget = (64, 64)       # fixed budgets: no padding, every position does work
target_budget = (64, 64)
# a mixture of seven: mixed inputs; inputs mostly from one modality; three times all of rgb in and one dense
# modality (depth, normals or semseg, semseg twice as likely) out; twice all of rgb in and caption + boxes out
# (alphas per modality, in train_modalities' order; 0: left out). The rgb-in components match how the demo is
# scored (everything from rgb; the 64-token input budget is exactly rgb's grid). At 2400 iterations on one
# dataset (README Stage 4): rgb->semseg mIoU 0.370 with rgb->dense in two of four, 0.403 in three of five, 0.409
# in four of six; but with four of six, one run's greedy rgb->caption wrote the same caption for every image.
# One rgb->text component in six fixed that there, but a fresh clone with the new tokenizer collapsed again
# (0.396 mIoU); two in seven gave 0.426 and 20 of 20 distinct captions on that clone's data, against 0.402 and
# 19 of 20 for one in six with another seed (README Stage 4).
_rgb_to_dense = (5.0, 0.05, 0.05, 0.1, 0.0, 0.0)
_rgb_to_text = (5.0, 0.0, 0.0, 0.0, 0.1, 0.1)
dirichlet_alphas = (1.0, 0.1, _rgb_to_dense, _rgb_to_dense, _rgb_to_dense, _rgb_to_text, _rgb_to_text)
batch_size = 32
learning_rate = 2e-3
max_iters = 2500
lr_decay_iters = 2500
warmup_iters = 100
min_lr = 2e-4
beta2 = 0.99
weight_decay = 0.05
dtype = 'auto'                # bfloat16 on CPUs with native bf16 (~1.5x faster), float32 elsewhere
compile = False
