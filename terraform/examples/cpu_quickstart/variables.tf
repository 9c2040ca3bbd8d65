variable "project_id" {
  description = "The project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the buckets, Dataflow jobs and images."
  type        = string
  default     = "us-central1"
}

variable "operators" {
  description = "Who may submit jobs, keyed by a name you choose, e.g. { me = \"user:alice@example.com\" }."
  type        = map(string)
  default     = {}
}
