"""The `full` preset's cost estimates printed by notebooks run in another preset stay the `full` preset's.

A notebook's Config takes each default from `pick(smoke=..., quick=..., full=...)` when the class is defined, with the
preset of that run, so a `quick` run cannot read the `full` values from it. The cells that print "full preset: ...
training FLOPs -> about ... min on an RTX 4090" therefore write those values out as literals (`40_000 * 128`), and
the Overviews' GPU estimates quote what those cells print. A change to a `full` value in the Config that forgets its
copy would leave that estimate silently wrong. This test reads every `full` value from the Config class's source and
requires each copied literal to equal the field it copies; a rewritten estimate line that no longer matches its
pattern fails too, so the table below follows the notebooks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from notebook_cells import module_source

REPO_ROOT = Path(__file__).resolve().parent.parent

NUM, TUPLE = r"[\d_.]+", r"\([\d, ]+\)"
# notebook -> [(a pattern that must match its code exactly once, whose named groups are Config fields' full values)]
ESTIMATES: dict[str, list[str]] = {
    "image_generation/ddpm/ddpm.ipynb": [
        rf"full_unet_flops = forward_flops\(UNet\((?P<channels>{TUPLE}), num_classes, (?P<attn_heads>{NUM})\)\)",
        rf"full_train = 3 \* full_unet_flops \* (?P<steps>{NUM}) \* (?P<batch_size>{NUM})",
        rf"full_passes = (?P<num_timesteps>{NUM}) \+ sum\((?P<ddim_steps>{TUPLE})\) \+ (?P<guidance_steps>{NUM}) \*",
        rf"full_sample = full_unet_flops \* (?P<n_fid_samples>{NUM}) \* full_passes",
        rf"side_train, side_sample = 3 \* full_unet_flops \* arms \* (?P<side_steps>{NUM}) \* (?P<batch_size>{NUM}), "
        rf"full_unet_flops \* arms \* (?P<side_n>{NUM}) \* (?P<side_ddim_steps>{NUM})",
    ],
    "image_generation/flow_matching/flow_matching.ipynb": [
        rf"full_unet_flops = forward_flops\(UNet\((?P<channels>{TUPLE}), num_classes, (?P<attn_heads>{NUM})\)\)",
        rf"full_train = 3 \* full_unet_flops \* (?P<steps>{NUM}) \* (?P<batch_size>{NUM})",
        rf"full_sample = full_unet_flops \* (?P<n_fid_samples>{NUM}) \* \(sum\((?P<euler_nfe>{TUPLE})\) \+ "
        rf"sum\((?P<heun_nfe>{TUPLE})\) \+ (?P<cond_nfe>{NUM})\)",
        rf"side_train, side_sample = 3 \* full_unet_flops \* 2 \* (?P<side_steps>{NUM}) \* (?P<batch_size>{NUM}), "
        rf"full_unet_flops \* 2 \* (?P<side_n>{NUM}) \* (?P<side_nfe>{NUM})",
    ],
    "image_classification/resnet/resnet.ipynb": [
        rf"full_flops = sum\(training_flops\(n, (?P<width>{NUM}), (?P<steps>{NUM}), (?P<low_res_steps>{NUM}), cfg\) "
        rf"for n in (?P<depths>{TUPLE})\)",
    ],
    "image_classification/vit/vit.ipynb": [
        rf"full_vit = ViT\(dataclasses\.replace\(cfg, patch_size=(?P<patch_size>{NUM}), dim=(?P<dim>{NUM}), "
        rf"depth=(?P<depth>{NUM}), heads=(?P<heads>{NUM}), mlp_ratio=(?P<mlp_ratio>{NUM})\)\)",
        rf"full_images = (?P<steps>{NUM}) \* (?P<batch_size>{NUM})",
    ],
    "image_generation/normalizing_flows/normalizing_flows.ipynb": [
        rf"full_cfg = Config\(couplings=(?P<couplings>{NUM}), width=(?P<width>{NUM}), blocks=(?P<blocks>{NUM})\)",
        rf"full_flops = 3 \* flow_forward_flops\(full_cfg, True\) \* \((?P<steps>{NUM}) \+ 2 \* "
        rf"(?P<compare_steps>{NUM})\) \* (?P<batch_size>{NUM})",
    ],
    "image_generation/gan/gan.ipynb": [
        rf"full_flops = len\(VARIANTS\) \* gan_step_flops\((?P<latent_dim>{NUM}), (?P<channels>{NUM}), cfg\.final_layer\) "
        rf"\* (?P<steps>{NUM}) \* (?P<batch_size>{NUM})",
    ],
    "representation_learning/simclr/simclr.ipynb": [
        rf"full_view = forward_flops\(SimCLR\((?P<width>{NUM}), (?P<blocks>{TUPLE}), (?P<proj_hidden>{NUM}), cfg\.proj_dim,",
        rf'"SimCLR": 3 \* full_view \* 2 \* (?P<batch_size>{NUM}) \* (?P<steps>{NUM}),',
        rf'"supervised": 3 \* full_view \* (?P<batch_size>{NUM}) \* (?P<sup_steps>{NUM}),',
        rf'"ablation": 2 \* 3 \* full_view \* 2 \* (?P<batch_size>{NUM}) \* (?P<ablation_steps>{NUM}),',
    ],
    "image_generation/vae/vae.ipynb": [
        rf"full_flops = 3 \* vae_forward_flops\((?P<latent_dim>{NUM}), (?P<channels>{NUM}), (?P<hidden>{NUM})\) \* "
        rf"(?P<steps>{NUM}) \* (?P<batch_size>{NUM})",
    ],
}


def full_values(source: str) -> dict[str, object]:
    """{field: its `full` value} of the `Config` class in `source`: `pick(..., full=X)`'s X, else the plain default,
    for each default written as a literal."""
    config = next(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef) and node.name == "Config")
    values = {}
    for statement in config.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and statement.value):
            continue
        value = statement.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "pick":
            value = next((k.value for k in value.keywords if k.arg == "full"), None)
        try:
            values[statement.target.id] = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            pass  # a default computed at run time (the device, an environment variable): not copied anywhere
    return values


def stale_copies(source: str, patterns: list[str]) -> list[str]:
    """What is wrong with the estimate's copies of the `full` values: a pattern that does not match exactly once, a
    group naming no Config field, a literal that differs from its field's `full` value."""
    full, problems = full_values(source), []
    for pattern in patterns:
        matches = list(re.finditer(pattern, source))
        if len(matches) != 1:
            problems.append(f"{len(matches)} matches of {pattern!r} (the estimate was rewritten: update ESTIMATES)")
            continue
        for field, text in matches[0].groupdict().items():
            if field not in full:
                problems.append(f"{field}: no such Config field with a literal default")
            elif ast.literal_eval(text) != full[field]:
                problems.append(f"{field}: the estimate uses {text}, the full preset {full[field]!r}")
    return problems


@pytest.mark.parametrize("notebook", sorted(ESTIMATES))
def test_the_full_estimate_copies_the_full_preset(notebook: str) -> None:
    assert not stale_copies(module_source(REPO_ROOT / notebook), ESTIMATES[notebook])


def test_the_check_finds_a_full_value_changed_in_the_config_alone() -> None:
    """The control: DDPM's code with the `full` step budget changed in its Config (and not in the estimate), and with
    the estimate's line rewritten, each fails for that reason; the unchanged code passes."""
    notebook = "image_generation/ddpm/ddpm.ipynb"
    source = module_source(REPO_ROOT / notebook)
    steps_field = re.search(r"\n    steps: int = pick\(.*full=(40_000)\)", source)
    assert steps_field, "DDPM's Config no longer gives steps as pick(..., full=40_000): update this control"
    changed = source[:steps_field.start(1)] + "50_000" + source[steps_field.end(1):]
    assert stale_copies(changed, ESTIMATES[notebook]) == ["steps: the estimate uses 40_000, the full preset 50000"]
    rewritten = source.replace("full_train = 3 * full_unet_flops", "full_train = 3.0 * full_unet_flops")
    assert len(stale_copies(rewritten, ESTIMATES[notebook])) == 1
    side = source.replace("side_n: int = pick(smoke=50, quick=500, full=10_000)", "side_n: int = pick(smoke=50, quick=500, full=20_000)")
    assert side != source and stale_copies(side, ESTIMATES[notebook]) == [
        "side_n: the estimate uses 10_000, the full preset 20000"]  # the side experiment's copy is checked too
    assert stale_copies(source, ESTIMATES[notebook]) == []
