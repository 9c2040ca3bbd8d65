variable "project_id" {
  description = "The project of the Cloud Scheduler job and of the requests topic."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "name" {
  description = "Name of the pipeline: the Cloud Scheduler job's name and the spec object's file name (<name>.json)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.name))
    error_message = "name must be 2-63 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "spec" {
  description = "The job spec as YAML or JSON text, e.g. file(\"jobs/summaries.yaml\"). Use gs:// URLs for input, output and model (relative paths would resolve against the spec object's folder)."
  type        = string

  validation {
    condition     = can(keys(yamldecode(var.spec))) && can(yamldecode(var.spec).name)
    error_message = "spec must be a YAML or JSON mapping with at least a name: a hyperbatch job spec."
  }
}

variable "schedule" {
  description = "Cron schedule (unix-cron, 5 fields) of a recurring job: each run publishes one job request. Exactly one of schedule and watch_prefix."
  type        = string
  default     = null

  validation {
    condition     = var.schedule == null || length(split(" ", trimspace(coalesce(var.schedule, "* * * * *")))) == 5
    error_message = "schedule must be a 5-field unix-cron expression such as \"0 2 * * *\"."
  }
}

variable "time_zone" {
  description = "Time zone of the schedule (tz database name)."
  type        = string
  default     = "Etc/UTC"
}

variable "region" {
  description = "Region of the Cloud Scheduler job (needed with schedule)."
  type        = string
  default     = null

  validation {
    condition     = var.region == null || can(regex("^[a-z]+-[a-z]+[0-9]$", coalesce(var.region, "us-central1")))
    error_message = "region must be a Google Cloud region such as us-central1."
  }
}

variable "requests_topic" {
  description = "The requests topic, projects/P/topics/T (the pubsub module's requests_topic)."
  type        = string
  default     = null

  validation {
    condition     = var.requests_topic == null || can(regex("^projects/[^/]+/topics/[^/]+$", coalesce(var.requests_topic, "projects/p/topics/t")))
    error_message = "requests_topic must be projects/P/topics/T."
  }
}

variable "request_encoding" {
  description = "What the requests topic accepts: null for plain JSON (no schema), \"JSON\" for a topic with the JobRequest schema in JSON encoding (the pubsub module's request_schema_encoding)."
  type        = string
  default     = null

  validation {
    condition     = var.request_encoding == null || var.request_encoding == "JSON"
    error_message = "request_encoding must be null or \"JSON\": Cloud Scheduler cannot write Avro binary, so give scheduled pipelines a topic without a schema or with JSON encoding."
  }
}

variable "spec_bucket" {
  description = "Bucket the spec object of a scheduled pipeline is written to (the job-store bucket: the trigger reads it). Unused with watch_prefix."
  type        = string
  default     = null
}

variable "spec_prefix" {
  description = "Folder of scheduled pipelines' spec objects in spec_bucket; it must not be a watched prefix, or each apply would also start a job."
  type        = string
  default     = "pipelines"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_/-]*[a-z0-9]$", var.spec_prefix))
    error_message = "spec_prefix must be a folder path without leading or trailing '/'."
  }
}

variable "watch_prefix" {
  description = "Bucket-triggered instead of scheduled: write the spec under this watched gs:// prefix (the storage module's spec_drop_prefix); each new version of the spec, i.e. each apply that changes it, becomes one job. Exactly one of schedule and watch_prefix."
  type        = string
  default     = null

  validation {
    condition     = var.watch_prefix == null || can(regex("^gs://[a-z0-9][a-z0-9_.-]+[a-z0-9]/(.+/)?$", coalesce(var.watch_prefix, "gs://bucket/")))
    error_message = "watch_prefix must be gs://bucket/folder/ with a trailing '/'."
  }
}

variable "max_cost_usd" {
  description = "Budget cap in US dollars written into the published spec as max_cost_usd. Null: the spec's own (or none)."
  type        = number
  default     = null

  validation {
    condition     = var.max_cost_usd == null || try(var.max_cost_usd > 0, false)
    error_message = "max_cost_usd must be a positive number of dollars."
  }
}

variable "default_max_cost_usd" {
  description = "Budget cap in US dollars for a spec that sets no max_cost_usd of its own (max_cost_usd, if set, wins over both). A job whose low estimate is above its cap is refused; a running job stops taking shards before its projected cost passes it (STOPPED_BUDGET)."
  type        = number
  default     = null

  validation {
    condition     = var.default_max_cost_usd == null || try(var.default_max_cost_usd > 0, false)
    error_message = "default_max_cost_usd must be a positive number of dollars."
  }
}

variable "submitted_by" {
  description = "Who the jobs are recorded as submitted by (the submitted_by attribute). Null: cloud-scheduler/<name> (scheduled) or terraform/<name> (watched)."
  type        = string
  default     = null
}

variable "paused" {
  description = "Create the schedule paused."
  type        = bool
  default     = false
}

variable "retry_count" {
  description = "Cloud Scheduler attempts after a failed publish. A retry is a new message, so one after a publish that did get through (a timeout) would record a second job: keep it low."
  type        = number
  default     = 1

  validation {
    condition     = var.retry_count >= 0 && var.retry_count <= 5 && floor(var.retry_count) == var.retry_count
    error_message = "retry_count must be a whole number from 0 to 5."
  }
}
