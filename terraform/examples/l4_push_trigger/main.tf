# NVIDIA L4 workers running vLLM, and the serverless push trigger: a Cloud Run service (scaled to
# zero) receives every job request and spec notification from Pub/Sub and launches it on Dataflow.

provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}

module "hyperbatch" {
  source = "../.."

  project_id = var.project_id
  region     = var.region
  operators  = var.operators
  trigger    = "push"

  accelerator       = "nvidia-l4"
  accelerator_count = 1
  max_workers       = 4
  # vLLM on CUDA: the worker image built with ACCELERATOR=vllm (docker/README.md).
  worker_image  = "${var.region}-docker.pkg.dev/${var.project_id}/hyperbatch/worker-vllm:0.1.0"
  model_buckets = { models = var.models_bucket }
}
