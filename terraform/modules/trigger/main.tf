# The push trigger: a Cloud Run v2 service running `hyperbatch trigger serve` from the trigger
# image (docker/trigger). It turns each pushed job request or spec-file notification into one
# job, recorded in the job store and launched on Dataflow. Internal ingress (Pub/Sub pushes count
# as internal), no unauthenticated access: run.invoker is granted only to the push service
# account, whose OIDC tokens the service also verifies itself. Scales to zero.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  labels       = merge({ "managed-by" = "terraform" }, var.labels)
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # Known before the service exists, so the service can be told its own audience.
  audience = coalesce(var.push_audience, "https://${var.name}-${data.google_project.this.number}.${var.region}.run.app")

  command = ["hyperbatch"]
  args    = concat(["trigger", "serve", "--host", "0.0.0.0"], var.record_only ? ["--record-only"] : [])

  env = merge(
    var.dataflow_env,
    {
      HYPERBATCH_JOBS_ROOT             = var.jobs_root
      HYPERBATCH_RUNNER                = "dataflow"
      HYPERBATCH_EVENTS_TOPIC          = var.events_topic
      HYPERBATCH_DEAD_LETTER_TOPIC     = var.dead_letter_topic
      HYPERBATCH_PUSH_AUDIENCE         = local.audience
      HYPERBATCH_PUSH_SERVICE_ACCOUNTS = google_service_account.push.email
      GOOGLE_CLOUD_PROJECT             = var.project_id
    },
    length(var.watch_prefixes) == 0 ? {} : { HYPERBATCH_WATCH = join(" ", var.watch_prefixes) },
    length(var.allow_prefixes) == 0 ? {} : { HYPERBATCH_ALLOW = join(" ", var.allow_prefixes) },
    var.extra_env,
  )

  topics = {
    events      = var.events_topic
    dead_letter = var.dead_letter_topic
  }
}

# The identity of the service: records jobs, reads inputs, launches Dataflow jobs (the dataflow
# module's launcher_members grants the launch), announces events, forwards dead letters.
resource "google_service_account" "trigger" {
  project      = var.project_id
  account_id   = var.name
  display_name = "hyperbatch trigger service"
  description  = "Runs `hyperbatch trigger serve` on Cloud Run."
}

# The identity Pub/Sub signs push requests as; the only principal that may invoke the service.
resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.name}-push"
  display_name = "hyperbatch trigger push"
  description  = "Pub/Sub push subscriptions authenticate to the hyperbatch trigger as this account."
}

# Pub/Sub mints the push OIDC tokens of this account.
resource "google_service_account_iam_member" "push_token_creator" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

resource "google_storage_bucket_iam_member" "job_store" {
  bucket = var.job_store_bucket
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.trigger.email}"
}

resource "google_storage_bucket_iam_member" "reads" {
  for_each = var.read_buckets

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.trigger.email}"
}

resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = local.topics

  project = var.project_id
  topic   = each.value
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.trigger.email}"
}

resource "google_cloud_run_v2_service" "trigger" {
  project             = var.project_id
  name                = var.name
  location            = var.region
  description         = "hyperbatch trigger: Pub/Sub pushes of job requests and spec notifications become jobs."
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  custom_audiences    = [local.audience]
  deletion_protection = var.deletion_protection
  labels              = local.labels

  template {
    service_account                  = google_service_account.trigger.email
    timeout                          = "${var.request_timeout_seconds}s"
    max_instance_request_concurrency = var.concurrency

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      image   = var.image
      command = local.command
      args    = local.args

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.env
        content {
          name  = env.key
          value = env.value
        }
      }
    }
  }

  depends_on = [
    google_storage_bucket_iam_member.job_store,
    google_pubsub_topic_iam_member.publisher,
  ]
}

resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.trigger.location
  name     = google_cloud_run_v2_service.trigger.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push.email}"
}
