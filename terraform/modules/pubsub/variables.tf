variable "project_id" {
  description = "The project that holds the topics and subscriptions."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "name" {
  description = "Prefix of every topic, subscription and schema name: <name>-requests, <name>-events, <name>-dead-letter, ..."
  type        = string
  default     = "hyperbatch"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name))
    error_message = "name must be 2-20 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "request_schema_encoding" {
  description = "Attach a Pub/Sub schema built from schemas/job_request.avsc to the requests topic, with this encoding (JSON or BINARY). Null: no schema, so a plain JSON/YAML job spec may be published as is (gcloud pubsub topics publish --message=\"$(cat job.yaml)\"). With a schema, Cloud Storage notifications get a topic of their own."
  type        = string
  default     = null

  validation {
    condition     = var.request_schema_encoding == null || contains(["JSON", "BINARY"], coalesce(var.request_schema_encoding, "JSON"))
    error_message = "request_schema_encoding must be null, \"JSON\" or \"BINARY\"."
  }
}

variable "job_request_schema_file" {
  description = "Path of the JobRequest Avro schema. Null: schemas/job_request.avsc of this repository (read with file(), never copied)."
  type        = string
  default     = null
}

variable "pull_subscription" {
  description = "Create pull subscriptions for `hyperbatch trigger listen` (HYPERBATCH_SUBSCRIPTION)."
  type        = bool
  default     = true
}

variable "push" {
  description = "Create push subscriptions to the trigger service (the trigger module's push_endpoint, push_service_account and push_audience); the pushes carry an OIDC token of service_account_email for audience. Null: no push subscription."
  type = object({
    endpoint              = string
    service_account_email = string
    audience              = string
  })
  default = null
}

variable "spec_notification" {
  description = "Cloud Storage notification for the drop-a-spec folder: OBJECT_FINALIZE of objects under gs://<bucket>/<prefix> is published (JSON_API_V1 payload) to the requests topic, or to a topic of its own when the requests topic has a schema. Null: none."
  type = object({
    bucket = string
    prefix = string
  })
  default = null

  validation {
    condition     = var.spec_notification == null || can(regex("^[a-z0-9][a-z0-9_/-]*/$", try(var.spec_notification.prefix, "x/")))
    error_message = "spec_notification.prefix must be a folder inside the bucket with a trailing '/', e.g. specs/."
  }
}

variable "ack_deadline_seconds" {
  description = "How long the trigger has to record (and launch) a job before Pub/Sub delivers the message again; for push, the trigger's response deadline."
  type        = number
  default     = 120

  validation {
    condition     = var.ack_deadline_seconds >= 10 && var.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be between 10 and 600."
  }
}

variable "message_retention_duration" {
  description = "How long an unacknowledged message stays in a subscription, as seconds with an 's' suffix."
  type        = string
  default     = "604800s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.message_retention_duration)) && try(tonumber(trimsuffix(var.message_retention_duration, "s")) >= 600 && tonumber(trimsuffix(var.message_retention_duration, "s")) <= 2678400, false)
    error_message = "message_retention_duration must be between \"600s\" (10 minutes) and \"2678400s\" (31 days)."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before Pub/Sub forwards it to the dead-letter topic."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "minimum_backoff" {
  description = "Retry policy: the shortest wait before a nacked message is delivered again."
  type        = string
  default     = "10s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.minimum_backoff)) && try(tonumber(trimsuffix(var.minimum_backoff, "s")) <= 600, false)
    error_message = "minimum_backoff must be seconds with an 's' suffix, at most \"600s\"."
  }
}

variable "maximum_backoff" {
  description = "Retry policy: the longest wait before a nacked message is delivered again."
  type        = string
  default     = "600s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.maximum_backoff)) && try(tonumber(trimsuffix(var.maximum_backoff, "s")) <= 600, false)
    error_message = "maximum_backoff must be seconds with an 's' suffix, at most \"600s\"."
  }
}

variable "dead_letter_retention_duration" {
  description = "The dead-letter topic retains what it receives this long, so a subscription created later can seek back to it (hyperbatch also records each rejection under <root>/_rejected/)."
  type        = string
  default     = "604800s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.dead_letter_retention_duration)) && try(tonumber(trimsuffix(var.dead_letter_retention_duration, "s")) >= 600 && tonumber(trimsuffix(var.dead_letter_retention_duration, "s")) <= 2678400, false)
    error_message = "dead_letter_retention_duration must be between \"600s\" and \"2678400s\" (31 days)."
  }
}

variable "publishers" {
  description = "Principals (user:, group:, serviceAccount:) allowed to publish job requests, keyed by a name you choose (keys must be known at plan time)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for m in values(var.publishers) : can(regex("^(user|group|serviceAccount|principal|principalSet):", m))])
    error_message = "publishers: each value must be a single principal such as user:alice@example.com or serviceAccount:ci@p.iam.gserviceaccount.com; allUsers and allAuthenticatedUsers are refused."
  }
}

variable "subscribers" {
  description = "Principals that run `hyperbatch trigger listen`: granted subscriber (and viewer, to read the dead-letter policy) on the pull subscriptions and publisher on the dead-letter topic, keyed by a name you choose."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for m in values(var.subscribers) : can(regex("^(user|group|serviceAccount|principal|principalSet):", m))])
    error_message = "subscribers: each value must be a single principal such as serviceAccount:listener@p.iam.gserviceaccount.com; allUsers and allAuthenticatedUsers are refused."
  }
}

variable "event_publishers" {
  description = "Principals that record job state changes (whoever runs `hyperbatch submit` or `trigger listen`): granted publisher on the events topic, keyed by a name you choose."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for m in values(var.event_publishers) : can(regex("^(user|group|serviceAccount|principal|principalSet):", m))])
    error_message = "event_publishers: each value must be a single principal; allUsers and allAuthenticatedUsers are refused."
  }
}

variable "kms_key_name" {
  description = "Optional CMEK for every topic: projects/P/locations/L/keyRings/R/cryptoKeys/K. The Pub/Sub service agent is granted encrypter/decrypter on it. Null: Google-managed keys."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", coalesce(var.kms_key_name, "x")))
    error_message = "kms_key_name must look like projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "labels" {
  description = "Labels added to every topic and subscription."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels: keys start with a lowercase letter; keys and values use lowercase letters, digits, '_' and '-' (at most 63)."
  }
}
