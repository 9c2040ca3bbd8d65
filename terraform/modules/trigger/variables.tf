variable "project_id" {
  description = "The project the trigger service runs in."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "name" {
  description = "Name of the Cloud Run service; also the prefix of its service accounts (<name>, <name>-push: at most 25 characters)."
  type        = string
  default     = "hyperbatch-trigger"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,23}[a-z0-9]$", var.name))
    error_message = "name must be 6-25 lowercase letters, digits and hyphens, starting with a letter (it names service accounts too)."
  }
}

variable "region" {
  description = "Cloud Run region."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1."
  }
}

variable "image" {
  description = "The trigger image (docker/trigger), e.g. the dataflow module's images.trigger."
  type        = string

  validation {
    condition     = length(var.image) > 0 && !strcontains(var.image, " ")
    error_message = "image must be an image reference such as us-central1-docker.pkg.dev/p/hyperbatch/trigger:0.1.0."
  }
}

variable "jobs_root" {
  description = "The job store the jobs are recorded in, gs://bucket/prefix (HYPERBATCH_JOBS_ROOT)."
  type        = string

  validation {
    condition     = can(regex("^gs://[a-z0-9][a-z0-9_.-]+[a-z0-9](/.*)?$", var.jobs_root))
    error_message = "jobs_root must be a gs://bucket/prefix path."
  }
}

variable "job_store_bucket" {
  description = "Bucket of jobs_root: the service account gets objectAdmin on it (and on no other bucket)."
  type        = string
}

variable "read_buckets" {
  description = "Buckets the trigger reads, by a key you choose: inputs and models (a spec's inputs and model are checked before a job is recorded). objectViewer on each."
  type        = map(string)
  default     = {}
}

variable "events_topic" {
  description = "Status-events topic, projects/P/topics/T (HYPERBATCH_EVENTS_TOPIC); the service account may publish to it."
  type        = string

  validation {
    condition     = can(regex("^projects/[^/]+/topics/[^/]+$", var.events_topic))
    error_message = "events_topic must be projects/P/topics/T."
  }
}

variable "dead_letter_topic" {
  description = "Dead-letter topic, projects/P/topics/T (HYPERBATCH_DEAD_LETTER_TOPIC): messages that can never be a job go there with the reason."
  type        = string

  validation {
    condition     = can(regex("^projects/[^/]+/topics/[^/]+$", var.dead_letter_topic))
    error_message = "dead_letter_topic must be projects/P/topics/T."
  }
}

variable "watch_prefixes" {
  description = "gs:// prefixes whose spec files become jobs when a Cloud Storage notification announces them (HYPERBATCH_WATCH)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.watch_prefixes : startswith(p, "gs://") && !strcontains(p, " ")])
    error_message = "watch_prefixes must be gs:// prefixes without spaces."
  }
}

variable "allow_prefixes" {
  description = "gs:// prefixes a triggered job may read and write (HYPERBATCH_ALLOW). Empty: the CLI's default, the job store's bucket."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.allow_prefixes : startswith(p, "gs://") && !strcontains(p, " ")])
    error_message = "allow_prefixes must be gs:// prefixes without spaces."
  }
}

variable "dataflow_env" {
  description = "The Dataflow settings (the dataflow module's cli_env: HYPERBATCH_DATAFLOW_* = value) the service launches jobs with."
  type        = map(string)

  validation {
    condition     = alltrue([for k in keys(var.dataflow_env) : startswith(k, "HYPERBATCH_DATAFLOW_")])
    error_message = "dataflow_env keys must be HYPERBATCH_DATAFLOW_* settings."
  }

  validation {
    condition     = alltrue([for k in ["HYPERBATCH_DATAFLOW_PROJECT", "HYPERBATCH_DATAFLOW_REGION", "HYPERBATCH_DATAFLOW_TEMPLATE", "HYPERBATCH_DATAFLOW_IMAGE"] : contains(keys(var.dataflow_env), k)])
    error_message = "dataflow_env must set HYPERBATCH_DATAFLOW_PROJECT, _REGION, _TEMPLATE and _IMAGE: the trigger refuses to launch without them."
  }
}

variable "record_only" {
  description = "Record jobs (QUEUED) and launch nothing (--record-only): a dry run of the trigger."
  type        = bool
  default     = false
}

variable "push_audience" {
  description = "OIDC audience of the push tokens (HYPERBATCH_PUSH_AUDIENCE, and a custom audience of the service). Null: the service's deterministic URL, https://<name>-<project number>.<region>.run.app."
  type        = string
  default     = null
}

variable "min_instances" {
  description = "Instances kept warm. 0: the service costs nothing while no message arrives."
  type        = number
  default     = 0

  validation {
    condition     = var.min_instances >= 0 && floor(var.min_instances) == var.min_instances
    error_message = "min_instances must be a whole number, 0 or more."
  }
}

variable "max_instances" {
  description = "Most instances: bounds how many messages are handled at once (times concurrency)."
  type        = number
  default     = 3

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 100 && floor(var.max_instances) == var.max_instances
    error_message = "max_instances must be a whole number from 1 to 100."
  }
}

variable "concurrency" {
  description = "Pushes one instance handles at once."
  type        = number
  default     = 8

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000 && floor(var.concurrency) == var.concurrency
    error_message = "concurrency must be a whole number from 1 to 1000."
  }
}

variable "cpu" {
  description = "CPU limit of an instance (allocated only while a request is handled)."
  type        = string
  default     = "1"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.cpu)
    error_message = "cpu must be \"1\", \"2\", \"4\", \"6\" or \"8\"."
  }
}

variable "memory" {
  description = "Memory limit of an instance."
  type        = string
  default     = "1Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.memory))
    error_message = "memory must look like 512Mi or 2Gi."
  }
}

variable "request_timeout_seconds" {
  description = "Longest time one push may take (recording and launching a job); keep it at least the subscription's ack deadline."
  type        = number
  default     = 300

  validation {
    condition     = var.request_timeout_seconds >= 10 && var.request_timeout_seconds <= 3600
    error_message = "request_timeout_seconds must be between 10 and 3600."
  }
}

variable "extra_env" {
  description = "More environment variables of the container (e.g. HYPERBATCH_DATAFLOW_API_ENDPOINT). PORT is set by Cloud Run."
  type        = map(string)
  default     = {}

  validation {
    condition     = !contains(keys(var.extra_env), "PORT")
    error_message = "extra_env must not set PORT: Cloud Run sets it."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run service (set false before terraform destroy)."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels of the service."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels: keys start with a lowercase letter; keys and values use lowercase letters, digits, '_' and '-' (at most 63)."
  }
}
