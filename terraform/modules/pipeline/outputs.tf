output "spec_url" {
  description = "gs:// URL of the spec object the pipeline submits."
  value       = "gs://${google_storage_bucket_object.spec.bucket}/${google_storage_bucket_object.spec.name}"
}

output "scheduler_job" {
  description = "The Cloud Scheduler job, projects/P/locations/L/jobs/J, or null in watch mode."
  value       = var.schedule == null ? null : google_cloud_scheduler_job.pipeline[0].id
}

output "request" {
  description = "The message a scheduled run publishes: data (JSON text) and attributes; null in watch mode. Publish it by hand to run the pipeline now."
  value       = var.schedule == null ? null : { data = local.request_body, attributes = local.request_attributes }
}
