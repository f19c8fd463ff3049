"""Inspecting a circuit's parts, on the canonical model through its hook points.

    logit_lens(model, prompt, "a3.h5" | "m2" | "resid:4")        vocabulary projection per position
    node_lens(model, batch)                                      each node's effect on a task's answers
    why(model, prompt, "A", "B")                                 direct and total effect of every node on A − B
    generate(model, prompt, n, [Intervention(...)]), compare(...)   interventions during generation (steer along
                                                                 token_direction(model, " Paris"); SAE latents sae:i)
    patchscope(model, source_prompt, layer | "resid_mid:2" | "a1.h0", ...)  decode a hidden state by patching it
    top_activations(model, data, "m2.n17")                       top-activating examples
    SAE.load(path) + latent_projection / latent_attribution / top_activations(sae=, latent=)
    flow_graph(model, prompt, threshold)                         the per-prompt information-flow graph of nodes
    flow(model, prompt, tau)                                     the same, token by layer (TokenFlow)
"""

from circuitfind.inspect.contrast import Contrast, Contribution, why
from circuitfind.inspect.flow import flow_graph
from circuitfind.inspect.interventions import Intervention, compare, generate, mean_of, token_direction
from circuitfind.inspect.lens import LensRow, NodeLens, direct_logits, logit_lens, node_lens
from circuitfind.inspect.patchscope import IDENTITY_PROMPT, hidden, patchscope
from circuitfind.inspect.sae import SAE, latent_attribution, latent_projection
from circuitfind.inspect.token_flow import FlowEdge, TokenFlow, flow
from circuitfind.inspect.top_examples import Activation, top_activations

__all__ = ["IDENTITY_PROMPT", "SAE", "Activation", "Contrast", "Contribution", "Intervention", "LensRow", "NodeLens",
           "FlowEdge", "TokenFlow", "compare", "direct_logits", "flow", "flow_graph", "generate", "hidden", "latent_attribution", "latent_projection",
           "logit_lens", "mean_of", "node_lens", "patchscope", "token_direction", "top_activations", "why"]
