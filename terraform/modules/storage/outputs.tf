output "job_store_bucket" {
  description = "Name of the job-store bucket."
  value       = google_storage_bucket.job_store.name
}

output "input_bucket" {
  description = "Name of the input bucket (created here or the existing one)."
  value       = var.input_bucket.create ? google_storage_bucket.inputs[0].name : local.input_bucket
}

output "staging_bucket" {
  description = "Name of the staging bucket (Dataflow temp files, Flex Template spec)."
  value       = google_storage_bucket.staging.name
}

output "jobs_root" {
  description = "The job store, gs://<job-store bucket>/<jobs_prefix>: HYPERBATCH_JOBS_ROOT, and the output of job specs."
  value       = "gs://${google_storage_bucket.job_store.name}/${var.jobs_prefix}"
}

output "spec_drop_prefix" {
  description = "gs:// prefix whose spec files become jobs (HYPERBATCH_WATCH), with a trailing '/'."
  value       = "gs://${google_storage_bucket.job_store.name}/${var.specs_prefix}/"
}

output "specs_prefix" {
  description = "The drop-a-spec folder inside the job-store bucket (the object prefix of the Cloud Storage notification)."
  value       = "${var.specs_prefix}/"
}

output "temp_location" {
  description = "Dataflow temp location (HYPERBATCH_DATAFLOW_TEMP_LOCATION); the lifecycle rule empties it."
  value       = "gs://${google_storage_bucket.staging.name}/temp"
}

output "allow_prefixes" {
  description = "gs:// prefixes jobs recorded by a trigger may read and write (HYPERBATCH_ALLOW): the job-store and input buckets."
  value = [
    "gs://${google_storage_bucket.job_store.name}/",
    "gs://${var.input_bucket.create ? google_storage_bucket.inputs[0].name : local.input_bucket}/",
  ]
}

output "bucket_names" {
  description = "Every bucket by role: jobs, inputs, staging."
  value = {
    jobs    = google_storage_bucket.job_store.name
    inputs  = var.input_bucket.create ? google_storage_bucket.inputs[0].name : local.input_bucket
    staging = google_storage_bucket.staging.name
  }
}
