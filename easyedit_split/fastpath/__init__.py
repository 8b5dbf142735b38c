"""The fast path: how training, CAA and scoring avoid running the same layers twice.

- `recording`: the one activation recorder (`record_activations(model, layers, stop_after=...)`);
- `replay`: layers below the intervention run once, only the layers from it upward are replayed;
- `prefix_capture`: in that capture, the prefix every row shares runs through those layers once;
- `packing`: a prompt and both of its completions share one steered pass (training and scoring);
- `capture_cache`: one capture per dataset, reused across methods and runs (memory, optional disk);
- `length_groups`: a step's replay split by length when that saves enough positions;
- `token_nll`: token NLLs from the LM head at chosen positions (one fused autograd function).

Nothing here is user-facing API: the modules are imported by `training`, `methods.caa` and
`evaluation.sweep_nll`, and results match the plain full forward (tests pin this).
"""
