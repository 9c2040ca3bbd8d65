# The Dataflow worker for an accelerator and a count: its machine type and the value of the
# worker_accelerator service option. The same table as TPU_SLICES / GPU_MACHINES / worker_shape
# in the Python launcher (tests/terraform checks them against each other). This file reads
# variables only, so the test can evaluate it with `terraform console` and no provider.

locals {
  # Single-host TPU slices: { chips = topology and machine type }.
  tpu_slices = {
    "tpu-v5e" = {
      type = "tpu-v5-lite-podslice"
      slices = {
        "1" = { topology = "1x1", machine_type = "ct5lp-hightpu-1t" }
        "4" = { topology = "2x2", machine_type = "ct5lp-hightpu-4t" }
        "8" = { topology = "2x4", machine_type = "ct5lp-hightpu-8t" }
      }
    }
    "tpu-v6e" = {
      type = "tpu-v6e-slice"
      slices = {
        "1" = { topology = "1x1", machine_type = "ct6e-standard-1t" }
        "4" = { topology = "2x2", machine_type = "ct6e-standard-4t" }
        "8" = { topology = "2x4", machine_type = "ct6e-standard-8t" }
      }
    }
    "tpu-v5p" = {
      type = "tpu-v5p-slice"
      slices = {
        "4" = { topology = "2x2x1", machine_type = "ct5p-hightpu-4t" }
      }
    }
  }

  # GPUs: { GPUs per worker = the machine type that carries them }.
  gpu_machines = {
    "nvidia-l4" = {
      type     = "nvidia-l4"
      machines = { "1" = "g2-standard-4", "2" = "g2-standard-24", "4" = "g2-standard-48", "8" = "g2-standard-96" }
    }
    "nvidia-a100-40gb" = {
      type     = "nvidia-tesla-a100"
      machines = { "1" = "a2-highgpu-1g", "2" = "a2-highgpu-2g", "4" = "a2-highgpu-4g", "8" = "a2-highgpu-8g", "16" = "a2-megagpu-16g" }
    }
    "nvidia-a100-80gb" = {
      type     = "nvidia-a100-80gb"
      machines = { "1" = "a2-ultragpu-1g", "2" = "a2-ultragpu-2g", "4" = "a2-ultragpu-4g", "8" = "a2-ultragpu-8g" }
    }
    "nvidia-h100-80gb" = {
      type     = "nvidia-h100-80gb"
      machines = { "1" = "a3-highgpu-1g", "2" = "a3-highgpu-2g", "4" = "a3-highgpu-4g", "8" = "a3-highgpu-8g" }
    }
    "nvidia-h200-141gb" = {
      type     = "nvidia-h200-141gb"
      machines = { "8" = "a3-ultragpu-8g" }
    }
  }

  cpu_machine_type = "n2-standard-2"

  accelerator_kind = (
    contains(keys(local.tpu_slices), var.accelerator) ? "tpu" :
    contains(keys(local.gpu_machines), var.accelerator) ? "gpu" : "cpu"
  )
  count_key = tostring(var.accelerator_count)

  # Null when Dataflow has no such worker (checked by a precondition on the template).
  tpu_slice   = try(local.tpu_slices[var.accelerator].slices[local.count_key], null)
  gpu_machine = try(local.gpu_machines[var.accelerator].machines[local.count_key], null)

  worker_shape = {
    kind = local.accelerator_kind
    machine_type = (
      local.accelerator_kind == "tpu" ? try(local.tpu_slice.machine_type, null) :
      local.accelerator_kind == "gpu" ? local.gpu_machine :
      var.accelerator_count == 1 ? local.cpu_machine_type : null
    )
    topology = try(local.tpu_slice.topology, null)
    worker_accelerator = (
      local.accelerator_kind == "tpu" ? try("type:${local.tpu_slices[var.accelerator].type};topology:${local.tpu_slice.topology}", null) :
      local.accelerator_kind == "gpu" ? try("type:${local.gpu_machines[var.accelerator].type};count:${var.accelerator_count};install-nvidia-driver", null) :
      null
    )
  }
  worker_shape_exists = local.worker_shape.machine_type != null
}
