"""Methods that produce interventions. Each module holds only what differs between methods.

- `caa`: mean difference of activations (no training);
- `sft`, `reps`, `split`: losses run by the one shared trainer in `easyedit_split.training`.
The mapping from EasyEdit's `alg_name` to these lives in `easyedit_split.registry`.
"""
