output "cli_env" {
  description = "Shell lines that set what the CLI needs: eval \"$(terraform output -raw cli_env)\", then hyperbatch submit / trigger listen."
  value = join("\n", [
    for k in sort(keys(local.cli_env)) : "export ${k}='${replace(local.cli_env[k], "'", "'\\''")}'"
  ])
}

output "env" {
  description = "The same settings as a map (HYPERBATCH_* and GOOGLE_CLOUD_PROJECT), e.g. for a CI job's environment."
  value       = local.cli_env
}

output "jobs_root" {
  description = "The job store (HYPERBATCH_JOBS_ROOT); set a job spec's output to it."
  value       = module.storage.jobs_root
}

output "buckets" {
  description = "Bucket names by role: jobs, inputs, staging."
  value       = module.storage.bucket_names
}

output "spec_drop_prefix" {
  description = "Copy a spec file under this prefix and it becomes a job (when a trigger runs)."
  value       = module.storage.spec_drop_prefix
}

output "requests_topic" {
  description = "Publish job specs or JobRequests to this topic, projects/P/topics/T."
  value       = module.pubsub.requests_topic
}

output "events_topic" {
  description = "Job state changes are published here, projects/P/topics/T."
  value       = module.pubsub.events_topic
}

output "dead_letter_topic" {
  description = "Messages that can never become a job end here, projects/P/topics/T."
  value       = module.pubsub.dead_letter_topic
}

output "subscriptions" {
  description = "The trigger's subscriptions by key (requests-pull, requests-push, ...)."
  value       = module.pubsub.subscriptions
}

output "template_path" {
  description = "The Flex Template spec file (HYPERBATCH_DATAFLOW_TEMPLATE)."
  value       = module.dataflow.template_path
}

output "repository_url" {
  description = "Push the images here (docker/README.md)."
  value       = module.dataflow.repository_url
}

output "images" {
  description = "Image references to build and push: worker, launcher, trigger."
  value       = merge(module.dataflow.images, var.trigger_image == null ? {} : { trigger = var.trigger_image })
}

output "worker_shape" {
  description = "The default Dataflow worker: kind, machine type, TPU topology, worker_accelerator option."
  value       = module.dataflow.worker_shape
}

output "service_accounts" {
  description = "Service account emails: worker, launcher, and the trigger's own and push accounts when deployed."
  value = merge(
    {
      worker   = module.dataflow.worker_service_account
      launcher = module.dataflow.launcher_service_account
    },
    local.push ? {
      trigger = module.trigger[0].service_account
      push    = module.trigger[0].push_service_account
    } : {},
  )
}

output "trigger_url" {
  description = "URL of the Cloud Run trigger (internal ingress: reachable by Pub/Sub, not from the internet), or null."
  value       = local.push ? module.trigger[0].url : null
}
