output "cli_env" {
  description = "eval \"$(terraform output -raw cli_env)\" sets what the CLI needs."
  value       = module.hyperbatch.cli_env
}

output "scheduler_job" {
  description = "The Cloud Scheduler job; `gcloud scheduler jobs run` starts a run now."
  value       = module.nightly_summaries.scheduler_job
}

output "request" {
  description = "The message each run publishes."
  value       = module.nightly_summaries.request
}
