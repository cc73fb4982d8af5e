"""``mddose bench networks``: cost of the noise predictor per block type, per image size, and of the bare scans.

Measured side by side in one run: for each block type (residual conv, Swin, Mamba with the ``s6`` scan, Mamba with
the ``ssd`` scan; denoiser and structure encoder both of that type, skeleton from one preset) the parameter count
and the forward and forward+backward time per image at each size, with the log-log slope of time against pixel
count (1 = linear cost, as Mamba claims; attention in fixed windows is linear too, global attention would be 2).
Then the ``paper`` config's time per 128×128 slice (one network evaluation, i.e. one denoising step) for both
scan kinds, and the bare scans at 64×64 and 128×128 tokens (256 channels, 16 states) against the references.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mddose.atomic import write_json
from mddose.ownership import check_output_file, json_with
from mddose.bench.timing import loglog_slope, machine_info, time_call
from mddose.device import bf16_pays, resolve_device
from mddose.models.build import build_model, count_parameters
from mddose.models.config import layout_configs, preset
from mddose.models.ssm import selective_scan_s6, selective_scan_s6_ref, ssd_scan, ssd_scan_ref
from mddose.models.ssm_kernel import kernel_buildable, ssd_scan_cpu

logger = logging.getLogger(__name__)

#: Block types compared, as config changes on the chosen preset.
VARIANTS: dict[str, dict[str, str]] = {
    "conv": {"denoiser_block": "conv", "encoder_block": "conv"},
    "swin": {"denoiser_block": "swin", "encoder_block": "swin"},
    "mamba-s6": {"denoiser_block": "mamba", "encoder_block": "mamba", "ssm_kind": "s6"},
    "mamba-ssd": {"denoiser_block": "mamba", "encoder_block": "mamba", "ssm_kind": "ssd"},
}
PAPER_PARAMETERS_M = 30.47  # Table II of the paper


def bench_networks(
    out_json: Path,
    sizes: tuple[int, ...] = (64, 128, 256),
    repeats: int = 3,
    device: str = "auto",
    preset_name: str = "small",
    batch: int = 1,
    paper: bool = True,
    scans: bool = True,
    seed: int = 0,
    threads: int | None = None,
    layouts: bool = True,
) -> dict[str, Any]:
    """Run the benchmark, write ``out_json`` (atomically) and return the same dict.

    Times are seconds per image (per slice); the slopes and headline numbers use the minimum over ``repeats``
    (after one warm-up call), the steadier statistic on a shared machine; medians are kept beside them.
    ``threads`` sets torch's CPU threads for the run (on a CPU shared with other jobs, 1 thread gives steady
    numbers; more threads than free cores can be many times slower).
    """
    check_output_file(out_json, "mddose bench networks", (), json_with("benchmark", "networks"), overwrite=True)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(out_json, sizes, repeats, device, preset_name, batch, paper, scans, seed, layouts)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    out_json: Path, sizes: tuple[int, ...], repeats: int, device: str, preset_name: str, batch: int,
    paper: bool, scans: bool, seed: int, layouts: bool = True,
) -> dict[str, Any]:
    dev = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    result: dict[str, Any] = {
        "benchmark": "networks",
        "machine": machine_info(dev),
        "settings": {"sizes": list(sizes), "repeats": repeats, "warmup": 1, "batch": batch, "preset": preset_name,
                     "statistic": "min", "seed": seed},
        "block_types": {},
    }
    for name, changes in VARIANTS.items():
        cfg = preset(preset_name, **changes)
        model = build_model(cfg, seed=seed).to(dev)
        entry: dict[str, Any] = {"config": cfg.to_dict(), "parameters": count_parameters(model), "sizes": []}
        for size in sizes:
            row = _time_model(model, cfg, size, batch, repeats, dev, generator)
            logger.info("%-9s %4d²: forward %.4f s, forward+backward %.4f s per image", name, size,
                        row["forward_s_per_image"], row["forward_backward_s_per_image"])
            entry["sizes"].append(row)
        pixels = [r["pixels"] for r in entry["sizes"]]
        for key in ("forward", "forward_backward"):
            entry[f"slope_{key}"] = loglog_slope(pixels, [r[f"{key}_s_per_image"] for r in entry["sizes"]])
        result["block_types"][name] = entry
        del model
    if paper:
        result["paper"] = {"published_parameters_m": PAPER_PARAMETERS_M}
        for kind in ("ssd", "s6"):
            cfg = preset("paper", ssm_kind=kind)
            model = build_model(cfg, seed=seed).to(dev)
            row = _time_model(model, cfg, cfg.image_size, 1, repeats, dev, generator)
            logger.info("paper-%s %d²: forward %.3f s, forward+backward %.3f s per slice", kind, cfg.image_size,
                        row["forward_s_per_image"], row["forward_backward_s_per_image"])
            result["paper"][kind] = {"parameters": count_parameters(model), **row}
            del model
    if layouts:
        result["layouts"] = time_layouts(preset_name, dev, repeats, generator, cpu_kernel=True)
    if scans:
        result["scans"] = _time_scans(dev, repeats, generator)
    write_json(out_json, result)
    return result


def _time_model(
    model: torch.nn.Module, cfg: Any, size: int, batch: int, repeats: int, dev: torch.device, gen: torch.Generator
) -> dict[str, Any]:
    """Forward (no grad, eval) and forward+backward (train) timings of one model at one image size."""
    x_t = torch.randn(batch, cfg.in_channels, size, size, generator=gen).to(dev)
    cond = torch.randn(batch, cfg.cond_channels, size, size, generator=gen).to(dev)
    t = torch.randint(0, cfg.num_timesteps, (batch,), generator=gen).to(dev)

    def forward() -> None:
        with torch.no_grad():
            model(x_t, t, cond)

    def forward_backward() -> None:
        model(x_t, t, cond).float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    model.eval()
    fwd = time_call(forward, dev, repeats)
    model.train()
    fwd_bwd = time_call(forward_backward, dev, repeats)
    model.zero_grad(set_to_none=True)
    return {
        "size": size,
        "pixels": size * size,
        "forward_s_per_image": fwd["min_s"] / batch,
        "forward_backward_s_per_image": fwd_bwd["min_s"] / batch,
        "forward": fwd,
        "forward_backward": fwd_bwd,
    }


def _time_scans(dev: torch.device, repeats: int, gen: torch.Generator) -> list[dict[str, Any]]:
    """Forward+backward of the bare scans: 256 channels, 16 states, batch 16 on CUDA and 1 on CPU.

    s6: 256 channels with their own decays; ssd: the same 256 channels as 16 heads of 16. References only at
    32×32 tokens (they take one step per token).
    """
    batch, channels, states, heads = (16 if dev.type == "cuda" else 1), 256, 16, 16
    rows = []
    for side in (32, 64, 128):
        length = side * side
        u = torch.randn(batch, length, channels, generator=gen).to(dev)
        delta = F.softplus(torch.randn(batch, length, channels, generator=gen) - 4.0).to(dev)
        B, C = (torch.randn(batch, length, 1, states, generator=gen).to(dev) for _ in range(2))
        A = -torch.arange(1, states + 1, dtype=torch.float32, device=dev).expand(channels, states).contiguous()
        D = torch.ones(channels, device=dev)
        a_head, dt_head = A[::16, 0].contiguous(), delta[..., ::16].contiguous()
        cases = {
            "s6": (selective_scan_s6, (u, delta, A, B, C, D)),
            "ssd": (ssd_scan, (u.view(batch, length, heads, -1), dt_head, a_head, B, C, D.view(heads, -1))),
        }
        if dev.type == "cpu" and kernel_buildable():
            cases["ssd-cpu_kernel"] = (ssd_scan_cpu, cases["ssd"][1])
        if side == 32:
            cases["s6-reference"] = (selective_scan_s6_ref, cases["s6"][1])
            cases["ssd-reference"] = (ssd_scan_ref, cases["ssd"][1])
        for name, (fn, args) in cases.items():
            leaves = [a.detach().requires_grad_() for a in args]

            def step(fn=fn, leaves=leaves) -> None:
                fn(*leaves).sum().backward()
                for leaf in leaves:
                    leaf.grad = None

            timing = time_call(step, dev, repeats)
            logger.info("scan %-13s %5d tokens: forward+backward %.4f s", name, length, timing["min_s"])
            rows.append({"scan": name, "batch": batch, "tokens": length, "channels": channels, "states": states,
                         "forward_backward_s": timing["min_s"], "timing": timing})
    return rows


def time_layouts(preset_name: str, dev: torch.device, repeats: int, gen: torch.Generator, batch: int = 8,
                 size: int = 128, cpu_kernel: bool = False) -> dict[str, Any]:
    """Training steps (forward + backward + AdamW, ``batch`` images at ``size``²) of the three layouts of
    :func:`~mddose.models.config.layout_configs` on the preset's widths, in float32 and bf16 autocast (float32
    only where the device has no native bf16: :func:`~mddose.device.bf16_pays`), their
    ratios to the all-conv twin, and each layout's per-stage split (forward + backward of every stage alone).
    ``cpu_kernel``: on a CPU that can build it, the Mamba layouts also run on the compiled scan (rows
    ``…+cpu_kernel``)."""
    rows: dict[str, Any] = {}
    precisions = ("float32", "bf16") if bf16_pays(dev) else ("float32",)
    configs = layout_configs(preset(preset_name))
    if cpu_kernel and dev.type == "cpu" and kernel_buildable():
        configs |= {f"{name}+cpu_kernel": configs[name].replace(scan_backend="cpu_kernel")
                    for name in ("mamba", "hybrid")}
    for name, cfg in configs.items():
        model = build_model(cfg, seed=0).to(dev)
        x_t, t, cond = _inputs(cfg, batch, size, dev, gen)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        row: dict[str, Any] = {"config": cfg.to_dict(), "parameters": count_parameters(model)}
        for precision in precisions:
            def step(precision=precision, model=model, optimizer=optimizer) -> None:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(x_t, t, cond).float().square().mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            row[f"train_step_s_{precision}"] = time_call(step, dev, repeats)["min_s"]
            logger.info("layout %-17s %s: %.3f s per training step (batch %d, %d²)", name, precision,
                        row[f"train_step_s_{precision}"], batch, size)
        row["stages"] = _time_stages(model, x_t, t, cond, dev, repeats)
        rows[name] = row
        del model, optimizer
    for name, row in rows.items():
        for precision in precisions:
            row[f"ratio_to_conv_{precision}"] = row[f"train_step_s_{precision}"] / rows["conv"][
                f"train_step_s_{precision}"]
    return {"batch": batch, "size": size, "preset": preset_name, "precisions": list(precisions), "layouts": rows}


def _inputs(cfg: Any, batch: int, size: int, dev: torch.device, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    x_t = torch.randn(batch, cfg.in_channels, size, size, generator=gen).to(dev)
    cond = torch.randn(batch, cfg.cond_channels, size, size, generator=gen).to(dev)
    return x_t, torch.randint(0, cfg.num_timesteps, (batch,), generator=gen).to(dev), cond


def _time_stages(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 dev: torch.device, repeats: int) -> list[dict[str, Any]]:
    """Forward + backward (float32) of every stage of the denoiser and the structure encoder on its own input."""
    stages = [(f"denoiser down {i + 1}", s) for i, s in enumerate(model.down)]
    stages += [(f"denoiser up {len(model.dec) - j - 1}", s) for j, s in enumerate(model.dec)]
    if model.structure_encoder is not None:
        stages += [(f"structure {i + 1}", s) for i, s in enumerate(model.structure_encoder.stages)]
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    sizes: dict[str, list[int]] = {}

    def keep(name: str):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen.setdefault(name, tuple(a.detach().clone() for a in args))
            sizes.setdefault(name, list(out.shape[-2:]))
        return hook

    hooks = [stage.register_forward_hook(keep(name)) for name, stage in stages]
    with torch.no_grad():
        model(x_t, t, cond)
    for hook in hooks:
        hook.remove()
    rows = []
    for name, stage in stages:
        args = seen[name]

        def forward_backward(stage=stage, args=args) -> None:
            stage(*(a.requires_grad_() for a in args)).square().mean().backward()
            stage.zero_grad(set_to_none=True)

        seconds = time_call(forward_backward, dev, repeats)["min_s"]
        rows.append({"stage": name, "block": type(stage.body).__name__, "size": sizes[name],
                     "channels": stage.embed.proj.out_channels, "forward_backward_s": seconds})
    return rows
