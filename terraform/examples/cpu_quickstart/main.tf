# The smallest deployment: buckets, topics, the Flex Template and CPU workers; jobs are
# submitted with the CLI (`hyperbatch submit --runner dataflow`), a pull listener may run anywhere.
# Nothing here runs while no job does: what it costs idle is the storage it holds.

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

  accelerator = "cpu"
  max_workers = 2

  # A quickstart project is disposable: destroy deletes buckets with their objects.
  force_destroy = true
}
