# nano4M on GPUs with a seventh modality, edges: config/nano4m.py with edges in the data (4M's own mixture of
# Dirichlet alphas treats every modality alike, so nothing else changes). Not run yet (no GPU was lent): the CPU
# version is config/nano4m_edges_cpu.py.
#   python prepare.py clevr --extras=edges && torchrun --standalone --nproc_per_node=8 train.py config/nano4m_edges.py
out_dir = 'out-nano4m-edges'
dataset = 'clevr'
model_type = '4m'
eval_interval = 1000
eval_iters = 50
log_interval = 20
block_size = 0                # the data sets it: largest input + target budget
n_layer = 6                   # encoder
n_layer_dec = 6
n_head = 8
n_embd = 512
dropout = 0.0
bias = False
train_modalities = ('rgb', 'depth', 'normals', 'semseg', 'caption', 'boxes', 'edges')
grid_conv = 2                 # 3x3 convs over the visible image tokens' grid (model.GridMixer); 0 = the paper's 4M
seq_masking = 'span'          # caption and boxes as in 4M: span-masked with sentinels, decoded autoregressively
input_drop = 0.1              # drop all inputs of a modality with this probability, for classifier-free guidance
input_budget = (1, 128)       # 4M's per-sample budgets, each split across modalities by a Dirichlet draw
target_budget = (1, 128)
dirichlet_alphas = (0.2, 1.0, 5.0)
batch_size = 64               # per GPU; x 8 GPUs x 1 = 512, 4M's global batch
gradient_accumulation_steps = 8
learning_rate = 6e-4
max_iters = 40000
lr_decay_iters = 40000
warmup_iters = 2000
min_lr = 6e-5
weight_decay = 0.05
dtype = 'bfloat16'
compile = True
