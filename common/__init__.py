"""Shared plumbing for the notebooks: small, typed, documented, unit-tested.

Nothing in here is a lesson: models, losses, samplers and training loops live in the
notebooks. What lives here is what every notebook needs and nobody wants to read twice.
"""

from common.checkpoint import CheckpointError, checkpoint_dir, checkpoint_path, load_checkpoint, save_checkpoint
from common.cost import announce_cost
from common.data import (
    DatasetError,
    DeviceImageLoader,
    ImageData,
    data_dir,
    load_image_dataset,
    load_tinyshakespeare,
    load_tinystories,
)
from common.device import DeviceError, describe_device, get_device, host_to_device, parse_device
from common.fid import fid, get_classifier
from common.planetoid import Graph, load_planetoid
from common.plot import plot_curves, show_images
from common.precision import (amp_dtype, autocast, compile_report, compile_unavailable_reason, enable_tf32, fp32_exact,
                              grad_scaler, guarded_step, is_compile_error, maybe_compile, precision_mode,
                              precision_ran, to_channels_last)
from common.preset import PRESETS, get_preset, pick
from common.record import TIMING_POLICY, RunClock, peak_memory_bytes, runs_dir, write_run_record
from common.seed import rng_state, seed_everything, seed_from_env, set_rng_state, stream_seed
from common.slicing import SideRuns, exit_if_slice_over, slice_time_up

# Which package this is: the notebooks' setup cell checks it, since any package can be called `common`.
PACKAGE_ID = "dl-4090-hours-common"  # the distribution's name in pyproject.toml

__all__ = [
    "PACKAGE_ID",
    "CheckpointError",
    "DatasetError",
    "DeviceError",
    "DeviceImageLoader",
    "Graph",
    "ImageData",
    "PRESETS",
    "RunClock",
    "SideRuns",
    "TIMING_POLICY",
    "amp_dtype",
    "announce_cost",
    "autocast",
    "checkpoint_dir",
    "checkpoint_path",
    "compile_report",
    "compile_unavailable_reason",
    "data_dir",
    "describe_device",
    "enable_tf32",
    "exit_if_slice_over",
    "fid",
    "fp32_exact",
    "get_classifier",
    "get_device",
    "get_preset",
    "grad_scaler",
    "guarded_step",
    "host_to_device",
    "is_compile_error",
    "load_checkpoint",
    "load_image_dataset",
    "load_planetoid",
    "load_tinyshakespeare",
    "load_tinystories",
    "maybe_compile",
    "peak_memory_bytes",
    "parse_device",
    "pick",
    "plot_curves",
    "precision_mode",
    "precision_ran",
    "rng_state",
    "runs_dir",
    "save_checkpoint",
    "seed_everything",
    "seed_from_env",
    "set_rng_state",
    "show_images",
    "slice_time_up",
    "stream_seed",
    "to_channels_last",
    "write_run_record",
]
