# TPU v6e (Trillium) workers, 4 chips per worker (a 2x2 slice), and a bucket-triggered pipeline:
# the spec in jobs/ is written under the watched prefix, so each apply that changes it runs it
# once. A pull listener (`hyperbatch trigger listen`, see README) turns the notification into a job.

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
  trigger    = "pull"

  accelerator       = "tpu-v6e"
  accelerator_count = 4
  max_workers       = 2
  model_buckets     = { models = var.models_bucket }
}

module "catalogue_summaries" {
  source = "../../modules/pipeline"

  project_id = var.project_id
  name       = "catalogue-summaries"
  spec = templatefile("${path.module}/jobs/catalogue-summaries.yaml.tftpl", {
    inputs    = module.hyperbatch.buckets.inputs
    jobs_root = module.hyperbatch.jobs_root
    models    = var.models_bucket
  })
  watch_prefix = module.hyperbatch.spec_drop_prefix
  max_cost_usd = 50
}
