# A specialist for the scorecard (eval.py --mode=scorecard): the 4M CPU model's size and compute (same iterations,
# batch and token budgets), trained on one direction only. An overlay on config/nano4m_cpu.py; name the direction
# and an out_dir per run, e.g. (~13 min on 2 cores, like the 4M run)
#   python train.py config/nano4m_cpu.py config/nano4m_cpu_specialist.py \
#       --input_modalities="('rgb',)" --target_modalities="('semseg',)" --out_dir=out-spec-rgb-semseg
# eval.py reads the direction back from the checkpoint.
out_dir = 'out-spec-rgb-depth'
input_modalities = ('rgb',)
target_modalities = ('depth',)
input_drop = 0.0              # one fixed input: nothing to guide against
dirichlet_alphas = (1.0,)     # the budgets go to the one input and the one target modality anyway
