variable "project_id" {
  description = "The project to deploy into."
  type        = string
}

variable "region" {
  description = "A region with TPU v6e capacity for Dataflow workers (us-east5, us-east1, us-central1, europe-west4; check your quota)."
  type        = string
  default     = "us-east5"
}

variable "models_bucket" {
  description = "Existing bucket that holds the model weights (gs://<bucket>/Llama-3.1-8B-Instruct in the Hugging Face layout)."
  type        = string
}

variable "operators" {
  description = "Who may submit jobs and run the pull listener, keyed by a name you choose."
  type        = map(string)
  default     = {}
}
