# A Terraform-provisioned pipeline: every night at 02:00 UTC Cloud Scheduler publishes a job
# request naming jobs/summaries.yaml to the requests topic; the push trigger makes it a job and
# launches it on Dataflow. One scheduled run is one job.

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

  project_id    = var.project_id
  region        = var.region
  operators     = var.operators
  trigger       = "push"
  accelerator   = "nvidia-l4"
  model_buckets = { models = var.models_bucket }
}

module "nightly_summaries" {
  source = "../../modules/pipeline"

  project_id = var.project_id
  name       = "nightly-summaries"
  spec = templatefile("${path.module}/jobs/summaries.yaml", {
    inputs    = module.hyperbatch.buckets.inputs
    jobs_root = module.hyperbatch.jobs_root
    models    = var.models_bucket
  })
  schedule = "0 2 * * *"
  region   = var.region

  requests_topic = module.hyperbatch.requests_topic
  spec_bucket    = module.hyperbatch.buckets.jobs
  max_cost_usd   = 25
}
