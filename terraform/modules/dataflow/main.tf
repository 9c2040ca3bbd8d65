# Running jobs on Dataflow: the Artifact Registry repository of the images (with a cleanup
# policy), the Flex Template spec file (docker/flex-template/metadata.json + the launcher image +
# default worker settings), the worker service account (which also runs the Flex launcher VM)
# and the launcher service account, each with least privilege: object roles on named buckets
# only, dataflow.worker / dataflow.developer, artifactregistry.reader on the repository.

locals {
  labels        = merge({ "managed-by" = "terraform", "hyperbatch" = var.name }, var.labels)
  job_labels    = merge({ "hyperbatch-deployment" = var.name }, var.labels)
  repository_id = coalesce(var.repository_id, var.name)

  repository_url = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
  worker_image   = coalesce(var.worker_image, "${local.repository_url}/worker-${local.accelerator_kind}:${var.image_tag}")
  launcher_image = coalesce(var.launcher_image, "${local.repository_url}/flex-launcher:${var.image_tag}")
  trigger_image  = "${local.repository_url}/trigger:${var.image_tag}"

  template_metadata_file = coalesce(var.template_metadata_file, "${path.module}/../../../docker/flex-template/metadata.json")
  template_path          = "gs://${var.staging_bucket}/${var.template_object}"
  machine_type           = coalesce(var.machine_type, local.worker_shape.machine_type, local.cpu_machine_type)

  # What `gcloud dataflow flex-template build` writes, plus the defaults a launch may override.
  default_environment = {
    for k, v in {
      maxWorkers            = var.max_workers
      machineType           = local.machine_type
      serviceAccountEmail   = google_service_account.worker.email
      tempLocation          = var.temp_location
      stagingLocation       = "${var.temp_location}/staging"
      sdkContainerImage     = local.worker_image
      network               = var.network
      subnetwork            = var.subnetwork
      ipConfiguration       = var.public_ips ? "WORKER_IP_PUBLIC" : "WORKER_IP_PRIVATE"
      diskSizeGb            = var.disk_size_gb
      additionalExperiments = ["use_runner_v2"]
      additionalUserLabels  = local.job_labels
    } : k => v if v != null
  }

  worker_member = "serviceAccount:${google_service_account.worker.email}"
  launchers     = merge(var.launcher_members, { hyperbatch-launcher = "serviceAccount:${google_service_account.launcher.email}" })
  events_topics = var.events_topic == null ? {} : { events = var.events_topic }

  # Every setting of the CLI's Dataflow options (HYPERBATCH_DATAFLOW_<NAME>).
  cli_env = {
    for k, v in {
      HYPERBATCH_DATAFLOW_PROJECT         = var.project_id
      HYPERBATCH_DATAFLOW_REGION          = var.region
      HYPERBATCH_DATAFLOW_TEMPLATE        = local.template_path
      HYPERBATCH_DATAFLOW_IMAGE           = local.worker_image
      HYPERBATCH_DATAFLOW_SERVICE_ACCOUNT = google_service_account.worker.email
      HYPERBATCH_DATAFLOW_NETWORK         = var.network
      HYPERBATCH_DATAFLOW_SUBNETWORK      = var.subnetwork
      HYPERBATCH_DATAFLOW_MAX_WORKERS     = tostring(var.max_workers)
      HYPERBATCH_DATAFLOW_DISK_SIZE_GB    = var.disk_size_gb == null ? null : tostring(var.disk_size_gb)
      HYPERBATCH_DATAFLOW_TEMP_LOCATION   = var.temp_location
      HYPERBATCH_DATAFLOW_PUBLIC_IPS      = var.public_ips ? "true" : "false"
      HYPERBATCH_DATAFLOW_LABEL           = join(" ", [for k, v in local.job_labels : "${k}=${v}"])
    } : k => v if v != null
  }
}

resource "google_artifact_registry_repository" "images" {
  project                = var.project_id
  location               = var.region
  repository_id          = local.repository_id
  format                 = "DOCKER"
  description            = "hyperbatch images: worker, flex-launcher, trigger (docker/README.md)"
  labels                 = local.labels
  kms_key_name           = var.kms_key_name
  cleanup_policy_dry_run = false

  # KEEP wins over DELETE: the newest versions stay however old they are.
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.keep_image_versions
    }
  }

  cleanup_policies {
    id     = "delete-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "${max(1, floor(var.image_retention_days / 7)) * 86400}s"
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "${var.image_retention_days * 86400}s"
    }
  }
}

# ------------------------------------------------------------------------- the worker

resource "google_service_account" "worker" {
  project      = var.project_id
  account_id   = "${var.name}-worker"
  display_name = "hyperbatch Dataflow worker"
  description  = "Runs hyperbatch's Dataflow workers and Flex Template launcher VM: reads inputs, writes job folders."
}

resource "google_project_iam_member" "worker_dataflow" {
  project = var.project_id
  role    = "roles/dataflow.worker"
  member  = local.worker_member
}

resource "google_artifact_registry_repository_iam_member" "worker_reader" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = local.worker_member
}

resource "google_storage_bucket_iam_member" "worker_job_store" {
  bucket = var.job_store_bucket
  role   = "roles/storage.objectAdmin"
  member = local.worker_member
}

resource "google_storage_bucket_iam_member" "worker_staging" {
  bucket = var.staging_bucket
  role   = "roles/storage.objectAdmin"
  member = local.worker_member
}

resource "google_storage_bucket_iam_member" "worker_reads" {
  for_each = var.read_buckets

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = local.worker_member
}

# The last step of a job, on a worker, announces its final state.
resource "google_pubsub_topic_iam_member" "worker_events" {
  for_each = local.events_topics

  project = var.project_id
  topic   = each.value
  role    = "roles/pubsub.publisher"
  member  = local.worker_member
}

# ------------------------------------------------------------------------- launching

# For automation (CI, a scheduler host) that runs `hyperbatch submit --runner dataflow`.
resource "google_service_account" "launcher" {
  project      = var.project_id
  account_id   = "${var.name}-launcher"
  display_name = "hyperbatch job launcher"
  description  = "Records hyperbatch jobs in the job store and launches them from the Flex Template."
}

resource "google_project_iam_member" "launch" {
  #checkov:skip=CKV_GCP_49: Dataflow jobs have no resource-level IAM, so launching needs a project-level role and dataflow.developer is the narrowest predefined one; which identity a job runs as stays confined by serviceAccountUser granted on the worker service account alone (launch_as_worker), never on the project
  for_each = local.launchers

  project = var.project_id
  role    = "roles/dataflow.developer"
  member  = each.value
}

resource "google_service_account_iam_member" "launch_as_worker" {
  for_each = local.launchers

  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

resource "google_storage_bucket_iam_member" "launch_template_reader" {
  for_each = local.launchers

  bucket = var.staging_bucket
  role   = "roles/storage.objectViewer"
  member = each.value
}

resource "google_storage_bucket_iam_member" "launcher_job_store" {
  bucket = var.job_store_bucket
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.launcher.email}"
}

# Submitting validates the spec, which checks that its inputs and model exist.
resource "google_storage_bucket_iam_member" "launcher_reads" {
  for_each = var.read_buckets

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.launcher.email}"
}

resource "google_pubsub_topic_iam_member" "launcher_events" {
  for_each = local.events_topics

  project = var.project_id
  topic   = each.value
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.launcher.email}"
}

# ------------------------------------------------------------------------- the template

resource "google_storage_bucket_object" "template" {
  bucket       = var.staging_bucket
  name         = var.template_object
  content_type = "application/json"
  content = jsonencode({
    image              = local.launcher_image
    sdkInfo            = { language = "PYTHON" }
    metadata           = jsondecode(file(local.template_metadata_file))
    defaultEnvironment = local.default_environment
  })

  lifecycle {
    precondition {
      condition     = local.worker_shape_exists
      error_message = "Dataflow has no ${var.accelerator} worker with ${var.accelerator_count} accelerator(s): TPU v5e/v6e slices have 1, 4 or 8 chips, v5p 4; GPUs come 1, 2, 4 or 8 per machine (H200: 8, A100 40GB also 16); cpu takes 1."
    }
    precondition {
      condition     = var.accelerator_topology == null || var.accelerator_topology == local.worker_shape.topology
      error_message = "accelerator_topology ${coalesce(var.accelerator_topology, "-")} does not match ${var.accelerator} x${var.accelerator_count}, whose Dataflow slice is ${coalesce(local.worker_shape.topology, "not a TPU slice")}; leave it null."
    }
  }
}
