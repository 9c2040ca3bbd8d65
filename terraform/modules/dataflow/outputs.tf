output "cli_env" {
  description = "The CLI's Dataflow settings by environment variable (HYPERBATCH_DATAFLOW_*), unset ones left out."
  value       = local.cli_env
}

output "template_path" {
  description = "gs:// path of the Flex Template spec file (HYPERBATCH_DATAFLOW_TEMPLATE)."
  value       = "gs://${google_storage_bucket_object.template.bucket}/${google_storage_bucket_object.template.name}"
}

output "repository_url" {
  description = "Docker repository to push the images to: <region>-docker.pkg.dev/<project>/<repository>."
  value       = local.repository_url
}

output "images" {
  description = "Image references by role (worker, launcher, trigger): what to build and push (docker/README.md)."
  value = {
    worker   = local.worker_image
    launcher = local.launcher_image
    trigger  = local.trigger_image
  }
}

output "worker_service_account" {
  description = "Email of the worker service account (HYPERBATCH_DATAFLOW_SERVICE_ACCOUNT)."
  value       = google_service_account.worker.email
}

output "launcher_service_account" {
  description = "Email of the launcher service account, for automation that submits jobs."
  value       = google_service_account.launcher.email
}

output "worker_shape" {
  description = "The default worker: kind (cpu, tpu, gpu), machine_type, topology (TPU) and worker_accelerator (the dataflow_service_options value)."
  value       = merge(local.worker_shape, { machine_type = local.machine_type })
}
