variable "project_id" {
  description = "The project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of everything, the Cloud Scheduler job included."
  type        = string
  default     = "us-central1"
}

variable "models_bucket" {
  description = "Existing bucket that holds the model weights."
  type        = string
}

variable "operators" {
  description = "Who may submit jobs, keyed by a name you choose."
  type        = map(string)
  default     = {}
}
