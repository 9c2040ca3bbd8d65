# A Terraform-provisioned pipeline: a job spec declared in Terraform that runs on a schedule (a
# Cloud Scheduler job publishes a JobRequest naming the spec object to the requests topic) or
# whenever a new version of it lands in a watched prefix (the spec object is written there and the
# Cloud Storage notification submits it). The trigger turns each into one job.

resource "google_storage_bucket_object" "spec" {
  bucket       = local.spec_object.bucket
  name         = local.spec_object.name
  content_type = "application/json"
  content      = jsonencode(local.spec_document)

  metadata = {
    submitted-by = local.submitted_by
  }

  lifecycle {
    precondition {
      condition     = (var.schedule == null) != (var.watch_prefix == null)
      error_message = "pipeline ${var.name}: set exactly one of schedule (a recurring job) and watch_prefix (a job per version of the spec)."
    }
    precondition {
      condition     = var.schedule == null || (var.spec_bucket != null && var.requests_topic != null && var.region != null)
      error_message = "pipeline ${var.name}: a scheduled pipeline needs spec_bucket, requests_topic and region."
    }
  }
}

resource "google_cloud_scheduler_job" "pipeline" {
  count = var.schedule == null ? 0 : 1

  project     = var.project_id
  region      = var.region
  name        = var.name
  description = "hyperbatch pipeline ${var.name}: publishes ${local.spec_url} to ${coalesce(var.requests_topic, "-")}."
  schedule    = var.schedule
  time_zone   = var.time_zone
  paused      = var.paused

  retry_config {
    retry_count          = var.retry_count
    min_backoff_duration = "30s"
    max_backoff_duration = "600s"
  }

  pubsub_target {
    topic_name = var.requests_topic
    data       = base64encode(local.request_body)
    attributes = local.request_attributes
  }

  # The request names the spec object: write it first.
  depends_on = [google_storage_bucket_object.spec]
}
