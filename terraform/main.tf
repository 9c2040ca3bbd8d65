# hyperbatch on Google Cloud: the root composition of the modules. Buckets (storage), topics and
# subscriptions (pubsub), the Flex Template, images and worker identities (dataflow), and the
# push trigger on Cloud Run (trigger, when var.trigger is push or both). Its cli_env output is
# what the CLI needs: eval "$(terraform output -raw cli_env)".

locals {
  pull = contains(["pull", "both"], var.trigger)
  push = contains(["push", "both"], var.trigger)

  apis = toset([
    "artifactregistry.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "dataflow.googleapis.com",
    "iam.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ])

  read_buckets = merge({ inputs = module.storage.input_bucket }, var.model_buckets)

  # Keys of IAM member maps: prefixed, so an operator's name never collides with a service's.
  operators = { for k, v in var.operators : "operator-${k}" => v }
  allow_prefixes = concat(
    module.storage.allow_prefixes,
    [for b in values(var.model_buckets) : "gs://${b}/"],
  )

  # What the CLI reads (hyperbatch submit / trigger listen): HYPERBATCH_* and the project.
  cli_env = merge(
    module.dataflow.cli_env,
    {
      HYPERBATCH_JOBS_ROOT         = module.storage.jobs_root
      HYPERBATCH_RUNNER            = "dataflow"
      HYPERBATCH_EVENTS_TOPIC      = module.pubsub.events_topic
      HYPERBATCH_DEAD_LETTER_TOPIC = module.pubsub.dead_letter_topic
      HYPERBATCH_WATCH             = module.storage.spec_drop_prefix
      HYPERBATCH_ALLOW             = join(" ", local.allow_prefixes)
      GOOGLE_CLOUD_PROJECT         = var.project_id
    },
    local.pull ? { HYPERBATCH_SUBSCRIPTION = module.pubsub.pull_subscription } : {},
  )
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? local.apis : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

module "storage" {
  source = "./modules/storage"

  project_id    = var.project_id
  name          = var.name
  location      = var.region
  input_bucket  = { create = var.existing_input_bucket == null, name = var.existing_input_bucket }
  kms_key_name  = var.kms_key_name
  force_destroy = var.force_destroy
  labels        = var.labels

  depends_on = [google_project_service.apis]
}

module "pubsub" {
  source = "./modules/pubsub"

  project_id              = var.project_id
  name                    = var.name
  request_schema_encoding = var.request_schema_encoding
  pull_subscription       = local.pull
  push = local.push ? {
    endpoint              = module.trigger[0].push_endpoint
    service_account_email = module.trigger[0].push_service_account
    audience              = module.trigger[0].push_audience
  } : null
  spec_notification = var.trigger == "none" ? null : {
    bucket = module.storage.job_store_bucket
    prefix = module.storage.specs_prefix
  }
  publishers = local.operators
  subscribers = merge(
    local.operators,
    { launcher = "serviceAccount:${module.dataflow.launcher_service_account}" },
  )
  event_publishers = local.operators
  kms_key_name     = var.kms_key_name
  labels           = var.labels

  depends_on = [google_project_service.apis]
}

module "dataflow" {
  source = "./modules/dataflow"

  project_id           = var.project_id
  name                 = var.name
  region               = var.region
  accelerator          = var.accelerator
  accelerator_count    = var.accelerator_count
  accelerator_topology = var.accelerator_topology
  machine_type         = var.machine_type
  max_workers          = var.max_workers
  disk_size_gb         = var.disk_size_gb
  network              = var.network
  subnetwork           = var.subnetwork
  public_ips           = var.public_ips
  image_tag            = var.image_tag
  worker_image         = var.worker_image
  staging_bucket       = module.storage.staging_bucket
  temp_location        = module.storage.temp_location
  job_store_bucket     = module.storage.job_store_bucket
  read_buckets         = local.read_buckets
  events_topic         = module.pubsub.events_topic
  launcher_members = merge(
    local.operators,
    local.push ? { trigger = module.trigger[0].service_account_member } : {},
  )
  labels = var.labels

  depends_on = [google_project_service.apis]
}

module "trigger" {
  source = "./modules/trigger"
  count  = local.push ? 1 : 0

  project_id          = var.project_id
  name                = "${var.name}-trigger"
  region              = var.region
  image               = coalesce(var.trigger_image, module.dataflow.images.trigger)
  jobs_root           = module.storage.jobs_root
  job_store_bucket    = module.storage.job_store_bucket
  read_buckets        = local.read_buckets
  events_topic        = module.pubsub.events_topic
  dead_letter_topic   = module.pubsub.dead_letter_topic
  watch_prefixes      = [module.storage.spec_drop_prefix]
  allow_prefixes      = local.allow_prefixes
  dataflow_env        = module.dataflow.cli_env
  deletion_protection = !var.force_destroy
  labels              = var.labels

  depends_on = [google_project_service.apis]
}

# Operators record jobs in the job store, upload inputs and read models.
resource "google_storage_bucket_iam_member" "operators_job_store" {
  for_each = var.operators

  bucket = module.storage.job_store_bucket
  role   = "roles/storage.objectAdmin"
  member = each.value
}

resource "google_storage_bucket_iam_member" "operators_inputs" {
  for_each = var.operators

  bucket = module.storage.input_bucket
  role   = "roles/storage.objectAdmin"
  member = each.value
}

resource "google_storage_bucket_iam_member" "operators_models" {
  for_each = { for pair in setproduct(keys(var.operators), keys(var.model_buckets)) : "${pair[0]}/${pair[1]}" => { member = var.operators[pair[0]], bucket = var.model_buckets[pair[1]] } }

  bucket = each.value.bucket
  role   = "roles/storage.objectViewer"
  member = each.value.member
}
