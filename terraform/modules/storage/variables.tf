variable "project_id" {
  description = "The project that holds the buckets."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens), not a project name or number."
  }
}

variable "name" {
  description = "Prefix of every bucket name: <project_id>-<name>-jobs, -inputs and -staging (unless a name is given below)."
  type        = string
  default     = "hyperbatch"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name))
    error_message = "name must be 2-20 lowercase letters, digits and hyphens, starting with a letter: it prefixes bucket and topic names."
  }
}

variable "location" {
  description = "Location of the buckets: the region the Dataflow jobs run in (e.g. us-central1), so workers read and write without cross-region egress."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z]+[A-Za-z0-9-]*[0-9A-Za-z]$", var.location))
    error_message = "location must be a Cloud Storage location such as us-central1, europe-west4 or US."
  }
}

variable "job_store_bucket_name" {
  description = "Name of the job-store bucket (job folders: spec.json, status.json, results, errors, manifest). Default: <project_id>-<name>-jobs."
  type        = string
  default     = null

  validation {
    condition     = var.job_store_bucket_name == null || can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", var.job_store_bucket_name))
    error_message = "job_store_bucket_name must be a valid bucket name: 3-63 lowercase letters, digits, '-', '_' and '.'."
  }
}

variable "input_bucket" {
  description = "The bucket jobs read prompts, images and models from: create = true makes <project_id>-<name>-inputs (or the given name); create = false uses an existing bucket, whose name must then be given."
  type = object({
    create = optional(bool, true)
    name   = optional(string)
  })
  default = {}

  validation {
    condition     = var.input_bucket.create || var.input_bucket.name != null
    error_message = "input_bucket: to use an existing bucket set create = false and name = \"<its name>\"."
  }

  validation {
    condition     = var.input_bucket.name == null || can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", coalesce(var.input_bucket.name, "ok")))
    error_message = "input_bucket.name must be a valid bucket name: 3-63 lowercase letters, digits, '-', '_' and '.'."
  }
}

variable "staging_bucket_name" {
  description = "Name of the staging bucket (Dataflow temp and staging files under temp/, the Flex Template spec under templates/). Default: <project_id>-<name>-staging."
  type        = string
  default     = null

  validation {
    condition     = var.staging_bucket_name == null || can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", var.staging_bucket_name))
    error_message = "staging_bucket_name must be a valid bucket name: 3-63 lowercase letters, digits, '-', '_' and '.'."
  }
}

variable "jobs_prefix" {
  description = "Folder of the job store inside the job-store bucket: HYPERBATCH_JOBS_ROOT is gs://<bucket>/<jobs_prefix>."
  type        = string
  default     = "jobs"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_/-]*[a-z0-9]$", var.jobs_prefix)) && !strcontains(var.jobs_prefix, "//")
    error_message = "jobs_prefix must be a folder path without leading or trailing '/', e.g. jobs."
  }
}

variable "specs_prefix" {
  description = "Drop-a-spec folder in the job-store bucket: a .yaml/.yml/.json spec written under gs://<bucket>/<specs_prefix>/ becomes a job (with the pubsub module's notification)."
  type        = string
  default     = "specs"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_/-]*[a-z0-9]$", var.specs_prefix)) && !strcontains(var.specs_prefix, "//")
    error_message = "specs_prefix must be a folder path without leading or trailing '/', e.g. specs."
  }
}

variable "temp_retention_days" {
  description = "Objects under temp/ in the staging bucket (Dataflow temp and staging files) are deleted this many days after they were written."
  type        = number
  default     = 7

  validation {
    condition     = var.temp_retention_days >= 1 && var.temp_retention_days <= 365 && floor(var.temp_retention_days) == var.temp_retention_days
    error_message = "temp_retention_days must be a whole number of days from 1 to 365."
  }
}

variable "noncurrent_version_retention_days" {
  description = "The job store and the input bucket keep object versions; a replaced or deleted version is kept this many days, then deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1 && floor(var.noncurrent_version_retention_days) == var.noncurrent_version_retention_days
    error_message = "noncurrent_version_retention_days must be a whole number of days, at least 1."
  }
}

variable "max_noncurrent_versions" {
  description = "At most this many old versions of one object are kept (status.json is rewritten at every heartbeat of a running job)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_noncurrent_versions >= 1 && floor(var.max_noncurrent_versions) == var.max_noncurrent_versions
    error_message = "max_noncurrent_versions must be a whole number, at least 1."
  }
}

variable "kms_key_name" {
  description = "Optional CMEK: projects/P/locations/L/keyRings/R/cryptoKeys/K, in the buckets' location. The Cloud Storage service agent is granted encrypter/decrypter on it. Null: Google-managed keys."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", coalesce(var.kms_key_name, "x")))
    error_message = "kms_key_name must look like projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "access_log_bucket" {
  description = "Optional bucket that receives usage logs of the buckets made here. Null: rely on Cloud Audit Logs (enable Data Access logs for storage.googleapis.com to record reads)."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Let terraform destroy delete buckets that still hold objects (job results included). Keep false outside throwaway projects."
  type        = bool
  default     = false
}

variable "labels" {
  description = "Labels added to every bucket."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels: keys start with a lowercase letter; keys and values use lowercase letters, digits, '_' and '-' (at most 63)."
  }
}
