import math

import pytest
import torch

from decoding import sample_logits
from model import ModelConfig, build_model
from optim import configure_optimizer


def tiny(**kw):
    args = dict(model_type='gpt', n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50, dropout=0.0)
    args.update(kw)
    torch.manual_seed(0)
    return build_model(ModelConfig(**args)).eval()


def test_loss_at_init_is_log_vocab():
    model = tiny(vocab_size=65)
    x, y = torch.randint(65, (8, 32)), torch.randint(65, (8, 32))
    logits, loss, metrics = model(x, y)
    assert logits.shape == (8, 32, 65)
    assert abs(loss.item() - math.log(65)) < 0.1


def test_inference_returns_last_position_only():
    model = tiny()
    logits, loss, _ = model(torch.randint(50, (3, 10)))
    assert logits.shape == (3, 1, 50) and loss is None


def test_kv_cache_matches_uncached_logits():
    model = tiny()
    x = torch.randint(50, (2, 20))
    full, _, _ = model(x, x)  # (B, T, V), every position
    cache = model.new_kv_cache(2)
    prefill, _, _ = model(x[:, :12], kv_cache=cache)
    assert torch.allclose(prefill[:, -1], full[:, 11], atol=1e-5)
    for t in range(12, 20):  # one token at a time through the cache
        step, _, _ = model(x[:, t:t + 1], kv_cache=cache)
        assert torch.allclose(step[:, -1], full[:, t], atol=1e-5)
    # a multi-token chunk after a prefix (the masked, non-causal-kernel path)
    cache = model.new_kv_cache(2)
    model(x[:, :5], kv_cache=cache)
    chunk, _, _ = model(x[:, 5:9], kv_cache=cache)
    assert torch.allclose(chunk[:, -1], full[:, 8], atol=1e-5)


def test_kv_cache_greedy_generation_matches_uncached():
    model = tiny()
    x = torch.randint(50, (3, 5))
    slow = model.generate(x, 20, temperature=0, kv_cache=False)
    fast = model.generate(x, 20, temperature=0, kv_cache=True)
    assert torch.equal(slow, fast)


def test_generation_past_block_size_reprefills():
    model = tiny(block_size=16)
    x = torch.randint(50, (1, 4))
    out = model.generate(x, 40, temperature=0, kv_cache=True)  # crosses block_size several times
    assert out.shape == (1, 44)
    # up to the first re-prefill both paths condition on exactly the same tokens
    ref = model.generate(x, 12, temperature=0, kv_cache=False)
    assert torch.equal(out[:, :16], ref)
    # after it, the cached path's next token is the argmax given the last block_size // 2 tokens
    window = out[:, 16 - 8:16]
    logits, _, _ = model(window)
    assert out[0, 16].item() == logits[0, -1].argmax().item()


def test_stop_token_ends_samples():
    model = tiny()
    x = torch.randint(50, (4, 3))
    first = model.generate(x, 1, temperature=0)[:, -1]
    out = model.generate(x, 10, temperature=0, stop_token=int(first[0]))
    assert out.size(1) < 13 or (out[0, 3:] == first[0]).all()
    assert (out[0, 3:] == first[0]).all()  # once stopped, a sample only repeats the stop token


def test_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, -5.0, -6.0]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_logits(logits, 1.0, top_k=2, generator=gen) for _ in range(200)])
    assert set(draws.flatten().tolist()) <= {0, 1}
    probs = logits.softmax(-1)[0]
    assert probs[0] < 0.9 < probs[0] + probs[1]  # top_p=0.9 keeps exactly tokens 0 and 1
    draws = torch.cat([sample_logits(logits, 1.0, top_p=0.9, generator=gen) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}
    assert sample_logits(logits, 0).item() == 0


def test_overfits_one_batch():
    model = tiny().train()
    x = torch.randint(50, (4, 32))
    opt = configure_optimizer(model, 0.0, 3e-3, (0.9, 0.95), 'cpu')
    for _ in range(150):
        _, loss, _ = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.1


def test_weight_decay_only_on_matrices_and_tying():
    model = tiny()
    opt = configure_optimizer(model, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in no_decay['params'])
    assert model.tok_emb.weight is model.lm_head.weight


def test_crop_block_size():
    model = tiny(block_size=32)
    model.crop_block_size(16)
    assert model.pos_emb.weight.shape[0] == 16
    with pytest.raises(ValueError, match='block_size'):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unknown model_type 'gtp'"):
        build_model(ModelConfig(model_type='gtp'))


def test_cpu_bf16_attention_runs_in_fp32():
    # under CPU autocast (training) and with bf16 weights (decoding) attention is computed in fp32 and handed back
    # in the caller's dtype: results agree with the fp32 model to bf16 precision, and gradients flow
    model = tiny()
    x, y = torch.randint(50, (4, 32)), torch.randint(50, (4, 32))
    ref, ref_loss, _ = model(x, y)
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, loss, _ = model(x, y)
    loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    half = tiny().to(torch.bfloat16)
    out, _, _ = half(x)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref[:, -1:].float(), atol=0.1)


def test_4m_flops_count_each_token_once():
    # an input token runs through the encoder, a target token through the decoder: fewer FLOPs than 6N per token
    from model import flops_per_token, num_params
    mods = ({'name': 'a', 'kind': 'image', 'vocab_size': 16, 'num_tokens': 16, 'grid': [4, 4]},
            {'name': 'b', 'kind': 'image', 'vocab_size': 8, 'num_tokens': 16, 'grid': [4, 4]})
    model = build_model(ModelConfig(model_type='4m', n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=24,
                                    modalities=mods))
    f = flops_per_token(model, 32)
    assert 6 * num_params(model) / 3 < f < 6 * num_params(model)
