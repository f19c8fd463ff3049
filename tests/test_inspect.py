"""Inspection tools, each against an answer known independently (the plain forward, hooks, weights)."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

from circuitfind.errors import ConfigError
from circuitfind.inspect import (
    SAE,
    Intervention,
    compare,
    flow_graph,
    generate,
    latent_attribution,
    latent_projection,
    logit_lens,
    mean_of,
    patchscope,
    token_direction,
    top_activations,
    why,
)
from tests.test_tasks import _word_model

PROMPT = "When Mary and John went to the store , John gave a drink to"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = _word_model().double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():  # weights ≠ init, biases ≠ 0
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return m


def test_lens_of_the_final_residual_is_the_model_output(model):
    L = model.cfg.n_layers
    rows = logit_lens(model, PROMPT, f"resid:{L}", k=3)
    logits = model(model.to_tokens(PROMPT))[0]
    assert [r.promoted[0][0] for r in rows] == [model.tokenizer.decode([i]) for i in logits.argmax(-1).tolist()]
    assert rows[0].token == model.tokenizer.decode([model.to_tokens(PROMPT)[0, 0].item()])


def test_lens_rankings_leave_out_padding_and_the_unknown_token(model):
    """Untrained outputs (a word-level tokenizer's [PAD] and [UNK]) are noise in a ranking."""
    vocab = model.cfg.d_vocab
    for row in logit_lens(model, PROMPT, "a1.h0", k=vocab)[:2] + logit_lens(model, PROMPT, "resid:1", k=vocab)[:2]:
        shown = {t for t, _ in row.promoted} | {t for t, _ in row.suppressed}
        assert "[PAD]" not in shown and "[UNK]" not in shown and len(row.promoted) == vocab - 2


def test_node_lens_per_position(model):
    rows = logit_lens(model, PROMPT, "a1.h0", k=4)
    assert len(rows) == model.to_tokens(PROMPT).shape[-1] and len(rows[0].promoted) == 4
    assert rows[0].promoted[0][1] >= rows[0].promoted[-1][1] and rows[0].suppressed[0][1] <= 0


def test_why_direct_effects_sum_to_the_logit_difference(model):
    c = why(model, PROMPT, " Mary", " John")
    logits = model(model.to_tokens(PROMPT))[0, -1]
    assert c.logit_diff == pytest.approx(float(logits[c.a] - logits[c.b]), abs=1e-9)
    assert sum(n.direct for n in c.nodes) + c.constant == pytest.approx(c.logit_diff, abs=1e-9)
    assert abs(c.nodes[0].total) >= abs(c.nodes[-1].total)


def test_why_defaults_to_the_models_top_predictions(model):
    """Left out, A is the model's top prediction and B its best other one (never A itself)."""
    first, second = model(model.to_tokens(PROMPT))[0, -1].topk(2).indices.tolist()
    c = why(model, PROMPT)
    assert (c.a, c.b) == (first, second) and c.logit_diff > 0
    assert (why(model, PROMPT, b=first).a, why(model, PROMPT, a=second).b) == (second, first)
    assert why(model, PROMPT, a=first).b == second


def test_why_refuses_answers_the_model_cannot_name(model):
    with pytest.raises(ConfigError, match="not in the vocabulary"):  # a word-level tokenizer reads it as [UNK]
        why(model, PROMPT, " Mary", " Zebedee")
    with pytest.raises(ConfigError, match="not a logit of this model"):
        why(model, PROMPT, " Mary", model.cfg.d_vocab)
    assert why(model, PROMPT, " Mary", model.tokenizer.unk_token_id).b == model.tokenizer.unk_token_id  # asked for


def test_positions_and_counts_out_of_range_are_refused(model):
    """A position past the prompt used to wrap around (why at 99 explained position 99 mod length)."""
    n = model.to_tokens(PROMPT).shape[-1]
    assert why(model, PROMPT, " Mary", " John", position=-n).logit_diff == why(model, PROMPT, " Mary", " John",
                                                                                position=0).logit_diff
    for call in (lambda: why(model, PROMPT, " Mary", " John", position=n),
                 lambda: why(model, PROMPT, " Mary", " John", position=-n - 1),
                 lambda: patchscope(model, PROMPT, 0, source_position=n),
                 lambda: flow_graph(model, PROMPT, position=n)):
        with pytest.raises(ConfigError, match=f"outside the prompt's {n} tokens"):
            call()
    with pytest.raises(ConfigError, match="k must be a count"):
        logit_lens(model, PROMPT, "a1.h0", k=-1)
    with pytest.raises(ConfigError, match="max_new_tokens must be a count"):
        generate(model, PROMPT, max_new_tokens=-1)
    import numpy as np  # numpy integers are positions and counts too
    assert why(model, PROMPT, " Mary", " John", position=np.int64(-n)).a == why(model, PROMPT, " Mary", " John").a
    assert len(logit_lens(model, PROMPT, "a1.h0", k=np.int64(2))[0].promoted) == 2


def test_why_total_effect_equals_zeroing_the_head_by_hook(model):
    c = why(model, PROMPT, " Mary", " John")
    tokens = model.to_tokens(PROMPT)
    for node in ("a0.h1", "a1.h0"):
        layer, head = int(node[1]), int(node[-1])

        def zero(x, name):
            x = x.clone()
            x[:, :, head] = 0
            return x

        with model.hooks({f"blocks.{layer}.attn.hook_result": zero}):
            logits = model(tokens)[0, -1]
        expected = c.logit_diff - float(logits[c.a] - logits[c.b])
        assert next(n.total for n in c.nodes if n.node == node) == pytest.approx(expected, abs=1e-9)


def test_zero_ablating_a_head_while_generating_equals_removing_its_weights(model):
    edited = copy.deepcopy(model)
    dh = model.cfg.d_head
    with torch.no_grad():
        edited.blocks[1].attn.w_o[dh:2 * dh] = 0  # head 1's rows of W_O
    iv = [Intervention("a1.h1", "zero")]
    got = generate(model, PROMPT, 6, iv)
    assert got == generate(edited, PROMPT, 6)
    tokens = model.to_tokens(PROMPT)
    from circuitfind.inspect.interventions import hooks_for

    with model.hooks(hooks_for(model, iv)):
        hooked = model(tokens)
    torch.testing.assert_close(hooked, edited(tokens))
    assert not torch.allclose(hooked, model(tokens))  # the head mattered
    out = compare(model, PROMPT, [Intervention("a1.h1", "scale", 1.0)], 6)
    assert out["baseline"] == out["intervened"]  # scaling by one changes nothing


@pytest.mark.parametrize("node", ["a0.h1", "m0", "m1"])
def test_zeroing_a_node_matches_the_engines_node_ablation(model, node):
    from circuitfind.engine.patching import masked_forward
    from circuitfind.types import Inputs
    from circuitfind.inspect.interventions import hooks_for

    tokens = model.to_tokens(PROMPT)
    g = model.graph
    with model.hooks(hooks_for(model, [Intervention(node, "zero")])):
        hooked = model(tokens)[0, -1]
    mask = g.edge_mask.double()
    mask[:, g.senders.index(node)] = 0
    zero = torch.zeros(g.n_senders, 1, 1, model.cfg.d_model, dtype=model.dtype)
    engine = masked_forward(model, Inputs.of(tokens), zero, mask)[0]
    torch.testing.assert_close(hooked, engine, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(hooked, model(tokens)[0, -1])


def test_steering_toward_a_token_makes_the_model_say_it(model):
    target = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    direction = model.W_U[:, target] / model.W_U[:, target].norm()
    out = generate(model, PROMPT, 1, [Intervention(f"resid:{model.cfg.n_layers - 1}", "steer", 200 * direction)])
    assert out.strip() == "Paris"


def test_mean_ablation_and_bad_interventions(model):
    mean = mean_of(model, "m0.n3", [PROMPT, "The students behind the cars"])
    assert mean.shape == ()
    generate(model, PROMPT, 2, [Intervention("m0.n3", "mean", mean)])
    with pytest.raises(ConfigError, match="needs value"):
        Intervention("m0", "scale")
    with pytest.raises(ConfigError, match="not a node name"):
        generate(model, PROMPT, 1, [Intervention("head3", "zero")])
    with pytest.raises(ConfigError, match="layers"):
        generate(model, PROMPT, 1, [Intervention("a9.h0", "zero")])


def test_patchscope_identity_and_across_models(model):
    # patching a prompt's own state into itself changes nothing
    plain = generate(model, PROMPT, 3)
    same = patchscope(model, PROMPT, 1, target_prompt=PROMPT, source_position=-1, target_position=-1, max_new_tokens=3)
    assert same == plain
    other = copy.deepcopy(model)  # "another model of the family": same width, different weights
    with torch.no_grad():
        other.W_U.mul_(-1)
    out = patchscope(model, PROMPT, 0, target_model=other, target_prompt="The students behind the cars",
                     max_new_tokens=2)
    assert isinstance(out, str)
    with pytest.raises(ConfigError, match="width"):
        patchscope(model, PROMPT, 0, mapping=lambda h: h[:4])


def _greedy(model, tokens, n, hooks):
    """A plain greedy loop under hooks (the reference for generation under an intervention): new ids."""
    with model.hooks(hooks):
        for _ in range(n):
            tokens = torch.cat([tokens, model(tokens)[0, -1].argmax()[None, None]], dim=-1)
    return tokens[0, -n:].tolist()


def _said(model, tokens, ids):
    """New ids as generate writes them (reading on from the prompt's text)."""
    from circuitfind.inspect.common import text_after

    return text_after(model, tokens[0].tolist(), ids)


def test_patchscope_from_a_state_after_attention_and_from_a_head(model):
    """The source vector rebuilt without the hooks it is read at (resid_mid = resid_pre + attention output; a head's
    output = its z times its W_O), patched by hand into the target's state after that layer's attention."""
    tokens = model.to_tokens(PROMPT)
    target = model.to_tokens("The students behind the cars")
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out",
                                                          "blocks.1.attn.hook_z"])
    mid = (cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"])[0, 4]
    head = cache["blocks.1.attn.hook_z"][0, -1, 1] @ model.blocks[1].attn.W_O[1]
    for source, position, vector in (("resid_mid:1", 4, mid), ("a1.h1", -1, head)):
        def patch(x, name, vector=vector):
            x = x.clone()
            x[:, -1 if x.shape[1] == target.shape[1] else target.shape[1] - 1] = vector
            return x
        want = _said(model, target, _greedy(model, target, 3, {"blocks.1.hook_resid_mid": patch}))
        got = patchscope(model, PROMPT, source, source_position=position, target_prompt="The students behind the cars",
                         max_new_tokens=3)
        assert got == want, source
    assert patchscope(model, PROMPT, "m0", target_prompt=PROMPT, target_layer=0) != patchscope(model, PROMPT, 0,
                                                                                               target_prompt=PROMPT)
    assert patchscope(model, PROMPT, "resid:2") == patchscope(model, PROMPT, 1)  # entering layer 2 = after layer 1
    assert patchscope(model, PROMPT, "input") == patchscope(model, PROMPT, "resid:0")
    for source, target_layer, match in (("m0.n3", None, "is a neuron"), ("resid_mid:2", None, "resid_mid:L with L"),
                                        ("resid:3", None, "resid:L with L in 0..2"), ("a1.h1", "a0.h0", "writes into")):
        with pytest.raises(ConfigError, match=match):
            patchscope(model, PROMPT, source, target_layer=target_layer)


def test_token_direction_is_the_gradient_through_the_frozen_final_norm(model):
    """The unit direction raising logit(A) − logit(B) most: the gradient of that difference w.r.t. the final
    residual, with the norm's scale held at its value (by autograd, the norm written out here)."""
    from tests.conftest import tiny_model

    for m, a, b in ((model, " Mary", " John"), (model, " Mary", None), (tiny_model("llama").double(), 7, 11)):
        x = torch.randn(m.cfg.d_model, dtype=m.dtype, requires_grad=True)
        norm = m.ln_final
        if norm.kind == "layernorm":
            y = (x - x.mean()) / (x.var(unbiased=False) + norm.eps).sqrt().detach() * norm.w
        else:
            y = x / (x.pow(2).mean() + norm.eps).sqrt().detach() * (norm.offset + norm.w)
        logits = y @ m.W_U
        ia, ib = (None if t is None else t if isinstance(t, int) else m.tokenizer(t, add_special_tokens=False)
                  ["input_ids"][0] for t in (a, b))
        (logits[ia] - (logits[ib] if ib is not None else 0)).backward()
        d = token_direction(m, a, b)
        assert float(d.norm()) == pytest.approx(1.0, abs=1e-9)
        torch.testing.assert_close(d, x.grad / x.grad.norm(), atol=1e-9, rtol=1e-7)
    with pytest.raises(ConfigError, match="same token"):
        token_direction(model, " Mary", " Mary")


def _matches_the_hooks(model, tokens, iv, reference, new_tokens, tol):
    """The intervention's logits equal those under the reference hooks (and differ from the plain run's), and
    `compare`'s intervened generation equals a greedy loop under them."""
    from circuitfind.inspect.interventions import hooks_for

    with model.hooks(hooks_for(model, [iv])):
        got = model(tokens)[0, -1]
    with model.hooks(reference):
        want = model(tokens)[0, -1]
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert not torch.allclose(got, model(tokens)[0, -1])
    want = _said(model, tokens, _greedy(model, tokens, new_tokens, reference))
    assert compare(model, PROMPT, [iv], new_tokens)["intervened"] == want


def test_steering_a_head_an_mlp_and_a_neuron(model):
    """A steer's vector (or number) lands where the node writes: a head's on the attention output, an MLP's on the
    stream after its layer, a neuron's c times its output row W_out[i] there too (plain hooks, no intervention)."""
    tokens = model.to_tokens(PROMPT)
    v = 5 * token_direction(model, " Mary", " John")
    W_out = model.blocks[0].mlp.w_out  # [d_mlp, d]
    add = lambda u: lambda x, name: x + u  # noqa: E731
    for iv, reference in ((Intervention("a1.h0", "steer", v), {"blocks.1.hook_attn_out": add(v)}),
                          (Intervention("m1", "steer", v), {"blocks.1.hook_resid_post": add(v)}),
                          (Intervention("m0.n7", "steer", 3.0), {"blocks.0.hook_resid_post": add(3.0 * W_out[7])})):
        _matches_the_hooks(model, tokens, iv, reference, new_tokens=4, tol=1e-9)
    for iv, match in ((Intervention("m0.n7", "steer", v), "a number here"), (Intervention("a0.h1", "steer", 2.0),
                      "adds a vector of d_model = 32"), (Intervention("m0", "scale", float("inf")), "must be finite"),
                      (Intervention("a0.h1", "steer", v * float("nan")), "must be finite")):
        with pytest.raises(ConfigError, match=match):
            generate(model, PROMPT, 1, [iv])


def test_sae_latent_interventions(model, tmp_path):
    """On an exact SAE (latent i = relu(x_i), latent d + i = relu(−x_i)): zeroing latent c clamps x_c at 0 from
    above, scaling it by 3 adds 2 relu(x_c), steering latent d + c by 1.5 subtracts 1.5 from x_c — edited by hand."""
    d = model.cfg.d_model
    hook = "blocks.0.hook_resid_post"
    eye = torch.eye(d)
    save_file({"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d), "W_dec": torch.cat([eye, -eye], 0),
               "b_dec": torch.zeros(d)}, str(tmp_path / "sae.safetensors"), metadata={"hook": hook})
    sae = SAE.load(tmp_path / "sae.safetensors", model=model)
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    x = cache[hook][0]
    c = int(((x > 0).any(0) & (x < 0).any(0)).nonzero()[0])  # a coordinate of both signs: both its latents fire

    def edit(fn):
        def change(x, name):
            x = x.clone()
            x[..., c] = fn(x[..., c])
            return x
        return {hook: change}
    mean = mean_of(model, f"sae:{c}", [PROMPT], sae=sae)
    assert float(mean) == pytest.approx(float(x[:, c].clamp(min=0).mean()), abs=1e-7)  # (an SAE encodes in float32)
    for iv, reference in ((Intervention(f"sae:{c}", "zero", sae=sae), edit(lambda x: x.clamp(max=0))),
                          (Intervention(f"sae:{c}", "scale", 3.0, sae=sae), edit(lambda x: x + 2 * x.clamp(min=0))),
                          (Intervention(f"sae:{d + c}", "steer", 1.5, sae=sae), edit(lambda x: x - 1.5)),
                          (Intervention(f"sae:{c}", "mean", mean, sae=sae),
                           edit(lambda x: x - x.clamp(min=0) + mean))):
        _matches_the_hooks(model, tokens, iv, reference, new_tokens=3, tol=1e-6)
    for iv, match in ((lambda: Intervention("sae:3", "zero"), "give the SAE as sae="),
                      (lambda: Intervention(f"sae:{2 * d}", "zero", sae=sae), f"between 0 and {2 * d - 1}"),
                      (lambda: Intervention("sae:x", "zero", sae=sae), "named sae:i"),
                      (lambda: Intervention("sae:3", "steer", float("nan"), sae=sae), "must be finite")):
        with pytest.raises(ConfigError, match=match):
            generate(model, PROMPT, 1, [iv()])


def test_top_activations_of_a_neuron(model):
    prompts = [PROMPT, "The students behind the cars", "Mary gave a drink to John"]
    top = top_activations(model, prompts, "m1.n5", k=3)
    tokens, mask = model.to_tokens(prompts, return_attention_mask=True)
    _, cache = model.run_with_cache(tokens, mask, names_filter=["blocks.1.mlp.hook_post"])
    act = cache["blocks.1.mlp.hook_post"][..., 5].masked_fill(mask == 0, float("-inf"))
    assert top[0].value == pytest.approx(float(act.max()))
    assert [t.value for t in top] == sorted((t.value for t in top), reverse=True)
    assert "[" in top[0].context
    assert top_activations(model, prompts, "a0.h1", k=1)[0].value > 0


def test_text_reads_on_from_the_prompt(model):
    """A word-level tokenizer writes the space between words only when it decodes them together: a
    continuation decoded alone ran into the prompt ("... to" + "Mary" = "toMary"), and a top
    activation's context ran its words together."""
    n = len(model.to_tokens(PROMPT)[0])
    out = generate(model, PROMPT, 3)
    assert out.startswith(" ") and len(model.to_tokens(PROMPT + out)[0]) == n + 3
    top = top_activations(model, [PROMPT], "m1.n5", k=1, context=4)[0]
    words = top.context.replace("[", "").replace("]", "").split()
    assert len(words) == min(n, top.position + 2) - max(0, top.position - 4)  # one word per token in the window
    assert f"[{top.token.strip()}]" in top.context.split()


def test_sae_latents(model, tmp_path):
    d = model.cfg.d_model
    hook = "blocks.0.hook_resid_post"
    path = tmp_path / "sae.safetensors"
    eye = torch.eye(d)  # latents = relu of the residual's coordinates; decoding is exact where x ≥ 0
    save_file({"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d), "W_dec": torch.cat([eye, -eye], 0),
               "b_dec": torch.zeros(d)}, str(path), metadata={"hook": hook})
    sae = SAE.load(path, model=model)
    assert sae.hook == hook and sae.n_latents == 2 * d
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    x = cache[hook].float()
    torch.testing.assert_close(sae.decode(sae.encode(x)), x)  # relu(x) − relu(−x) = x
    top = top_activations(model, [PROMPT], sae=sae, latent=3, k=1)
    assert top[0].value == pytest.approx(float(x[0, :, 3].clamp(min=0).max()), abs=1e-6)
    attr = latent_attribution(model, sae, PROMPT, " Mary", " John")
    assert attr.shape == (tokens.shape[-1], 2 * d)
    # with an exact SAE the attributions are activation × gradient of the residual stream, summed
    state = {}

    def keep(x, name):
        x = x.detach().requires_grad_(True)
        state["x"] = x
        return x

    with torch.enable_grad(), model.hooks({hook: keep}):
        logits = model(tokens)[0, -1]
        ia, ib = (model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" Mary", " John"))
        (logits[ia] - logits[ib]).backward()
    expected = (state["x"] * state["x"].grad)[0].sum(-1)
    torch.testing.assert_close(attr.sum(-1).double(), expected.double(), atol=1e-5, rtol=1e-4)
    proj = latent_projection(model, sae, 0, k=3)
    assert len(proj["promoted"]) == 3
    save_file({"W_enc": eye}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="lacks"):
        SAE.load(tmp_path / "bad.safetensors", hook=hook)


def test_flow_graph(model):
    scores, graph = flow_graph(model, PROMPT, threshold=0.04)
    kept = graph.mask
    assert bool((scores.scores[kept] >= 0.04).all())
    assert kept[model.graph.logits_receiver].any()
    per_receiver = scores.scores.sum(1)
    torch.testing.assert_close(per_receiver, torch.ones_like(per_receiver), atol=1e-5, rtol=0)  # shares sum to 1


def test_inspect_command_line(capsys, tmp_path):
    from circuitfind.cli import main

    ids = "ids:5,9,12,5,9"
    assert main(["inspect", "why", "--model", "toy-induction", "--prompt", ids, "--a", "12", "--b", "3", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "a1.h0" in out.splitlines()[2]  # the induction head explains the copy most
    assert main(["inspect", "lens", "--model", "toy-induction", "--prompt", ids, "--node", "resid:2", "-k", "1"]) == 0
    assert "promotes '#12'" in capsys.readouterr().out.splitlines()[-1]  # 5 9 12 5 9 → 12
    assert main(["inspect", "flow", "--model", "toy-induction", "--prompt", ids, "--out", str(tmp_path / "flow")]) == 0
    assert "a0.h0->a1.h0<k>" in capsys.readouterr().out and (tmp_path / "flow.pdf").exists()
    assert main(["inspect", "generate", "--model", "toy-induction", "--prompt", ids, "--ablate", "a1.h0", "-n", "2"]) == 0
    assert "intervened" in capsys.readouterr().out
    import circuitfind as cf
    for layer in ("resid_mid:1", "a1.h0", "1"):  # a Patchscope's source by layer or by name, as in Python
        assert main(["inspect", "patchscope", "--model", "toy-induction", "--prompt", ids, "--layer", layer,
                     "--target-prompt", "ids:3,4,5", "-n", "2"]) == 0
        want = patchscope(cf.load_model("toy-induction"), ids, int(layer) if layer.isdigit() else layer,
                          target_prompt="ids:3,4,5", max_new_tokens=2)
        assert capsys.readouterr().out.strip() == str(want)
    assert main(["inspect", "top", "--model", "toy-induction", "--task", "induction", "--examples", "5", "--node",
                 "a1.h0", "-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["inspect", "why", "--model", "toy-induction", "--prompt", "ids:1,x"]) == 2
    # --position reaches why and flow as position= does in Python
    assert main(["inspect", "why", "--model", "toy-induction", "--prompt", ids, "--a", "12", "--b", "3",
                 "--position", "2"]) == 0
    want = why(cf.load_model("toy-induction"), ids, "12", "3", position=2).logit_diff
    assert f"= {want:.4f}" in capsys.readouterr().out.splitlines()[0]
    assert main(["inspect", "flow", "--model", "toy-induction", "--prompt", ids, "--position", "9"]) == 2
    # left-out arguments: a clear error before any loading, not a traceback
    for argv, says in ((["lens", "--prompt", ids], "lens needs --node"), (["flow"], "flow needs --prompt"),
                       (["top", "--node", "a1.h0"], "top needs --prompt (or --task)"),
                       (["why", "--prompt", ids, "--ablation", "mean"], "needs --task")):
        with mock.patch("circuitfind.models.loading.load_model", side_effect=AssertionError("loaded")):
            assert main(["inspect", *argv, "--model", "toy-induction"]) == 2
        assert says in capsys.readouterr().err
    # why without tokens explains the top prediction over the runner-up; --task gives mean ablation its prompts
    assert main(["inspect", "why", "--model", "toy-induction", "--prompt", ids, "--ablation", "mean", "--task",
                 "induction", "--examples", "6"]) == 0
    c = why(cf.load_model("toy-induction"), ids, ablation="mean", reference=cf.load_task("induction", n=6))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"logit('#{c.a}') - logit('#{c.b}') = {c.logit_diff:.4f}")
    assert lines[2].split() == [c.nodes[0].node, f"{c.nodes[0].total:+.4f}", f"{c.nodes[0].direct:+.4f}"]


def test_export_command(tmp_path):
    import circuitfind as cf
    from circuitfind.cli import main
    from circuitfind.interop import from_eap_ig

    run = cf.discover(cf.load_model("toy-induction"), "induction", method="eap-ig", n=10, edges=4, out=tmp_path / "run",
                      report=False, quiet=True)
    assert run.scores.scores.abs().max() > 1e-3  # a round trip of zeros proves nothing
    assert main(["export", str(tmp_path / "run"), "--eap-ig", str(tmp_path / "g.json")]) == 0
    scores, circuit = from_eap_ig(tmp_path / "g.json")
    assert torch.equal(scores.scores, run.scores.scores) and torch.equal(circuit.mask, run.circuit.mask)


def test_node_lens_agrees_with_the_full_direct_logits(model):
    """node_lens never forms [src, batch, vocab]; its figures equal those computed from it."""
    from circuitfind.inspect import direct_logits, node_lens
    from circuitfind.task import load_task

    batch = load_task("ioi", n=6, split="test").batch(model)
    rows = {r.node: r for r in node_lens(model, batch, k=3)}
    per_node, _ = direct_logits(model, batch.clean)  # [src, batch, vocab]
    t = batch.targets
    effect = per_node.gather(-1, t.correct.clamp(min=0)[None].expand(per_node.shape[0], -1, -1)).mean(-1) \
        - per_node.gather(-1, t.wrong.clamp(min=0)[None].expand(per_node.shape[0], -1, -1)).mean(-1)
    mean_logits = per_node.mean(1)
    mean_logits = mean_logits - mean_logits.mean(-1, keepdim=True)
    for s, name in enumerate(model.graph.senders):
        assert rows[name].direct_effect == pytest.approx(float(effect[s].mean()), abs=1e-9)
        top = mean_logits[s].topk(3)
        assert [v for _, v in rows[name].promoted] == pytest.approx(top.values.tolist(), abs=1e-9)


def test_why_mean_ablation_equals_the_mean_output_by_hook(model):
    """Mean ablation: a node's output replaced by its mean over the reference prompts' real tokens."""
    reference = [PROMPT, "The students behind the cars", "Mary gave a drink to John"]
    c = why(model, PROMPT, " Mary", " John", ablation="mean", reference=reference)
    tokens, mask = model.to_tokens(reference, return_attention_mask=True)
    _, cache = model.run_with_cache(tokens, mask, names_filter=["blocks.1.attn.hook_result"])
    real = mask.to(model.dtype)[:, :, None]
    mean = (cache["blocks.1.attn.hook_result"][:, :, 0] * real).sum((0, 1)) / real.sum()

    def replace(x, name):
        x = x.clone()
        x[:, :, 0] = mean
        return x

    with model.hooks({"blocks.1.attn.hook_result": replace}):
        logits = model(model.to_tokens(PROMPT))[0, -1]
    expected = c.logit_diff - float(logits[c.a] - logits[c.b])
    assert next(n.total for n in c.nodes if n.node == "a1.h0") == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ConfigError, match="reference"):
        why(model, PROMPT, " Mary", " John", ablation="mean")


def test_bad_lens_and_steering_targets_say_what_is_expected(model):
    for what in ("resid:9", "resid:x", "m0.n3"):
        with pytest.raises(ConfigError, match="resid:L|node of the graph"):
            logit_lens(model, PROMPT, what)
    with pytest.raises(ConfigError, match="resid:L with L in 0..1"):
        generate(model, PROMPT, 1, [Intervention("resid:2", "steer", torch.zeros(model.cfg.d_model))])


def test_lens_of_resid_L_reads_the_stream_entering_layer_L(model):
    """resid:0 is the embeddings, resid:1 what the first block leaves: computed here without the lens's hooks."""
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
    entering = {0: model.embed(tokens, model.positions(torch.ones_like(tokens))), 1: cache["blocks.0.hook_resid_post"]}
    hidden = [i for i in (model.tokenizer.pad_token_id, model.tokenizer.unk_token_id) if i is not None]
    for L, x in entering.items():
        want = model.unembed(x)[0]  # [pos, vocab]
        want[:, hidden] = float("-inf")  # the lens leaves them out of its rankings
        rows = logit_lens(model, PROMPT, f"resid:{L}", k=1)
        assert [r.promoted[0][0] for r in rows] == [model.tokenizer.decode([i]) for i in want.argmax(-1).tolist()]
