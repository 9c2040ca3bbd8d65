variable "project_id" {
  description = "The project to deploy into."
  type        = string
}

variable "region" {
  description = "A region with NVIDIA L4 (g2) capacity."
  type        = string
  default     = "us-central1"
}

variable "models_bucket" {
  description = "Existing bucket that holds the model weights (Hugging Face layout)."
  type        = string
}

variable "operators" {
  description = "Who may submit jobs, keyed by a name you choose."
  type        = map(string)
  default     = {}
}
