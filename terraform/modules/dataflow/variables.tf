variable "project_id" {
  description = "The project Dataflow jobs run in."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "name" {
  description = "Prefix of the service accounts (<name>-worker, <name>-launcher) and the default repository id."
  type        = string
  default     = "hyperbatch"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name))
    error_message = "name must be 2-20 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Dataflow region (HYPERBATCH_DATAFLOW_REGION), also the Artifact Registry location. Pick one that offers the accelerator."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west4 (not a zone)."
  }
}

variable "accelerator" {
  description = "Default accelerator of the workers: a name of the price table (jobs/pricing.py). Each job spec still chooses its own; this sets the worker image flavour (cpu, tpu or gpu) and the template's default machine type."
  type        = string
  default     = "cpu"

  validation {
    condition     = contains(["cpu", "tpu-v5e", "tpu-v6e", "tpu-v5p", "nvidia-l4", "nvidia-a100-40gb", "nvidia-a100-80gb", "nvidia-h100-80gb", "nvidia-h200-141gb"], var.accelerator)
    error_message = "accelerator must be one of cpu, tpu-v5e, tpu-v6e, tpu-v5p, nvidia-l4, nvidia-a100-40gb, nvidia-a100-80gb, nvidia-h100-80gb, nvidia-h200-141gb."
  }
}

variable "accelerator_count" {
  description = "Accelerators per worker: TPU chips of a single-host slice (1, 4 or 8; v5p: 4) or GPUs per machine (L4: 1, 2, 4, 8; H200: 8). Must be 1 for cpu."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2, 4, 8, 16], var.accelerator_count)
    error_message = "accelerator_count must be 1, 2, 4, 8 or 16; the shapes Dataflow offers per accelerator are listed in the module README."
  }
}

variable "accelerator_topology" {
  description = "TPU slice topology (e.g. 2x2). Null: the one Dataflow uses for accelerator_count chips; if given it must be that one."
  type        = string
  default     = null

  validation {
    condition     = var.accelerator_topology == null || can(regex("^[0-9]+x[0-9]+(x[0-9]+)?$", coalesce(var.accelerator_topology, "1x1")))
    error_message = "accelerator_topology must look like 2x2 or 2x2x1."
  }
}

variable "machine_type" {
  description = "Worker machine type of the template's default environment. Null: the one that carries accelerator_count accelerators (n2-standard-2 for cpu)."
  type        = string
  default     = null

  validation {
    condition     = var.machine_type == null || can(regex("^[a-z0-9]+-[a-z0-9-]+$", coalesce(var.machine_type, "n2-standard-2")))
    error_message = "machine_type must be a Compute Engine machine type such as n2-standard-4."
  }
}

variable "max_workers" {
  description = "Most workers of one job (HYPERBATCH_DATAFLOW_MAX_WORKERS); bounds the accelerator quota a job can take."
  type        = number
  default     = 4

  validation {
    condition     = var.max_workers >= 1 && var.max_workers <= 1000 && floor(var.max_workers) == var.max_workers
    error_message = "max_workers must be a whole number from 1 to 1000."
  }
}

variable "disk_size_gb" {
  description = "Worker boot disk in GB (HYPERBATCH_DATAFLOW_DISK_SIZE_GB). Null: Dataflow's default, 200 GB on TPU/GPU workers (room for the image and the model)."
  type        = number
  default     = null

  validation {
    condition     = var.disk_size_gb == null || try(var.disk_size_gb >= 30 && var.disk_size_gb <= 65536, false)
    error_message = "disk_size_gb must be between 30 and 65536."
  }
}

variable "network" {
  description = "VPC network of the workers (HYPERBATCH_DATAFLOW_NETWORK). Null: the project's default network."
  type        = string
  default     = null
}

variable "subnetwork" {
  description = "Subnetwork of the workers, regions/R/subnetworks/S or a full URL (HYPERBATCH_DATAFLOW_SUBNETWORK). It needs Private Google Access when public_ips is false."
  type        = string
  default     = null

  validation {
    condition     = var.subnetwork == null || can(regex("(^|/)regions/[a-z0-9-]+/subnetworks/[a-z0-9-]+$", coalesce(var.subnetwork, "regions/r/subnetworks/s")))
    error_message = "subnetwork must be regions/REGION/subnetworks/NAME or a URL ending in it."
  }
}

variable "public_ips" {
  description = "Give workers public IPs (HYPERBATCH_DATAFLOW_PUBLIC_IPS). Default false: private workers, which reach Google APIs through Private Google Access."
  type        = bool
  default     = false
}

variable "repository_id" {
  description = "Artifact Registry repository of the images (worker, flex-launcher, trigger). Null: <name>."
  type        = string
  default     = null

  validation {
    condition     = var.repository_id == null || can(regex("^[a-z][a-z0-9-]{0,62}$", coalesce(var.repository_id, "x")))
    error_message = "repository_id must be lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "image_tag" {
  description = "Tag of the images built from docker/ (docker/README.md) and pushed to the repository."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a Docker tag: letters, digits, '_', '.' and '-', at most 128."
  }
}

variable "worker_image" {
  description = "Worker image (HYPERBATCH_DATAFLOW_IMAGE). Null: <repository>/worker-<cpu|tpu|gpu>:<image_tag>, the flavour following accelerator."
  type        = string
  default     = null
}

variable "launcher_image" {
  description = "Flex Template launcher image (docker/flex-template). Null: <repository>/flex-launcher:<image_tag>."
  type        = string
  default     = null
}

variable "keep_image_versions" {
  description = "Artifact Registry cleanup: the most recent versions of each image kept whatever their age."
  type        = number
  default     = 5

  validation {
    condition     = var.keep_image_versions >= 1 && floor(var.keep_image_versions) == var.keep_image_versions
    error_message = "keep_image_versions must be a whole number, at least 1."
  }
}

variable "image_retention_days" {
  description = "Artifact Registry cleanup: other versions are deleted this many days after upload (untagged ones after a seventh of it, at least a day)."
  type        = number
  default     = 90

  validation {
    condition     = var.image_retention_days >= 7 && floor(var.image_retention_days) == var.image_retention_days
    error_message = "image_retention_days must be a whole number of days, at least 7."
  }
}

variable "staging_bucket" {
  description = "Bucket of the Flex Template spec file and of Dataflow temp files (the storage module's staging_bucket)."
  type        = string
}

variable "template_object" {
  description = "Object name of the Flex Template spec file in staging_bucket."
  type        = string
  default     = "templates/hyperbatch.json"

  validation {
    condition     = endswith(var.template_object, ".json") && !startswith(var.template_object, "/")
    error_message = "template_object must be an object name ending in .json, without a leading '/'."
  }
}

variable "template_metadata_file" {
  description = "The Flex Template's metadata (its parameters). Null: docker/flex-template/metadata.json of this repository, read with file()."
  type        = string
  default     = null
}

variable "temp_location" {
  description = "Dataflow temp location, gs://... (the storage module's temp_location); staging files go under <temp_location>/staging."
  type        = string

  validation {
    condition     = startswith(var.temp_location, "gs://")
    error_message = "temp_location must be a gs:// path."
  }
}

variable "job_store_bucket" {
  description = "The job-store bucket: workers write results, errors, manifests and the final status there (objectAdmin on this bucket only)."
  type        = string
}

variable "read_buckets" {
  description = "Buckets workers only read (inputs, models), by a key you choose: objectViewer on each."
  type        = map(string)
  default     = {}
}

variable "events_topic" {
  description = "Status-events topic (name or projects/P/topics/T) that workers publish the final state to; null: no grant. Pass a value known at plan time (the pubsub module's output is)."
  type        = string
  default     = null
}

variable "launcher_members" {
  description = "Principals that may launch hyperbatch jobs on Dataflow (the trigger's service account, operators), keyed by a name you choose: dataflow.developer, actAs the worker service account, read the template. The launcher service account made here always may."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for m in values(var.launcher_members) : can(regex("^(user|group|serviceAccount|principal|principalSet):", m))])
    error_message = "launcher_members: each value must be a single principal such as serviceAccount:x@p.iam.gserviceaccount.com; allUsers and allAuthenticatedUsers are refused."
  }
}

variable "kms_key_name" {
  description = "Optional CMEK of the Artifact Registry repository (projects/P/locations/L/keyRings/R/cryptoKeys/K; the Artifact Registry service agent needs encrypter/decrypter on it). Null: Google-managed."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", coalesce(var.kms_key_name, "x")))
    error_message = "kms_key_name must look like projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "labels" {
  description = "Labels of the repository, and default user labels of the Dataflow jobs."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels: keys start with a lowercase letter; keys and values use lowercase letters, digits, '_' and '-' (at most 63)."
  }
}
