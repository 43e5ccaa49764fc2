# 4M as in the paper, on the CPU demo's budget: an overlay on config/nano4m_cpu.py (same model, batch, schedule and
# iterations; only what differs is here). Sequence modalities (caption, boxes) are span-masked with sentinels and
# decoded autoregressively; each modality's inputs are dropped with probability 0.1, for classifier-free guidance.
# Needs the clevr set with boxes (prepare.py clevr writes rgb, depth, normals, semseg, caption, boxes).
#   python train.py config/nano4m_cpu.py config/nano4m_cpu_paper.py
out_dir = 'out-nano4m-cpu-paper'
seq_masking = 'span'
input_drop = 0.1
train_modalities = ('rgb', 'depth', 'normals', 'semseg', 'caption', 'boxes')
# the demo's mixture, with boxes: mixed inputs; inputs mostly from one modality; all of rgb in, another modality out
dirichlet_alphas = (1.0, 0.1, (5.0, 0.05, 0.05, 0.05, 0.05, 0.05))
