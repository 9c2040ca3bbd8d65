variable "project_id" {
  description = "The project to deploy hyperbatch into."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "region" {
  description = "Region of the buckets, the Dataflow jobs, the images and the trigger. Choose one that offers your accelerator."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 (not a zone)."
  }
}

variable "name" {
  description = "Name of the deployment: prefixes buckets (<project>-<name>-jobs, ...), topics, service accounts and the repository."
  type        = string
  default     = "hyperbatch"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,10}[a-z0-9]$", var.name))
    error_message = "name must be 2-12 lowercase letters, digits and hyphens, starting with a letter (it prefixes service account ids)."
  }
}

variable "trigger" {
  description = "How job requests reach the trigger: pull (run `hyperbatch trigger listen` yourself), push (a Cloud Run service; serverless), both, or none (submit with the CLI only)."
  type        = string
  default     = "pull"

  validation {
    condition     = contains(["pull", "push", "both", "none"], var.trigger)
    error_message = "trigger must be pull, push, both or none."
  }
}

variable "accelerator" {
  description = "Default worker accelerator (cpu, tpu-v5e, tpu-v6e, tpu-v5p, nvidia-l4, nvidia-a100-40gb, nvidia-a100-80gb, nvidia-h100-80gb, nvidia-h200-141gb): picks the worker image flavour and the template's defaults. Each job spec still names its own."
  type        = string
  default     = "cpu"
}

variable "accelerator_count" {
  description = "Accelerators per worker for the default shape (TPU chips of a slice, GPUs per machine)."
  type        = number
  default     = 1
}

variable "accelerator_topology" {
  description = "TPU topology of the default shape; null derives it from accelerator_count."
  type        = string
  default     = null
}

variable "machine_type" {
  description = "Worker machine type of the template's default environment; null derives it from the accelerator."
  type        = string
  default     = null
}

variable "max_workers" {
  description = "Most Dataflow workers of one job."
  type        = number
  default     = 4
}

variable "disk_size_gb" {
  description = "Worker disk size in GB; null: Dataflow's default (200 GB on TPU/GPU workers)."
  type        = number
  default     = null
}

variable "network" {
  description = "VPC network of the workers; null: default."
  type        = string
  default     = null
}

variable "subnetwork" {
  description = "Subnetwork of the workers (regions/R/subnetworks/S); it needs Private Google Access while public_ips is false."
  type        = string
  default     = null
}

variable "public_ips" {
  description = "Give Dataflow workers public IPs. Default false (private workers)."
  type        = bool
  default     = false
}

variable "image_tag" {
  description = "Tag of the images you build and push (worker-<cpu|tpu|gpu>, flex-launcher, trigger)."
  type        = string
  default     = "0.1.0"
}

variable "worker_image" {
  description = "Worker image; null: <repository>/worker-<flavour>:<image_tag>."
  type        = string
  default     = null
}

variable "trigger_image" {
  description = "Trigger image; null: <repository>/trigger:<image_tag>."
  type        = string
  default     = null
}

variable "existing_input_bucket" {
  description = "Use this existing bucket for inputs instead of creating <project>-<name>-inputs."
  type        = string
  default     = null
}

variable "model_buckets" {
  description = "More buckets jobs read (models, shared datasets), by a key you choose: workers, the trigger and operators get objectViewer, and triggered jobs may read them."
  type        = map(string)
  default     = {}
}

variable "request_schema_encoding" {
  description = "Attach the JobRequest Avro schema (schemas/job_request.avsc) to the requests topic with this encoding (JSON or BINARY); null: no schema, plain specs may be published."
  type        = string
  default     = null
}

variable "operators" {
  description = "People and groups who use hyperbatch, keyed by a name you choose (user:alice@example.com, group:ml@example.com): they may submit and launch jobs, read and write the job store, upload inputs, publish requests and run the pull listener."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for m in values(var.operators) : can(regex("^(user|group|serviceAccount|principal|principalSet):", m))])
    error_message = "operators: each value must be a single principal such as user:alice@example.com; allUsers and allAuthenticatedUsers are refused."
  }
}

variable "kms_key_name" {
  description = "Optional CMEK (projects/P/locations/L/keyRings/R/cryptoKeys/K, in region) for the buckets and topics."
  type        = string
  default     = null
}

variable "enable_apis" {
  description = "Enable the APIs hyperbatch uses (left enabled on destroy)."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let terraform destroy delete non-empty buckets and the trigger service. Only for throwaway projects."
  type        = bool
  default     = false
}

variable "labels" {
  description = "Labels added to every resource that takes labels, and to Dataflow jobs."
  type        = map(string)
  default     = {}
}
