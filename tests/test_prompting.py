"""Context-aware prompting: text-encoder parity with open_clip, the context decoder's formula, errors."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from denseclip.prompting import (
    ContextDecoder,
    ContextTextEncoder,
    PreModelPrompter,
    clip_tokenizer,
    phrase_embeddings,
    tokenize_class_names,
)


def test_tokenize_class_names_layout():
    tok = clip_tokenizer()
    ids = tokenize_class_names(["sky", "traffic light"], budget=6)
    assert ids.shape == (2, 6) and ids.dtype == torch.long
    sky = [tok.sot_token_id, *tok.encode("sky"), tok.eot_token_id]
    assert ids[0, : len(sky)].tolist() == sky and (ids[0, len(sky):] == 0).all()
    assert ids[1].argmax().item() == len(tok.encode("traffic light")) + 1  # EOT is the largest id


def test_tokenize_too_long_names_the_class_and_budget():
    with pytest.raises(ValueError, match=r"'chest of drawers and wardrobe'.*budget is 5"):
        tokenize_class_names(["sky", "chest of drawers and wardrobe"], budget=5)


@pytest.mark.parametrize("names", [[], ["sky", " "], ["sky", ""]])
def test_tokenize_empty_inputs(names):
    with pytest.raises(ValueError):
        tokenize_class_names(names, budget=5)


def test_tokenize_unicode_names_fit_or_fail_clearly():
    ids = tokenize_class_names(["café", "ß"], budget=8)
    assert ids.shape == (2, 8)


NAMES = ["sky", "tree", "traffic light", "café table", "person"]


def test_text_encoder_equals_open_clip_encode_text(tiny_rn_clip):
    """Contexts = token embeddings of "a photo of a" -> equals encode_text("a photo of a {name}")."""
    ctx = phrase_embeddings(tiny_rn_clip.token_embedding, "a photo of a")
    assert ctx.shape == (4, 32)
    enc = ContextTextEncoder(tiny_rn_clip, num_contexts=4, class_token_budget=8)
    with torch.no_grad():
        ours = enc(tokenize_class_names(NAMES, 8), ctx[None])[0]
        ref = tiny_rn_clip.encode_text(open_clip.tokenize([f"a photo of a {n}" for n in NAMES]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_text_encoder_batch_of_contexts(tiny_rn_clip):
    enc = ContextTextEncoder(tiny_rn_clip, num_contexts=3, class_token_budget=5)
    ctx = torch.randn(2, 3, 32)
    tokens = tokenize_class_names(["sky", "tree"], 5)
    with torch.no_grad():
        both = enc(tokens, ctx)
        first = enc(tokens, ctx[:1])
        second = enc(tokens, ctx[1:])
    assert both.shape == (2, 2, 32)
    torch.testing.assert_close(both[0], first[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(both[1], second[0], atol=1e-6, rtol=0)
    assert not torch.allclose(both[0], both[1])


def test_text_encoder_truncates_positional_embedding_and_names(tiny_rn_clip):
    enc = ContextTextEncoder(tiny_rn_clip, num_contexts=8, class_token_budget=5)
    assert enc.positional_embedding.shape == (13, 32)
    expected = tiny_rn_clip.positional_embedding[:13].detach()
    torch.testing.assert_close(enc.positional_embedding.detach(), expected)
    assert enc.attn_mask.shape == (13, 13) and torch.isinf(enc.attn_mask[0, 1]) and enc.attn_mask[1, 0] == 0
    keys = set(enc.state_dict())
    assert {"token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight",
            "transformer.resblocks.0.attn.in_proj_weight"} <= keys
    with pytest.raises(ValueError, match="contexts"):
        enc(tokenize_class_names(["sky"], 5), torch.randn(1, 4, 32))


def _reference_decoder(dec: ContextDecoder, text, visual, heads):
    """The decoder written from the formula (eval: no dropout)."""

    def attn(m, q, k, v):
        b, n, c = q.shape
        q = m.q_proj(q).reshape(b, n, heads, c // heads)
        k = m.k_proj(k).reshape(b, k.shape[1], heads, c // heads)
        v = m.v_proj(v).reshape(b, v.shape[1], heads, c // heads)
        a = (torch.einsum("bnhc,bmhc->bhnm", q, k) * (c // heads) ** -0.5).softmax(-1)
        return m.proj(torch.einsum("bhnm,bmhc->bnhc", a, v).reshape(b, n, c))

    mem = dec.memory_proj(visual)
    x = dec.text_proj(text)
    for layer in dec.decoder:
        q = layer.norm1(x)
        x = x + attn(layer.self_attn, q, q, q)
        x = x + attn(layer.cross_attn, layer.norm2(x), mem, mem)
        x = x + layer.mlp(layer.norm3(x))
    return dec.out_proj(x)


def test_context_decoder_matches_formula_and_structure():
    dec = ContextDecoder(width=32, heads=4, layers=3, visual_dim=48, dropout=0.1).eval()
    text, visual = torch.randn(2, 5, 48), torch.randn(2, 17, 48)
    with torch.no_grad():
        out = dec(text, visual)
        ref = _reference_decoder(dec, text, visual, heads=4)
    assert out.shape == (2, 5, 48)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    names = set(dict(dec.named_parameters()))
    assert {"memory_proj.0.weight", "memory_proj.1.weight", "memory_proj.2.weight", "text_proj.0.weight",
            "text_proj.1.weight", "decoder.2.self_attn.q_proj.weight", "decoder.0.cross_attn.proj.bias",
            "decoder.0.norm3.weight", "decoder.0.mlp.0.weight", "decoder.0.mlp.3.weight",
            "out_proj.0.weight", "out_proj.1.weight"} <= names
    for layer in dec.decoder:  # q/k/v without bias, proj with bias
        for a in (layer.self_attn, layer.cross_attn):
            assert a.q_proj.bias is None and a.k_proj.bias is None and a.v_proj.bias is None
            assert a.proj.bias is not None
        assert layer.mlp[0].out_features == 4 * 32 and isinstance(layer.mlp[1], torch.nn.GELU)


def test_context_decoder_dropout_active_in_train_only():
    dec = ContextDecoder(width=32, heads=2, layers=1, visual_dim=16, dropout=0.5)
    text, visual = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    dec.train()
    assert not torch.allclose(dec(text, visual), dec(text, visual))
    dec.eval()
    torch.testing.assert_close(dec(text, visual), dec(text, visual))


def test_context_decoder_records_cross_attention():
    dec = ContextDecoder(width=32, heads=2, layers=2, visual_dim=16).eval()
    dec.record_attention(True)
    text, visual = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    with torch.no_grad():
        out = dec(text, visual)
    a = dec.decoder[1].cross_attn.last_attention
    assert a.shape == (1, 2, 3, 5)
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 2, 3))
    dec.record_attention(False)
    with torch.no_grad():
        torch.testing.assert_close(dec(text, visual), out, atol=1e-5, rtol=1e-5)


def test_context_decoder_init_truncated_normal():
    dec = ContextDecoder(width=256, heads=4, layers=3, visual_dim=1024)
    w = dec.text_proj[1].weight
    # trunc_normal_(std=0.02) truncates at the absolute bounds +-2, i.e. effectively a plain normal(0, 0.02)
    assert math.isclose(w.std().item(), 0.02, rel_tol=0.05) and abs(w.mean().item()) < 1e-3
    assert (dec.text_proj[1].bias == 0).all() and (dec.memory_proj[0].weight == 1).all()


def test_pre_model_prompter_shapes():
    p = PreModelPrompter(num_contexts=4, visual_dim=16, token_width=24, width=32, heads=2, layers=1).eval()
    out = p(torch.randn(3, 10, 16))
    assert out.shape == (3, 4, 24)


def test_phrase_embeddings_are_token_rows(tiny_rn_clip):
    tok = clip_tokenizer()
    ids = tok.encode("a photo of a")
    emb = phrase_embeddings(tiny_rn_clip.token_embedding, "a photo of a")
    torch.testing.assert_close(emb, tiny_rn_clip.token_embedding.weight[ids].detach())
    with pytest.raises(ValueError):
        phrase_embeddings(tiny_rn_clip.token_embedding, "   ")


def test_text_encoder_rejects_too_many_positions(tiny_rn_clip):
    with pytest.raises(ValueError, match="exceeds"):
        ContextTextEncoder(tiny_rn_clip, num_contexts=70, class_token_budget=10)


def test_score_map_formula():
    from denseclip import score_maps

    dense, text = torch.randn(2, 8, 3, 4), torch.randn(2, 5, 8)
    s = score_maps(dense, text)
    ref = torch.einsum("bchw,bkc->bkhw", F.normalize(dense, dim=1), F.normalize(text, dim=2))
    torch.testing.assert_close(s, ref)
    b, k, y, x = 1, 3, 2, 1
    cos = F.cosine_similarity(dense[b, :, y, x], text[b, k], dim=0)
    torch.testing.assert_close(s[b, k, y, x], cos)
    expected = torch.einsum("bchw,kc->bkhw", F.normalize(dense, dim=1), F.normalize(text[0], dim=1))
    torch.testing.assert_close(score_maps(dense, text[0]), expected)
