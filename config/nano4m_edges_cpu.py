# nano4M with a seventh modality, edges (Sobel of luminance, learned 8x8 tokenizer): nano4m_cpu's model and budget
# (2500 iterations or 12.5 min on 2 cores) with edges added to the data and the mixture, nothing else special-cased.
#   python prepare.py clevr --extras=edges && python train.py config/nano4m_edges_cpu.py
#   python eval.py --mode=scorecard --out_dir=out-nano4m-edges-cpu --num_scenes=300     # rgb<->edges rows, chained row
# Reaches at 1598 iterations: rgb->edges F1 0.525 (bound 0.870, specialist 0.758), edges->rgb objects 0.289.
out_dir = 'out-nano4m-edges-cpu'
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
train_modalities = ('rgb', 'depth', 'normals', 'semseg', 'caption', 'boxes', 'edges')
grid_conv = 2                 # 3x3 convs over the visible image tokens' shared 8x8 grid (model.GridMixer)
seq_masking = 'span'          # 'random': the course reference's treatment of sequences (random tokens, in parallel)
input_drop = 0.1
input_budget = (64, 64)       # fixed budgets; dropped inputs and short captions hand theirs on (~1% input padding)
target_budget = (64, 64)
# nano4m_cpu's mixture with an edges entry last (edges a dense target of rgb; the caption's overflow input and its
# targets shared by rgb and edges, so caption -> edges and caption + edges -> rgb are trained), and edges in, rgb out
_rgb_to_dense = (5.0, 0.05, 0.05, 0.1, 0.0, 0.0, 0.05)
_text_to_rgb = (0.1, 0.0, 0.0, 0.0, 5.0, 0.0, 0.1)
_rgb_to_text = (5.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.0)
_edges_to_rgb = (0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0)
dirichlet_alphas = (1.0, 0.1, _rgb_to_dense, _rgb_to_dense, _text_to_rgb, _rgb_to_text, _rgb_to_text, _edges_to_rgb)
batch_size = 32
learning_rate = 2e-3
max_iters = 2500
lr_decay_iters = 2500
max_seconds = 750             # or 12.5 minutes, whichever comes first: make demo stays within 20 minutes on slow hosts
warmup_iters = 100
min_lr = 2e-4
beta2 = 0.99
weight_decay = 0.05
dtype = 'auto'                # bfloat16 on CPUs with native bf16 (~1.5x faster), float32 elsewhere
compile = False
